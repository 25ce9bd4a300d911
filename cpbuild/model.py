"""The collected graph's nodes: plain data about a task, apart from the live callable.

A ``Task`` carries everything the scheduler and the rebuilder need (ids, paths, arguments,
options) plus the function, which only the executor needs. Keeping the two apart is what will
let a later version cache the graph and skip importing task modules on a no-op.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cpbuild.api import TaskOptions


class ParamKind(enum.Enum):
    INPUT = "input"  # files the task reads
    PRODUCT = "product"  # files the task writes
    VALUE = "value"  # another task's return value
    ARG = "arg"  # a plain argument, part of the key
    NAME = "name"  # named like a task, or a plain argument with a default: resolved by the graph


@dataclass(frozen=True)
class Param:
    """One parameter of a task function and what it is bound to."""

    name: str
    kind: ParamKind
    value: Any = None  # paths (structure as given, absolute) | plain value | target text
    has_default: bool = False


@dataclass(frozen=True, eq=False)
class Task:
    """One node of the graph: a function plus its arguments."""

    id: str  # "path/relative/task_x.py::name[param]"
    name: str  # "name[param]"
    base_name: str  # "name"
    path: Path  # the task module, absolute
    function: Callable[..., Any] = field(repr=False)
    params: tuple[Param, ...]
    options: TaskOptions
    markers: frozenset[str] = frozenset()
    skip_reason: str | None = None  # from @mark.skip / @mark.skipif

    @cached_property
    def inputs(self) -> tuple[Path, ...]:
        return tuple(p for param in self.params if param.kind is ParamKind.INPUT for p in iter_paths(param.value))

    @cached_property
    def products(self) -> tuple[Path, ...]:
        return tuple(
            p for param in self.params if param.kind is ParamKind.PRODUCT for p in iter_paths(param.value)
        )

    def __hash__(self) -> int:
        return hash(self.id)


def is_path_structure(value: Any) -> bool:
    """A Path, or a non-empty list/tuple/dict whose leaves are all Paths (DESIGN §3 rule 2)."""
    if isinstance(value, Path):
        return True
    if isinstance(value, list | tuple):
        return bool(value) and all(is_path_structure(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(is_path_structure(v) for v in value.values())
    return False


def map_paths(value: Any, function: Callable[[Path], Path]) -> Any:
    """Apply ``function`` to every Path in a path structure, keeping its shape."""
    if isinstance(value, Path):
        return function(value)
    if isinstance(value, list | tuple):
        return type(value)(map_paths(v, function) for v in value)
    if isinstance(value, dict):
        return {k: map_paths(v, function) for k, v in value.items()}
    return value


def iter_paths(value: Any) -> Iterator[Path]:
    if isinstance(value, Path):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from iter_paths(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_paths(v)



