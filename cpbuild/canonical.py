"""Canonical, order-independent text for simple Python values (DESIGN §5: arguments, constants).

A canonical form must not depend on dict insertion order, set iteration order or
``PYTHONHASHSEED`` (checkpointing's bug), and must keep types apart: ``(1, 2)`` and ``[1, 2]``
are different arguments (taskproc's bug). Named tuples, enum members and dataclass instances
made of simple values are simple too (their type's name is part of the text). Paths under the project root are written relative to
it so that keys are portable between checkouts.
"""

from __future__ import annotations

import enum
from pathlib import Path, PurePath
from typing import Any

#: Containers larger than this (counting every nested element) are not "simple" any more;
#: their state is then identified by a digest of their pickle (arguments) or not tracked
#: (module constants), so that a huge module-level table does not slow down every key.
MAX_ELEMENTS = 10_000


class NotSimple(Exception):
    """The value has a part that has no canonical text form."""


def canonical(value: Any, root: Path | None = None) -> str:
    """Return the canonical text of ``value`` or raise ``NotSimple``."""
    budget = [MAX_ELEMENTS]
    return _encode(value, root, budget)


def _encode(value: Any, root: Path | None, budget: list[int]) -> str:
    budget[0] -= 1
    if budget[0] < 0:
        raise NotSimple("too large")
    if value is None or value is True or value is False:
        return repr(value)
    kind = type(value)
    if kind is int:
        return repr(value)
    if kind is float:
        return f"float({value!r})"
    if kind is str:
        return repr(value)
    if kind is bytes:
        return repr(value)
    if isinstance(value, PurePath):
        return f"Path({_path_text(value, root)!r})"
    if kind is tuple:
        return "(" + ",".join(_encode(v, root, budget) for v in value) + ",)"
    if kind is list:
        return "[" + ",".join(_encode(v, root, budget) for v in value) + "]"
    if kind is dict:
        items = sorted(
            (_encode(k, root, budget), _encode(v, root, budget)) for k, v in value.items()
        )
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if kind is set or kind is frozenset:
        inner = ",".join(sorted(_encode(v, root, budget) for v in value))
        return f"{kind.__name__}({{{inner}}})"
    # Records of simple values: named tuples, enum members, dataclass instances.
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, tuple) and hasattr(kind, "_fields"):
        return name + "(" + ",".join(_encode(v, root, budget) for v in value) + ")"
    if isinstance(value, enum.Enum):
        return f"{name}.{value.name}={_encode(value.value, root, budget)}"
    fields = getattr(kind, "__dataclass_fields__", None)
    if fields is not None:
        inner = ",".join(f"{f}={_encode(getattr(value, f), root, budget)}" for f in fields)
        return f"{name}({inner})"
    raise NotSimple(kind.__qualname__)


def _path_text(path: PurePath, root: Path | None) -> str:
    if root is not None and path.is_absolute():
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def short_repr(value: Any, limit: int = 60) -> str:
    """A readable, bounded rendering for messages such as ``argument n: 10 -> 20``."""
    try:
        text = repr(value)
    except Exception:  # a user's __repr__ may raise; a message must not
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
