"""Running one task where its executor put it: capture output, call, serialize the value.

This is the only code that runs on the executing side (a thread, a worker process, a cluster
node). It returns an ``Outcome`` of plain data; recording results is the main process's job.
Serializing happens here, next to the value, so that an unpicklable return value is reported
as that task's failure with the task's name and the value's type.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cpbuild.tracebacks import format_user_traceback


@dataclass
class Job:
    """What an executor needs to run one task."""

    task_id: str
    function: Callable[..., Any]
    kwargs: dict[str, Any]
    serializer: Any
    capture: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # queue, timeout, job_prefix, ...


@dataclass
class Outcome:
    """The result of running a job: the serialized value or the error, plus captured output."""

    ok: bool
    value: bytes | None = None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    worker: str = ""


class _ThreadLocalStream(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: each thread running a task writes to its own buffer,
    everything else goes to the real stream. This lets the thread executor capture per task."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.local = threading.local()

    def write(self, text: str) -> int:
        buffer = getattr(self.local, "buffer", None)
        return (buffer if buffer is not None else self.original).write(text)

    def flush(self) -> None:
        buffer = getattr(self.local, "buffer", None)
        if buffer is None:
            self.original.flush()

    def isatty(self) -> bool:
        return getattr(self.local, "buffer", None) is None and self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")


_install_lock = threading.Lock()


def _install_streams() -> tuple[_ThreadLocalStream, _ThreadLocalStream]:
    with _install_lock:
        if not isinstance(sys.stdout, _ThreadLocalStream):
            sys.stdout = _ThreadLocalStream(sys.stdout)
        if not isinstance(sys.stderr, _ThreadLocalStream):
            sys.stderr = _ThreadLocalStream(sys.stderr)
        return sys.stdout, sys.stderr  # type: ignore[return-value]


@contextmanager
def _captured(enabled: bool) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    out, err = io.StringIO(), io.StringIO()
    if not enabled:
        yield out, err
        return
    stdout, stderr = _install_streams()
    stdout.local.buffer, stderr.local.buffer = out, err
    try:
        yield out, err
    finally:
        stdout.local.buffer = stderr.local.buffer = None


def run_job(job: Job) -> Outcome:
    """Run ``job`` and describe what happened. Ctrl-C propagates: it is not the task's failure."""
    start = time.perf_counter()
    with _captured(job.capture) as (out, err):
        try:
            value = job.function(**job.kwargs)
        except (Exception, SystemExit) as error:
            return Outcome(
                False,
                error=format_user_traceback(error),
                stdout=out.getvalue(),
                stderr=err.getvalue(),
                duration=time.perf_counter() - start,
                worker=threading.current_thread().name,
            )
    duration = time.perf_counter() - start
    try:
        data = job.serializer.dumps(value)
    except Exception as error:
        message = (
            f"the return value of {job.task_id} (type {type(value).__module__}."
            f"{type(value).__qualname__}) cannot be serialized with {job.serializer.name}: "
            f"{type(error).__name__}: {error}"
        )
        return Outcome(False, error=message, stdout=out.getvalue(), stderr=err.getvalue(), duration=duration)
    return Outcome(
        True,
        value=data,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        duration=duration,
        worker=threading.current_thread().name,
    )
