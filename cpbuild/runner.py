"""Running one task where its executor put it: capture output, call, serialize the value.

This is the only code that runs on the executing side (a thread, a worker process, a cluster
node). It returns an ``Outcome`` of plain data; recording results is the main process's job.
Serializing happens here, next to the value, so that an unpicklable return value is reported
as that task's failure with the task's name and the value's type.
"""

from __future__ import annotations

import io
import operator
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Job:
    """What an executor needs to run one task.

    Upstream values travel as digests (``values``) and are loaded from ``storage`` where the
    task runs, and a large result is written there too, so a large value never passes through
    the main process. Small values (up to ``SMALL_VALUE``) do: a result comes back in the
    Outcome and the main process stores it with others in one write, and an upstream value the
    main process has not stored yet travels with the job (``inline``, by digest). An executor
    whose workers cannot reach the storage sets ``storage`` to None after resolving ``values``
    into ``kwargs``; every value then comes back in the Outcome.
    """

    task_id: str
    function: Callable[..., Any]
    kwargs: dict[str, Any]
    values: dict[str, str]
    serializer: Any
    hasher: Any
    storage: Any
    capture: bool = True
    timeout: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # queue, job_prefix, ...
    inline: dict[str, bytes] = field(default_factory=dict)  # upstream values not stored yet
    products: tuple[str, ...] = ()  # absolute paths, hashed where the task ran (Outcome.products)
    #: Input and product parameters as structures of path strings, made ``Path`` objects where
    #: the task runs: strings cost the main process, which feeds every worker, less to pickle.
    paths: dict[str, Any] = field(default_factory=dict)

    def resolve_values(self) -> None:
        """Load upstream values into ``kwargs`` here, for workers without the storage."""
        self.kwargs = {**self.kwargs, **_load_values(self)}  # not in place: it is the graph's
        self.values = {}
        self.storage = None


@dataclass
class Outcome:
    """The result of running a job: the value's digest (and bytes when the worker could not
    store them) or the error, plus captured output."""

    ok: bool
    value_digest: str | None = None
    value: bytes | None = None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    worker: str = ""
    #: The products' stat entries (device, inode, size, mtime_ns, digest, hashed too soon after
    #: the write to be trusted), None for one that does not exist; hashed where the task ran,
    #: while the file is in that machine's cache, rather than in the main process, which feeds
    #: every worker. None: not hashed there.
    products: dict[str, tuple[int, int, int, int, str, bool] | None] | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Positional fields rather than the default instance dict: a third of the cost of
        # unpickling, paid once per task by the main process.
        return Outcome, _outcome_fields(self)


_outcome_fields = operator.attrgetter(*(f.name for f in fields(Outcome)))

#: Values up to this size come back to the main process, which writes them to the storage in
#: batches: a write per value cost a worker more than a small task (a transaction each, and two
#: workers waiting for each other's). Larger values are written where the task ran.
SMALL_VALUE = 64 * 1024


class MissingValue(LookupError):
    pass


def _load_values(job: Job) -> dict[str, Any]:
    """The job's upstream values by parameter name. A storage with ``get_many`` (the local
    store) reads them all at once: a task that gathers a thousand values makes one query."""
    if not job.values:
        return {}
    storage = job.storage
    found: dict[str, bytes | None] = dict(job.inline)
    wanted = set(job.values.values()) - found.keys()
    if storage is None or not wanted:
        pass
    elif hasattr(storage, "get_many"):
        found.update(storage.get_many(wanted))
    else:
        found.update((digest, storage.get(digest)) for digest in wanted)
    values = {}
    for name, digest in job.values.items():
        data = found.get(digest)
        if data is None:
            raise MissingValue(
                f"an upstream value of {job.task_id} ({digest[:12]}) is missing from the store; "
                "rebuild its producer with cpbuild -B"
            )
        values[sys.intern(name)] = job.serializer.loads(data)
    return values


def _paths(paths: dict[str, Any]) -> dict[str, Any]:
    if not paths:
        return {}
    from pathlib import Path

    from cpbuild.model import map_paths

    return {sys.intern(name): map_paths(value, Path) for name, value in paths.items()}


def _interned(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with interned names. Unpickled names are new strings, and CPython matches a
    keyword to a parameter by identity first, by comparing text only when that fails: for
    every keyword against every parameter name, which took 5 ms for a thousand of them."""
    return {sys.intern(name): value for name, value in kwargs.items()}


class _Capture(io.TextIOWrapper):
    """A text stream into memory with a ``buffer`` for bytes, as ``sys.stdout`` has."""

    def __init__(self, encoding: str | None = None) -> None:
        super().__init__(io.BytesIO(), encoding=encoding or "utf-8", errors="backslashreplace",
                         write_through=True)

    def getvalue(self) -> str:
        self.flush()
        return self.buffer.getvalue().decode(self.encoding, "replace")  # type: ignore[attr-defined]


class _ThreadLocalStream(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: each thread running a task writes to its own
    capture, everything else goes to the real stream. This lets the thread executor capture
    per task. ``breakpoint()`` in a task ends its capture, so the debugger talks to the user."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.local = threading.local()

    def _target(self) -> Any:
        target = getattr(self.local, "target", None)
        return target if target is not None else self.original

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return getattr(self.local, "target", None) is None and self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def buffer(self) -> Any:  # type: ignore[override]
        return self._target().buffer

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
            previous_hook = sys.breakpointhook

            def breakpoint_without_capture(*args: Any, **kwargs: Any) -> Any:
                for stream in (sys.stdout, sys.stderr):
                    if isinstance(stream, _ThreadLocalStream):
                        stream.local.target = None
                return previous_hook(*args, **kwargs)

            sys.breakpointhook = breakpoint_without_capture
        return sys.stdout, sys.stderr  # type: ignore[return-value]


def uninstall_streams() -> None:
    """Give the process its real streams back (at the end of a build)."""
    with _install_lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if isinstance(stream, _ThreadLocalStream):
                setattr(sys, name, stream.original)
        sys.breakpointhook = sys.__breakpointhook__


@contextmanager
def _captured(enabled: bool) -> Iterator[tuple[Any, Any]]:
    if not enabled:
        yield io.StringIO(), io.StringIO()
        return
    stdout, stderr = _install_streams()
    out, err = _Capture(stdout.encoding), _Capture(stderr.encoding)
    stdout.local.target, stderr.local.target = out, err
    try:
        yield out, err
    finally:
        stdout.local.target = stderr.local.target = None


class _DescriptorCapture:
    """Descriptors 1 and 2 of a worker process, pointed at two temporary files.

    They stay pointed there from one captured task to the next (nothing else runs in a worker
    between tasks) and the files are emptied after each task: a task costs a few system calls
    for its capture, not the dozen that saving and restoring the descriptors takes. A task that
    must not be captured gets the original descriptors back for its run."""

    def __init__(self) -> None:
        self.files: list[Any] = []
        self.saved: list[int] = []
        self.active = False

    def start(self) -> None:
        if not self.files:
            import tempfile

            self.files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
            self.saved = [os.dup(1), os.dup(2)]
        if not self.active:
            os.dup2(self.files[0].fileno(), 1)
            os.dup2(self.files[1].fileno(), 2)
            self.active = True

    def stop(self) -> None:
        if self.active:
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)
            self.active = False

    def take(self) -> list[str]:
        """What was written since the last call, for stdout and stderr; empties the files."""
        texts = []
        for file in self.files:
            fd = file.fileno()
            size = os.lseek(fd, 0, os.SEEK_END)  # written through descriptor 1 or 2
            if size:
                texts.append(os.pread(fd, size, 0).decode(errors="replace"))
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)  # the offset is shared with descriptor 1 or 2
            else:
                texts.append("")
        return texts


_descriptors = _DescriptorCapture()


@contextmanager
def _fd_captured(enabled: bool) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Capture at the file-descriptor level, so that the output of child processes (a compiler
    run through subprocess) is captured too. Used in worker processes, one task at a time."""
    out, err = io.StringIO(), io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    if not enabled:
        _descriptors.stop()
        yield out, err
        return
    _descriptors.start()
    try:
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        text_out, text_err = _descriptors.take()
        out.write(text_out)
        err.write(text_err)


_NODE = os.uname().nodename


def run_job(job: Job, fd_capture: bool = False) -> Outcome:
    """Run ``job`` and describe what happened. Ctrl-C propagates: it is not the task's failure."""
    start = time.perf_counter()
    result = Outcome(False, worker=f"{_NODE}:{os.getpid()}:{threading.current_thread().name}")
    capture = _fd_captured if fd_capture else _captured
    value: Any = None
    with capture(job.capture) as (out, err):
        try:
            value = job.function(**_interned(job.kwargs), **_paths(job.paths), **_load_values(job))
        except MissingValue as error:
            result.error = str(error)
        except (Exception, SystemExit) as error:
            from cpbuild.tracebacks import format_user_traceback

            result.error = format_user_traceback(error)
    result.stdout, result.stderr = out.getvalue(), err.getvalue()
    result.duration = time.perf_counter() - start
    if result.error is not None:
        return result
    try:
        data = job.serializer.dumps(value)
    except Exception as error:
        result.error = (
            f"the return value of {job.task_id} (type {type(value).__module__}."
            f"{type(value).__qualname__}) cannot be serialized with {job.serializer.name}: "
            f"{type(error).__name__}: {error}"
        )
        return result
    digest = job.hasher.bytes_digest(data)
    if job.storage is None or len(data) <= SMALL_VALUE:
        result.value = data
    else:
        try:
            job.storage.put(digest, data)
        except Exception as error:  # a full disk, a locked or unreachable store
            result.error = f"the value of {job.task_id} could not be stored: {type(error).__name__}: {error}"
            return result
    result.ok, result.value_digest = True, digest
    if job.products:
        result.products = _product_entries(job.products, job.hasher)
    return result


def local_products(outcome: Outcome) -> dict[str, tuple[int, int, int, int, str, bool] | None] | None:
    """The product entries of ``outcome`` if its task ran on this machine, else None: a stat
    entry taken on another node (a cluster worker on a shared file system) has that node's
    device numbers, and its racy flag that node's clock."""
    if outcome.products is None or outcome.worker.partition(":")[0] != _NODE:
        return None
    return outcome.products


def _product_entries(paths: tuple[str, ...], hasher: Any) -> dict[str, tuple[int, int, int, int, str, bool] | None]:
    """What ``FileDigests.accept`` takes in: the stat entry of each product and whether it
    was hashed within ``RACY_NS`` of its last change (see ``FileDigests``); None for a product
    that does not exist. One that cannot be read here (permissions) is left to the main
    process, which reports it."""
    from cpbuild.project import RACY_NS

    entries: dict[str, tuple[int, int, int, int, str, bool] | None] = {}
    for path in paths:
        try:
            st = os.stat(path)
            digest = hasher.file_digest(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            entries[path] = None
            continue
        except OSError:
            continue
        racy = time.time_ns() - st.st_mtime_ns <= RACY_NS
        entries[path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest, racy)
    return entries
