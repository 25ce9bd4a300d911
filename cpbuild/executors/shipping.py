"""Shipping jobs to other processes: cloudpickle, with the project's modules by value.

Task modules have synthetic names and project helpers are importable only with the project's
``sys.path``; pickling their functions by value lets a worker run a task without importing
the project (a cluster node may not even have the same working directory). Libraries are
pickled by reference and must be installed where the job runs.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path, PosixPath, PurePosixPath
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
    """Pickles jobs for one executor in three parts that workers keep apart.

    * The task function. A loop that declares a thousand tasks makes a thousand function
      objects with the same code, globals and defaults; they pickle to the same bytes. Those
      bytes are made once, named by their digest, and a worker unpickles each digest once.
    * The context: the serializer, hasher and storage, the same for every job of a build;
      pickled once, unpickled once per worker.
    * The fields: task id, arguments, upstream digests and small values, options. Plain data (numbers, strings,
      paths and containers of them, the usual case) goes through the C pickler; anything else
      through cloudpickle, which pickles project classes and lambdas by value but costs ten
      times as much per job.

    Project modules are registered for pickling by value once, when the first job is packed:
    collection has imported them all by then.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._registered = False
        self._functions: dict[Any, tuple[Any, str, bytes]] = {}
        self._contexts: dict[tuple[int, int, int], tuple[tuple[Any, Any, Any], str, bytes]] = {}

    @staticmethod
    def cloudpickle_module() -> Any:
        import cloudpickle

        return cloudpickle

    def _cloudpickle(self) -> Any:
        cloudpickle = self.cloudpickle_module()

        if not self._registered:
            for module in project_modules(self.root):
                cloudpickle.register_pickle_by_value(module)
            self._registered = True
        return cloudpickle

    def function(self, function: Any) -> tuple[str, bytes]:
        """(digest, pickled bytes) of a task function."""
        code = getattr(function, "__code__", None)
        key = (code, id(getattr(function, "__globals__", None))) if code is not None else id(function)
        cached = self._functions.get(key)
        if cached is not None and _same_state(function, cached[0]):
            return cached[1], cached[2]
        data = self._cloudpickle().dumps(function, protocol=5)
        digest = _digest(data)
        self._functions[key] = (function, digest, data)
        return digest, data

    def context(self, job: Any) -> tuple[str, bytes]:
        """(digest, pickled bytes) of the job's serializer, hasher and storage."""
        objects = (job.serializer, job.hasher, job.storage)
        key = (id(objects[0]), id(objects[1]), id(objects[2]))
        cached = self._contexts.get(key)
        if cached is None:
            data = self._cloudpickle().dumps(objects, protocol=5)
            cached = self._contexts[key] = (objects, _digest(data), data)  # keeps the ids alive
        return cached[1], cached[2]

    def fields(self, job: Any) -> bytes:
        """The rest of the job: see ``unpack_job``."""
        fields = (job.task_id, job.kwargs, job.values, job.capture, job.timeout, job.options, job.inline,
                  job.products, job.paths)
        if _is_plain(job.kwargs, [10_000]):  # the options are the scheduler's own plain data
            return pickle.dumps(fields, protocol=5)
        return self._cloudpickle().dumps(fields, protocol=5)


def unpack_job(function: Any, context: tuple[Any, Any, Any], fields: bytes) -> Any:
    """The job a worker runs, from the parts ``JobPacker`` made."""
    from cpbuild.runner import Job

    task_id, kwargs, values, capture, timeout, options, inline, products, paths = pickle.loads(fields)
    return Job(task_id, function, kwargs, values, *context, capture=capture, timeout=timeout,
               options=options, inline=inline, products=products, paths=paths)


_PLAIN_LEAVES = frozenset({type(None), bool, int, float, complex, str, bytes, PosixPath, PurePosixPath})
_PLAIN_CONTAINERS = frozenset({list, tuple, dict, set, frozenset})


def _is_plain(value: Any, budget: list[int]) -> bool:
    """Whether ``value`` is built-in data that the standard pickler handles alike everywhere."""
    budget[0] -= 1
    kind = type(value)
    if kind in _PLAIN_LEAVES:
        return True
    if kind not in _PLAIN_CONTAINERS or budget[0] < 0:
        return False
    if kind is dict:
        return all(_is_plain(k, budget) and _is_plain(v, budget) for k, v in value.items())
    return all(_is_plain(v, budget) for v in value)


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


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
        return (
            _alike(a.__defaults__, b.__defaults__)
            and _alike(a.__kwdefaults__, b.__kwdefaults__)
            and _alike(a.__dict__, b.__dict__)
            and a.__name__ == b.__name__
            and a.__qualname__ == b.__qualname__
        )
    except Exception:  # e.g. an array default whose == is not a bool
        return False


def _alike(x: Any, y: Any) -> bool:
    return x is y or (x == y) is True


def worker_init(environment: bool = False) -> dict[str, Any]:
    """What a worker needs before its first job: the import path and working directory, and
    with ``environment`` (a worker on this machine) the environment variables and umask."""
    init: dict[str, Any] = {"sys_path": list(sys.path), "cwd": os.getcwd()}
    if environment:
        umask = os.umask(0o022)
        os.umask(umask)
        init.update(environ=dict(os.environ), umask=umask)
    return init


def prepare(job: Any) -> Any:
    """Resolve upstream values in the main process when workers cannot reach the storage."""
    if job.storage is not None and not getattr(job.storage, "shareable", False):
        job.resolve_values()
    return job
