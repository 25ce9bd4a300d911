"""Tracebacks trimmed to the user's frames, as pytest shows them.

cpbuild's own frames and importlib's say nothing about the user's bug; they are dropped. When
nothing is left (the error is in cpbuild itself), the full traceback is kept.
"""

from __future__ import annotations

import traceback
from pathlib import Path

_CPBUILD_DIR = str(Path(__file__).resolve().parent)
_HIDDEN = (_CPBUILD_DIR, "<frozen importlib")


def format_user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` without cpbuild's and the import machinery's frames."""
    exc = traceback.TracebackException.from_exception(error)
    _trim(exc)
    return "".join(exc.format())


def _trim(exc: traceback.TracebackException) -> None:
    frames = [f for f in exc.stack if not f.filename.startswith(_HIDDEN)]
    if frames:
        exc.stack = traceback.StackSummary.from_list(frames)
    if exc.__cause__ is not None:
        _trim(exc.__cause__)
    if exc.__context__ is not None:
        _trim(exc.__context__)
