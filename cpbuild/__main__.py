"""``python -m cpbuild``."""

from cpbuild.cli import run

run()
