"""The executing side of the ``process`` and ``prefix`` executors.

``python -m cpbuild.worker serve READ_FD WRITE_FD``: a long-lived pool worker. It reads
length-prefixed frames ``(function digest, function bytes or None, context digest, context
bytes or None, fields)`` from one pipe and writes one outcome per job to the other, in order,
so it can be reused across tasks; each task function and context is unpickled once per worker
(``cpbuild.executors.shipping.JobPacker``). Several jobs may wait in it; an empty frame tells
it that the build stopped after a failure, and it answers every job it has not started with
a "not started" outcome instead of running it. Its standard streams are the terminal's; task
output is captured at the file-descriptor level per job.

``python -m cpbuild.worker run JOB_FILE OUTCOME_FILE``: runs one job and exits; used behind a
job-scheduler prefix (``srun ... python -m cpbuild.worker run ...``) over a shared file system.
The outcome file is written atomically; the exit status is 0 whether the task failed or not
(the outcome says), so a non-zero status means the job never got to report.

This module imports nothing heavy: workers unpickle jobs, which imports cloudpickle (and the
user's libraries) only when the job needs them.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import sys
from collections import deque
from typing import Any, NoReturn

_HEADER = struct.Struct("<Q")


def write_frames(fd: int, frames: list[bytes]) -> None:
    """Write length-prefixed frames with as few system calls as the pipe allows: a batch of
    jobs costs one write, and wakes the worker once."""
    parts = []
    for data in frames:
        parts.append(_HEADER.pack(len(data)))
        parts.append(data)
    view = memoryview(b"".join(parts))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_frame(fd: int, data: bytes) -> None:
    write_frames(fd, [data])


class FrameReader:
    """Frames from a pipe, read in large chunks: when the other side wrote several frames,
    one system call takes them all. An empty frame is not handed out: it sets ``stopped`` (the
    pool's notice that the build stopped, see ``serve``)."""

    CHUNK = 1 << 16  # a pipe's capacity on Linux; larger reads would allocate by mmap each time

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._ready: deque[bytes] = deque()  # complete frames not handed out yet (next)
        self.stopped = False

    def _take_all(self) -> list[bytes]:
        """The complete frames at the front of the buffer, removed from it."""
        buffer, start, frames = self._buffer, 0, []
        while len(buffer) - start >= _HEADER.size:
            end = start + _HEADER.size + _HEADER.unpack_from(buffer, start)[0]
            if len(buffer) < end:
                break
            if end == start + _HEADER.size:
                self.stopped = True
            else:
                frames.append(bytes(buffer[start + _HEADER.size:end]))
            start = end
        del buffer[:start]
        return frames

    def read_available(self) -> tuple[list[bytes], bool]:
        """One read (call it when the pipe is readable): the frames complete now, and whether
        the other side has closed its end."""
        chunk = os.read(self.fd, self.CHUNK)
        self._buffer += chunk
        return self._take_all(), not chunk

    def refresh(self) -> None:
        """While frames wait here, take in without waiting what the other side wrote since:
        a stop notice behind them is seen before they are handed out."""
        if self._ready and select.select([self.fd], [], [], 0)[0]:
            self._buffer += os.read(self.fd, self.CHUNK)
            self._ready.extend(self._take_all())

    def next(self) -> bytes | None:
        """The next frame, waiting for it; None at end of file (the other side is gone)."""
        while not self._ready:
            chunk = os.read(self.fd, self.CHUNK)
            if not chunk:
                return None
            self._buffer += chunk
            self._ready.extend(self._take_all())
        return self._ready.popleft()


def _setup(init: dict[str, Any]) -> None:
    """Take on the main process's state as it is when the first job is sent: a worker forked
    before the task modules were imported has not seen what they set at import (variables
    such as OMP_NUM_THREADS, the umask), a started one has seen it; both get the same."""
    sys.path[:] = init["sys_path"]
    os.chdir(init["cwd"])
    if "environ" in init:
        os.environ.clear()
        os.environ.update(init["environ"])
        os.umask(init["umask"])
    _batch_scheduling()


def _batch_scheduling() -> None:
    """Ask Linux to treat this worker as the batch job it is (SCHED_BATCH): same share of the
    processor, but waking up (a job arrives) does not preempt the running process. Otherwise
    every job the main process sends hands the worker the main process's own core at once,
    and with as many workers as cores the main process, which feeds them all, waits for each."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:
            pass


def _exit_with_parent() -> None:
    """Stop this worker's process group when cpbuild itself dies (SIGKILL, a crash): a worker
    runs in a session of its own, so nothing else would stop it or the task it runs."""
    import signal
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="cpbuild-parent-watch", daemon=True).start()


def serve(read_fd: int, write_fd: int) -> int:
    from cpbuild.executors.shipping import unpack_job
    from cpbuild.runner import run_job

    _exit_with_parent()
    jobs = FrameReader(read_fd)
    init = jobs.next()
    if init is None:
        return 0
    _setup(pickle.loads(init))
    import atexit

    exit_handlers = atexit._ncallbacks()
    functions: dict[str, Any] = {}  # digest -> task function, unpickled once per worker
    contexts: dict[str, Any] = {}  # digest -> (serializer, hasher, storage), likewise
    while True:
        jobs.refresh()  # (sees a stop notice written behind the jobs queued here)
        data = jobs.next()
        if data is None:
            _exit_fast_if_clean(exit_handlers)
            return 0
        if jobs.stopped:  # the build stopped after a failure: a job not started yet is not run
            from cpbuild.runner import Outcome

            write_frame(write_fd, pickle.dumps(Outcome(False, error="not started: the build stopped"), protocol=5))
            continue
        try:
            digest, function_bytes, context_digest, context_bytes, fields = pickle.loads(data)
            if digest not in functions:
                functions[digest] = pickle.loads(function_bytes)
            if context_digest not in contexts:
                contexts[context_digest] = pickle.loads(context_bytes)
            job = unpack_job(functions[digest], contexts[context_digest], fields)
        except Exception as error:  # e.g. a library the task needs is missing here
            from cpbuild.runner import Outcome

            outcome = Outcome(False, error=f"the job could not be unpickled in the worker: {error!r}")
        else:
            outcome = run_job(job, fd_capture=True)
        write_frame(write_fd, pickle.dumps(outcome, protocol=5))


def serve_forked(read_fd: int, write_fd: int, signal_mask: Any) -> NoReturn:
    """The life of a worker forked from cpbuild (``cpbuild.executors.process``), which has
    made it a session leader with Ctrl-C and SIGTERM held: undo what it inherited that a
    started worker would not have, serve, and exit without returning into the copy of
    cpbuild's call stack."""
    code = 1
    try:
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        for name in ("SIGTERM", "SIGHUP"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        keep = {read_fd, write_fd, 1, 2}
        for entry in os.listdir("/proc/self/fd"):  # other workers' pipes, the state database
            if int(entry) not in keep:
                try:
                    os.close(int(entry))
                except OSError:
                    pass
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
        import gc

        gc.freeze()  # cpbuild's objects: never collected here, their finalizers never run
        gc.enable()  # the CLI turns it off while it collects
        code = serve(read_fd, write_fd)
        _exit_like_python()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _exit_like_python() -> None:
    """What the interpreter does at exit that task code may rely on: wait for its threads,
    run its exit handlers, flush the standard streams."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def _exit_fast_if_clean(exit_handlers: int) -> None:
    """Skip the interpreter's teardown (tens of milliseconds with the libraries a task
    imported) unless task code left something for it to do: exit handlers or threads."""
    import atexit
    import threading

    if atexit._ncallbacks() == exit_handlers and all(
        t.daemon or t is threading.main_thread() for t in threading.enumerate()
    ):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_file(job_file: str, outcome_file: str) -> int:
    from cpbuild.runner import Outcome, run_job

    with open(job_file, "rb") as stream:
        init, data = pickle.load(stream)
    _setup(init)
    try:
        job = pickle.loads(data)
    except Exception as error:
        outcome = Outcome(False, error=f"the job could not be unpickled on {os.uname().nodename}: {error!r}")
    else:
        outcome = run_job(job, fd_capture=False)
    tmp = f"{outcome_file}.tmp"
    with open(tmp, "wb") as stream:
        pickle.dump(outcome, stream, protocol=5)
    os.replace(tmp, outcome_file)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        return serve(int(argv[1]), int(argv[2]))
    if len(argv) == 3 and argv[0] == "run":
        return run_file(argv[1], argv[2])
    print("usage: python -m cpbuild.worker serve READ_FD WRITE_FD | run JOB_FILE OUTCOME_FILE",
          file=sys.stderr)
    return 4


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
