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

from cpbuild import project


def project_modules(root: Path) -> list[Any]:
    """The project's module objects (see ``cpbuild.project``)."""
    return [sys.modules[name] for name in project.project_modules(str(root)) if name in sys.modules]


def dumps_job(job: Any, root: Path) -> bytes:
    """The whole job (function included) as bytes, project modules by value."""
    import cloudpickle

    for module in project_modules(root):
        cloudpickle.register_pickle_by_value(module)  # idempotent: a set of module names
    return cloudpickle.dumps(job, protocol=5)


class JobPacker:
    """Pickles jobs for one executor, the task function apart from the rest of the job.

    A loop that declares a thousand tasks makes a thousand function objects with the same code,
    globals and defaults; they pickle to the same bytes. Those bytes are made once, named by
    their digest, and a worker unpickles each digest once (``cpbuild.worker``), so a job costs
    little more than its arguments. Project modules are registered for pickling by value once,
    when the first job is packed: collection has imported them all by then.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._registered = False
        self._functions: dict[Any, tuple[Any, str, bytes]] = {}

    def function(self, function: Any) -> tuple[str, bytes]:
        """(digest, pickled bytes) of a task function."""
        import hashlib

        import cloudpickle

        if not self._registered:
            for module in project_modules(self.root):
                cloudpickle.register_pickle_by_value(module)
            self._registered = True
        code = getattr(function, "__code__", None)
        key = (code, id(getattr(function, "__globals__", None))) if code is not None else id(function)
        cached = self._functions.get(key)
        if cached is not None and _same_state(function, cached[0]):
            return cached[1], cached[2]
        data = cloudpickle.dumps(function, protocol=5)
        digest = hashlib.sha256(data).hexdigest()
        self._functions[key] = (function, digest, data)
        return digest, data

    def rest(self, job: Any) -> bytes:
        """The job without its function (``function`` is None in the result)."""
        import dataclasses

        import cloudpickle

        return cloudpickle.dumps(dataclasses.replace(job, function=None), protocol=5)


def _same_state(a: Any, b: Any) -> bool:
    """Whether two functions with the same code and globals pickle alike: same defaults,
    closure contents and attributes (compared by identity, then by plain equality)."""
    if a is b:
        return True
    try:
        if a.__closure__ or b.__closure__:
            cells_a = [c.cell_contents for c in a.__closure__ or ()]
            cells_b = [c.cell_contents for c in b.__closure__ or ()]
            if len(cells_a) != len(cells_b) or any(x is not y for x, y in zip(cells_a, cells_b, strict=True)):
                return False
        for attribute in ("__defaults__", "__kwdefaults__", "__dict__", "__name__", "__qualname__"):
            x, y = getattr(a, attribute), getattr(b, attribute)
            if x is not y and (x == y) is not True:
                return False
    except Exception:  # e.g. an array default whose == is not a bool
        return False
    return True


def worker_init() -> dict[str, Any]:
    """What a worker needs before its first job: the import path and working directory."""
    return {"sys_path": list(sys.path), "cwd": os.getcwd()}


def prepare(job: Any) -> Any:
    """Resolve upstream values in the main process when workers cannot reach the storage."""
    if job.storage is not None and not getattr(job.storage, "shareable", False):
        job.resolve_values()
    return job
