"""What task files import: ``task``, ``Product``, ``Needs`` and ``mark``.

These only attach declarations to functions; nothing here imports the engine, so importing
``cpbuild`` in a task module stays cheap. Declarations are kept in the task module's own
namespace (``__cpbuild_tasks__``) rather than in a process-wide registry: collection reads them
per module, and re-importing a module (watch mode) starts from a clean list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Name of the list of declarations in a task module's globals.
DECLARATIONS = "__cpbuild_tasks__"
#: Attribute holding markers on a task function.
MARKERS = "__cpbuild_markers__"


class _ProductAnnotation:
    """``Annotated[Path, Product]`` marks a parameter as a file the task writes."""

    _instance: _ProductAnnotation | None = None

    def __new__(cls) -> _ProductAnnotation:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "Product"


Product = _ProductAnnotation()


@dataclass(frozen=True)
class Needs:
    """``Annotated[T, Needs("name-or-id")]``: receive that task's value under any parameter name."""

    target: str


@dataclass(frozen=True)
class Mark:
    """A marker such as ``@mark.slow``; selected with ``-m``."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


class MarkDecorator:
    """``mark.NAME`` decorates directly, ``mark.NAME(...)`` records arguments first."""

    def __init__(self, mark: Mark) -> None:
        self.mark = mark

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]) and not self.mark.args:
            func = args[0]
            markers = list(getattr(func, MARKERS, ()))
            markers.append(self.mark)
            setattr(func, MARKERS, markers)
            return func
        return MarkDecorator(Mark(self.mark.name, args, kwargs))

    def __repr__(self) -> str:
        return f"<MarkDecorator {self.mark.name}>"


class _MarkGenerator:
    """``mark.anything`` makes a marker, as ``pytest.mark`` and ``pytask.mark`` do."""

    def __getattr__(self, name: str) -> MarkDecorator:
        if name.startswith("_"):
            raise AttributeError(name)
        return MarkDecorator(Mark(name))


mark = _MarkGenerator()


class TaskOptions(NamedTuple):
    """Everything ``@task(...)`` accepts (DESIGN §3 rule 4). A tuple rather than a frozen
    dataclass: a loop may declare thousands of tasks, and this is built for each."""

    name: str | None = None
    id: str | None = None
    kwargs: Mapping[str, Any] = MappingProxyType({})
    after: tuple[str, ...] = ()
    queue: str | None = None
    executor: str | None = None
    job_prefix: tuple[str, ...] | None = None
    cache: bool = True
    default: bool | None = None
    markers: tuple[str, ...] = ()
    retries: int = 0
    timeout: float | None = None
    capture: bool = True


class Declaration(NamedTuple):
    """One ``@task`` application: the function and its options, in declaration order."""

    function: Callable[..., Any]
    options: TaskOptions


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def task(
    function: F | None = None,
    *,
    name: str | None = None,
    id: str | None = None,  # noqa: A002 - pytask's spelling
    kwargs: Mapping[str, Any] | None = None,
    after: str | Iterable[str] | None = None,
    queue: str | None = None,
    executor: str | None = None,
    job_prefix: str | Iterable[str] | None = None,
    cache: bool = True,
    default: bool | None = None,
    markers: Iterable[str] = (),
    retries: int = 0,
    timeout: float | None = None,
    capture: bool = True,
) -> Any:
    """Declare a task. Usable bare (``@task``) or with options (``@task(id="10", kwargs=...)``).

    The function is returned unchanged so that it stays callable as plain Python, and every
    application is registered even when a loop rebinds the same module-level name.
    """
    if isinstance(job_prefix, str):
        job_prefix = job_prefix.split()
    options = TaskOptions(
        name=name,
        id=id,
        kwargs=dict(kwargs or {}),
        after=_as_tuple(after),
        queue=queue,
        executor=executor,
        job_prefix=tuple(job_prefix) if job_prefix is not None else None,
        cache=cache,
        default=default,
        markers=tuple(markers),
        retries=retries,
        timeout=timeout,
        capture=capture,
    )

    def register(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@task decorates functions, not {type(func).__name__}")
        declarations = func.__globals__.setdefault(DECLARATIONS, [])
        declarations.append(Declaration(func, options))
        return func

    if function is not None:
        return register(function)
    return register
