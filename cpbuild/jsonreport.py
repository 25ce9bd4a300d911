"""``--json-report PATH``: a built-in reporter plugin writing the build as JSON, for CI systems
and scripts (as pytest's junitxml is a plugin of pytest)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cpbuild.hookspecs import hookimpl


@hookimpl
def cpbuild_build_finish(session: Any, summary: Any) -> None:
    target = getattr(session.options, "json_report", None)
    if not target or session.mode not in ("build", "dry-run"):
        return
    import json  # only when a report is asked for
    data = {
        "created": time.time(),
        "duration": summary.duration,
        "exit_code": int(summary.exit_code),
        "tasks": [
            {
                "id": r.task.id,
                "name": r.task.name,
                "outcome": r.outcome,
                "reasons": r.reasons,
                "duration": r.duration,
                "executor": r.executor,
                "worker": r.worker,
                "attempts": r.attempts,
                "error": r.error,
            }
            for r in summary.reports
        ],
    }
    path = Path(session.cwd, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
