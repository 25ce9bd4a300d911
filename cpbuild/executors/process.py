"""The process executor: a pool of reusable worker processes (the default for ``-j`` > 1).

Each pool slot owns one worker (``cpbuild.worker serve``) and talks to it over a pair of pipes:
jobs in, outcomes out. Owning the process, rather than using
``concurrent.futures.ProcessPoolExecutor``, is what makes these guarantees possible:

* a worker that dies (segfault, ``os._exit``) fails only the task it was running; the slot
  starts a fresh worker for the next task (a ProcessPoolExecutor breaks as a whole);
* ``timeout=`` kills the task's whole process group (the worker runs in its own session, so
  processes the task started die with it), then the slot starts a fresh worker;
* Ctrl-C reaches only the main process (workers are in their own sessions), which terminates
  the workers' process groups and records nothing half-done.

There are no threads: the scheduler calls ``poll``, which waits on the workers' outcome pipes
with ``select`` and resolves futures in the scheduler's own thread. A thread per worker cost
more than the tasks of a build of small tasks, in thread switches and in contention for the
interpreter lock with the scheduler.

A worker holds the job it runs and, behind it, jobs expected to take less than ``SHORT_TASK``
altogether (each function's last duration in this build), up to ``WINDOW`` jobs: it never
waits for the main process between short tasks, and the jobs for one worker go in one write,
which wakes it once. Behind a long task, or one of a function not seen yet, a job could wait
while another worker is idle, which matters more than a round trip: it stays in the queue. A
job waits in a worker only when its frame and those before it fit in the pipe without blocking
(``AHEAD_BYTES``): the main process must never block writing a job while the worker blocks
writing an outcome. A job's timeout counts from when the worker starts it (the previous
outcome's arrival); when a worker dies or is killed, the job it ran fails and the jobs waiting
behind it go back to the queue.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpbuild.executors.procgroup import KILL_GRACE, describe_exit, kill_group
from cpbuild.executors.shipping import JobPacker, prepare, worker_init
from cpbuild.runner import Job, Outcome
from cpbuild.worker import FrameReader, write_frames

WINDOW = 16  # jobs a worker holds at most: the one it runs and those queued behind it
#: A frame this small (with its 8-byte header) fits in any pipe's buffer: at least a page.
AHEAD_BYTES = 4096 - 8
SHORT_TASK = 0.01  # seconds: a job may wait in a worker behind jobs expected to take this long


@dataclass
class _Sent:
    """A job handed to the executor, then to a worker, waiting for its outcome."""

    job: Job
    future: Future[Outcome]
    packed: tuple[str, bytes, str, bytes, bytes]  # function and context digests and bytes, fields
    started: float = 0.0  # when the worker could start it (monotonic)
    size: int = 0  # of its frame with its header, as sent to its worker
    expected: float = 0.0  # seconds it is expected to take (its function's last task)


def can_fork() -> bool:
    """Whether workers may be forked from this process rather than started afresh: on Linux,
    while no other thread runs (a fork copies only the calling thread, so a lock another
    thread holds would stay locked in the worker for ever)."""
    return sys.platform == "linux" and threading.active_count() == 1


class _Forked:
    """What the pool uses of ``subprocess.Popen``, for a worker made by ``os.fork``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as Popen does
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                try:
                    self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
                except ChildProcessError:
                    self.returncode = 0
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:  # waitpid has no timeout; Popen.wait polls the same way
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        assert self.returncode is not None
        return self.returncode


class _Worker:
    """One worker process and the two pipe ends the main process holds.

    Forked (``fork=True``) before the task modules are imported, a worker starts in about a
    millisecond with cpbuild already imported, against tens of milliseconds for a new
    interpreter; it still gets every task by value, as a started worker does. A worker that
    replaces one that died is started afresh: by then the task modules are imported, and the
    libraries they import may run threads of their own that a fork would not copy.
    """

    def __init__(self, fork: bool = False) -> None:
        self.sent: set[str] = set()  # digests of the functions and contexts this worker holds
        self.initialized = False  # import path, folder, environment: sent with the first job
        self.stopped = False  # told that the build stopped (stop_queued)
        job_read, self.job_write = os.pipe()
        self.outcome_read, outcome_write = os.pipe()
        self.outcomes = FrameReader(self.outcome_read)
        self.process: Any
        try:
            self.process = self._fork(job_read, outcome_write) if fork else subprocess.Popen(
                [sys.executable, "-m", "cpbuild.worker", "serve", str(job_read), str(outcome_write)],
                pass_fds=(job_read, outcome_write),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            for fd in (self.job_write, self.outcome_read):
                os.close(fd)
            raise
        finally:
            os.close(job_read)
            os.close(outcome_write)

    @staticmethod
    def _fork(job_read: int, outcome_write: int) -> _Forked:
        """Fork a worker, which starts a session of its own (off the terminal, as a started
        worker is) before this returns. Signals that would raise in cpbuild's frames (Ctrl-C,
        SIGTERM) are held until the worker has its own handlers; anything that escapes in the
        worker ends it there, never in the copy of cpbuild's call stack."""
        sys.stdout.flush()  # or the worker would write the same buffered output again
        sys.stderr.flush()
        ready_read, ready_write = os.pipe()
        try:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
            try:
                pid = os.fork()
                if pid == 0:
                    try:
                        os.setsid()
                        os.close(ready_write)
                        from cpbuild.worker import serve_forked

                        serve_forked(job_read, outcome_write, previous)
                    finally:
                        os._exit(1)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                os.close(ready_write)
            os.read(ready_read, 1)  # the end of file: the worker has its session (or is gone)
        finally:
            os.close(ready_read)
        return _Forked(pid)

    def stop_queued(self) -> None:
        """Tell the worker that the build stopped: it answers the jobs it holds and has not
        started with "not started" outcomes (see ``cpbuild.worker``)."""
        if not self.stopped:
            self.stopped = True
            try:
                write_frames(self.job_write, [b""])
            except BrokenPipeError:
                pass  # gone: reading its outcomes says so

    def send(self, frames: list[bytes]) -> None:
        if not self.initialized:
            frames = [pickle.dumps(worker_init(environment=True)), *frames]
            self.initialized = True
        write_frames(self.job_write, frames)

    def close_pipes(self) -> None:
        """Tell the worker to exit (it sees the end of its job pipe)."""
        for fd in (self.job_write, self.outcome_read):
            if fd >= 0:
                os.close(fd)
        self.job_write = self.outcome_read = -1

    def close(self, kill: bool = False, grace: float = KILL_GRACE) -> None:
        self.close_pipes()
        if kill:
            kill_group(self.process, grace)
            return
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            kill_group(self.process)


@dataclass
class _Slot:
    """One place in the pool: its worker (started on demand) and the jobs it holds, oldest
    (the one running) first, with their expected seconds and bytes summed."""

    worker: _Worker | None = None
    sent: deque[_Sent] = field(default_factory=deque)
    expected: float = 0.0
    held_bytes: int = 0

    def push(self, item: _Sent) -> None:
        self.sent.append(item)
        self.expected += item.expected
        self.held_bytes += item.size

    def pop(self) -> _Sent:
        item = self.sent.popleft()
        if self.sent:
            self.expected -= item.expected
            self.held_bytes -= item.size
        else:
            self.expected, self.held_bytes = 0.0, 0
        return item

    def take_all(self) -> list[_Sent]:
        items = list(self.sent)
        self.sent.clear()
        self.expected, self.held_bytes = 0.0, 0
        return items


class ProcessExecutor:
    name = "process"
    in_process = False  # task code runs in worker processes only

    def __init__(self, jobs: int, root: Path) -> None:
        self._packer = JobPacker(root)
        self._waiting: deque[_Sent] = deque()  # submitted, not yet handed to a worker
        self._slots = [_Slot() for _ in range(jobs)]
        self._closing = False
        self._last: dict[str, float] = {}  # function digest -> duration of its last task
        self._quick = False  # the last task to finish was short
        self._reapers: list[threading.Thread] = []  # killing workers (see _retire)

    @property
    def queue_ahead(self) -> int:
        """Jobs wanted beyond ``-j``: what the workers hold behind their running jobs, plus
        room for more in those whose jobs are short (an idle one counts as short when the
        last task to finish was), so that a worker finds its next jobs at once rather than
        after a round trip through the scheduler. No room behind long tasks: a job handed over
        early would only wait, and look started meanwhile."""
        ahead = 0
        for slot in self._slots:
            quick = slot.expected < SHORT_TASK if slot.sent else self._quick
            ahead += WINDOW - 1 if quick else max(0, len(slot.sent) - 1)
        return ahead

    def start(self) -> None:
        """Start the workers now, by fork, if that is safe here (see ``_Worker``); the CLI
        calls this before it imports the task modules of a build that runs tasks."""
        if can_fork():
            # The main process needs it to pickle task functions, every worker to unpickle
            # them: imported once here, the workers inherit it.
            self._packer.cloudpickle_module()
            for slot in self._slots:
                if slot.worker is None:
                    slot.worker = _Worker(fork=True)

    def submit(self, job: Job) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        try:
            job = prepare(job)
            packed = (*self._packer.function(job.function), *self._packer.context(job), self._packer.fields(job))
        except Exception as error:
            future.set_result(Outcome(False, error=f"{job.task_id} cannot be sent to a worker process: {type(error).__name__}: {error}"))
            return future
        self._waiting.append(_Sent(job, future, packed))  # sent by the next poll, in a batch
        return future

    def poll(self, timeout: float | None) -> None:
        """Hand waiting jobs to the workers with room for them, then wait up to ``timeout``
        seconds (None: no limit) for outcomes, resolve their futures and enforce timeouts."""
        self._dispatch()
        busy = [slot for slot in self._slots if slot.sent]
        if not busy:
            return
        now = time.monotonic()
        for slot in busy:
            head = slot.sent[0]
            if head.job.timeout is not None:
                left = max(0.0, head.started + head.job.timeout - now)
                timeout = left if timeout is None else min(timeout, left)
        readable = {slot.worker.outcome_read: slot for slot in busy}  # type: ignore[union-attr]
        ready, _, _ = select.select(list(readable), [], [], timeout)
        for fd in ready:
            self._receive(readable[fd])
        now = time.monotonic()
        for slot in busy:
            head = slot.sent[0] if slot.sent else None
            if head is not None and head.job.timeout is not None and now >= head.started + head.job.timeout:
                assert slot.worker is not None
                if not select.select([slot.worker.outcome_read], [], [], 0)[0]:  # not just done
                    self._time_out(slot)
        self._dispatch()

    # -- handing jobs over ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand waiting jobs to workers while one has room (see ``_slot_with_room``); the jobs
        for one worker go in one write."""
        batches: dict[int, list[bytes]] = {}
        try:
            while self._waiting and not self._closing:
                item = self._waiting[0]
                if item.future.cancelled():  # the build stopped after a failure
                    self._waiting.popleft()
                    continue
                slot = self._slot_with_room(item)
                if slot is None:
                    return
                try:
                    worker = self._worker(slot)
                except OSError as error:
                    self._waiting.popleft()
                    self._resolve(item, Outcome(False, error=f"cannot start a worker process for {item.job.task_id}: {error}"))
                    continue
                digest, function, context_digest, context, fields = item.packed
                frame = pickle.dumps((
                    digest, None if digest in worker.sent else function,
                    context_digest, None if context_digest in worker.sent else context,
                    fields,
                ))
                # All but the running job's frame may still be in the pipe.
                if slot.sent and slot.held_bytes - slot.sent[0].size + len(frame) + 8 > AHEAD_BYTES:
                    return  # too large to wait in the pipe: it goes to the next idle worker
                self._waiting.popleft()
                # A job queued behind another starts (and can no longer be cancelled) when that
                # one's outcome arrives (_receive).
                if not slot.sent and not item.future.running() and not item.future.set_running_or_notify_cancel():
                    continue
                worker.sent.update((digest, context_digest))
                item.started = time.monotonic()
                item.size = len(frame) + 8
                item.expected = self._last.get(digest, SHORT_TASK)
                slot.push(item)
                batches.setdefault(self._slots.index(slot), []).append(frame)
        finally:
            for index, frames in batches.items():
                self._send(self._slots[index], frames)

    def _send(self, slot: _Slot, frames: list[bytes]) -> None:
        """Write the last ``len(frames)`` jobs of the slot to its worker."""
        worker = slot.worker
        assert worker is not None
        try:
            worker.send(frames)
        except BrokenPipeError:
            if len(slot.sent) == len(frames):  # it had nothing to run: it was gone before
                first = slot.pop()
                self._retire(slot, kill=True)
                self._resolve(first, Outcome(False, error=f"the worker for {first.job.task_id} exited before taking the job"))
            # Else it died running an earlier job: reading its outcome says so and requeues these.

    def _slot_with_room(self, item: _Sent) -> _Slot | None:
        """An idle slot, else the one expected to be free first among those whose jobs, with
        this one, are expected to take under ``SHORT_TASK`` (see the module's docstring)."""
        best, best_expected = None, SHORT_TASK
        expected = self._last.get(item.packed[0], SHORT_TASK)
        for slot in self._slots:
            if not slot.sent:
                return slot
            if len(slot.sent) < WINDOW and slot.expected + expected < best_expected:
                best, best_expected = slot, slot.expected + expected
        return best

    def _worker(self, slot: _Slot) -> _Worker:
        """The slot's worker; a fresh one if it has none or its idle worker has died."""
        worker = slot.worker
        if worker is not None and not slot.sent and worker.process.poll() is not None:
            self._retire(slot, kill=False)
            worker = None
        if worker is None:
            worker = slot.worker = _Worker()
        return worker

    # -- outcomes -------------------------------------------------------------------------------

    def _receive(self, slot: _Slot) -> None:
        """Read the outcomes the slot's worker has written, or find that it died."""
        worker = slot.worker
        assert worker is not None
        frames, closed = worker.outcomes.read_available()
        for data in frames:
            head = slot.pop()
            if slot.sent:
                self._start_next(slot)
            try:
                outcome = pickle.loads(data)
            except Exception as error:
                outcome = Outcome(False, error=f"the outcome of {head.job.task_id} could not be read: {error!r}")
            self._last[head.packed[0]] = outcome.duration
            self._quick = outcome.duration < SHORT_TASK
            self._resolve(head, outcome)
        if closed and slot.sent:
            head = slot.pop()
            worker.process.wait()
            status = describe_exit(worker.process.returncode)
            self._lose(slot, head, f"the worker process running {head.job.task_id} died ({status})")

    def _start_next(self, slot: _Slot) -> None:
        """The slot's next job starts now in its worker. If it was cancelled (the build stopped
        after a failure) the worker is told not to start the ones behind it."""
        head = slot.sent[0]
        head.started = time.monotonic()
        if not head.future.running() and not head.future.set_running_or_notify_cancel():
            assert slot.worker is not None
            slot.worker.stop_queued()

    def _time_out(self, slot: _Slot) -> None:
        head = slot.pop()
        self._lose(slot, head, f"{head.job.task_id} timed out after {head.job.timeout:g}s; its process group was killed")

    def _lose(self, slot: _Slot, head: _Sent, error: str) -> None:
        """The slot's worker is gone, or must go, with ``head``, the job it ran: that job fails."""
        worker = slot.worker
        assert worker is not None
        self._retire(slot, kill=True)
        self._resolve(head, Outcome(
            False, error=error, duration=time.monotonic() - head.started, worker=f"pid {worker.process.pid}"
        ))

    def _retire(self, slot: _Slot, kill: bool) -> None:
        """Stop the slot's worker; the jobs waiting behind its running one go back to the
        front of the queue, for the next worker with room. A worker to kill gets its grace
        period on a thread of its own: a task that ignores SIGTERM must not hold up the
        scheduler and every other worker."""
        worker, slot.worker = slot.worker, None
        if worker is not None:
            if kill and worker.process.poll() is None:
                worker.close_pipes()
                reaper = threading.Thread(target=worker.close, args=(True,), name="cpbuild-reaper", daemon=True)
                reaper.start()
                self._reapers.append(reaper)
            else:
                worker.close(kill=kill)
        self._waiting.extendleft(reversed(slot.take_all()))

    def _resolve(self, item: _Sent, outcome: Outcome) -> None:
        if not item.future.done():
            item.future.set_result(outcome)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            self._closing = True
            for slot in self._slots:
                if slot.worker is not None:
                    slot.worker.close(kill=True, grace=0.5)
                    slot.worker = None
                for item in slot.take_all():
                    self._resolve(item, Outcome(False, error=f"{item.job.task_id} was stopped"))
            for item in self._waiting:
                item.future.cancel() or self._resolve(item, Outcome(False, error=f"{item.job.task_id} was stopped"))
            self._waiting.clear()
            for reaper in self._reapers:
                reaper.join()
            return
        while self._waiting or any(slot.sent for slot in self._slots):
            self.poll(None)
        workers = [slot.worker for slot in self._slots if slot.worker is not None]
        for worker in workers:
            worker.close_pipes()  # all at once: they exit in parallel
        for worker in workers:
            # One that never got a job ran no task code: nothing to wait for.
            worker.close(kill=not worker.initialized, grace=0.0)
        for reaper in self._reapers:
            reaper.join()


def create(config: Any, jobs: int) -> ProcessExecutor:
    return ProcessExecutor(jobs, config.root)
