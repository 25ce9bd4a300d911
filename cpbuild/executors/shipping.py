"""Shipping jobs to other processes: cloudpickle, with the project's modules by value.

Task modules have synthetic names and project helpers are importable only with the project's
``sys.path``; pickling their functions by value lets a worker run a task without importing
the project (a cluster node may not even have the same working directory). Libraries are
pickled by reference and must be installed where the job runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

_SITE_DIRS = ("site-packages", "dist-packages")


def project_modules(root: Path) -> list[Any]:
    """Modules whose file lies in the project (not in a virtual environment)."""
    root_text = str(root) + os.sep
    modules = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or name.startswith("cpbuild.") or name == "cpbuild":
            continue
        if file.startswith(root_text) and not any(s in file for s in _SITE_DIRS):
            modules.append(module)
    return modules


def dumps_job(job: Any, root: Path) -> bytes:
    import cloudpickle

    for module in project_modules(root):
        cloudpickle.register_pickle_by_value(module)  # idempotent: a set of module names
    return cloudpickle.dumps(job, protocol=5)


def worker_init() -> dict[str, Any]:
    """What a worker needs before its first job: the import path and working directory."""
    return {"sys_path": list(sys.path), "cwd": os.getcwd()}


def prepare(job: Any) -> Any:
    """Resolve upstream values in the main process when workers cannot reach the storage."""
    if job.storage is not None and not getattr(job.storage, "shareable", False):
        job.resolve_values()
    return job
