"""``python -m cpbuild``."""

from cpbuild.cli import main

raise SystemExit(main())
