"""The collected graph's nodes: plain data about a task, apart from the live callable.

A ``Task`` carries everything the scheduler and the rebuilder need (ids, paths, arguments,
options) plus the function, which only the executor needs. Keeping the two apart is what will
let a later version cache the graph and skip importing task modules on a no-op.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cpbuild.api import TaskOptions


class ParamKind(enum.Enum):
    INPUT = "input"  # files the task reads
    PRODUCT = "product"  # files the task writes
    VALUE = "value"  # another task's return value
    ARG = "arg"  # a plain argument, part of the key
    NAME = "name"  # named like a task, or a plain argument with a default: resolved by the graph


class Param(NamedTuple):
    """One parameter of a task function and what it is bound to (a tuple: thousands are made
    per collection, and a frozen dataclass costs three times as much to build)."""

    name: str
    kind: ParamKind
    value: Any = None  # paths (structure as given, absolute) | plain value | target text
    has_default: bool = False


@dataclass(eq=False, slots=True)
class Task:
    """One node of the graph: a function plus its arguments. Treat it as immutable.

    Not a frozen dataclass only because a frozen one costs five times as much to build, and
    collection builds one per task on every run. File paths are kept as absolute, normalized
    strings (``input_files``, ``product_files`` and the path structures in ``params``):
    building ``Path`` objects for thousands of tasks would cost more than the rest of deciding
    that they are up to date; the executor turns them into ``Path`` objects for the task.
    """

    id: str  # "path/relative/task_x.py::name[param]"
    name: str  # "name[param]"
    base_name: str  # "name"
    path: Path  # the task module, absolute
    function: Callable[..., Any] = field(repr=False)
    params: tuple[Param, ...]
    options: TaskOptions
    markers: frozenset[str] = frozenset()
    skip_reason: str | None = None  # from @mark.skip / @mark.skipif
    input_files: tuple[str, ...] = ()
    product_files: tuple[str, ...] = ()
    code: Any = None  # (code items, digest) of a task from the graph cache (function is None)

    def __hash__(self) -> int:
        return hash(self.id)


class CachedArgument(tuple):
    """A plain argument of a cached task: its canonical text and how to show it. The value
    itself is not needed to decide that a task is up to date."""

    __slots__ = ()

    def __new__(cls, text: str, shown: str) -> CachedArgument:
        return super().__new__(cls, (text, shown))


class Record(NamedTuple):
    """A successful build of one key (a tuple: thousands are loaded per build)."""

    key: str
    task: str
    value: str | None  # digest of the serialized return value
    products: dict[str, str]  # project-relative path -> content digest
    duration: float


#: (dev, ino, size, mtime_ns, digest)
StatEntry = tuple[int, int, int, int, str]


def is_path_structure(value: Any) -> bool:
    """A Path, or a non-empty list/tuple/dict whose leaves are all Paths (DESIGN §3 rule 2)."""
    if isinstance(value, Path):
        return True
    if isinstance(value, list | tuple):
        return bool(value) and all(is_path_structure(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(is_path_structure(v) for v in value.values())
    return False


def map_paths(value: Any, function: Callable[[Any], Any]) -> Any:
    """Apply ``function`` to every leaf of a path structure, keeping its shape."""
    if isinstance(value, list | tuple):
        return type(value)(map_paths(v, function) for v in value)
    if isinstance(value, dict):
        return {k: map_paths(v, function) for k, v in value.items()}
    return function(value)


def leaves(value: Any) -> Iterator[Any]:
    """The leaves (paths) of a path structure."""
    if isinstance(value, list | tuple):
        for v in value:
            yield from leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    else:
        yield value


def is_cpbuild_object(obj: Any) -> bool:
    """Declarations and engine objects of cpbuild itself: never part of a key."""
    module = getattr(type(obj), "__module__", "") or ""
    return module == "cpbuild" or module.startswith("cpbuild.")
