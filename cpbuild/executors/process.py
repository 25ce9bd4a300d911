"""The process executor: a pool of reusable worker processes (the default for ``-j`` > 1).

Each pool slot is a thread in the main process that owns one worker (``cpbuild.worker serve``)
and talks to it over a pair of pipes: job in, outcome out. Owning the process, rather than
using ``concurrent.futures.ProcessPoolExecutor``, is what makes these guarantees possible:

* a worker that dies (segfault, ``os._exit``) fails only the task it was running; the slot
  starts a fresh worker for the next task (a ProcessPoolExecutor breaks as a whole);
* ``timeout=`` kills the task's whole process group (the worker runs in its own session, so
  processes the task started die with it), then the slot starts a fresh worker;
* Ctrl-C reaches only the main process (workers are in their own sessions), which terminates
  the workers' process groups and records nothing half-done.

A worker holds up to two jobs (``WINDOW``): the one it runs and the next, so that it never
waits for the main process between two short tasks. The second job is sent only when its frame
is small enough to sit in the pipe without blocking (``AHEAD_BYTES``): the slot thread must
never block writing a job while the worker blocks writing an outcome. A job's timeout counts
from when the worker starts it (the previous outcome's arrival); when a worker dies or is
killed, the job it ran fails and the job waiting behind it goes to a fresh worker.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpbuild.executors.procgroup import describe_exit, kill_group
from cpbuild.executors.shipping import JobPacker, prepare, worker_init
from cpbuild.runner import Job, Outcome
from cpbuild.worker import read_frame, write_frame


def _cancel_queued(jobs: queue.SimpleQueue[Any]) -> None:
    """Cancel the futures of jobs no worker has taken yet."""
    while True:
        try:
            item = jobs.get_nowait()
        except queue.Empty:
            return
        if item is not None:
            item[1].cancel()


WINDOW = 2  # jobs a worker holds at once: the one it runs and the next (_resend relies on 2)
AHEAD_BYTES = 16 * 1024  # a frame this small fits in a pipe's buffer (64 KiB on Linux)


@dataclass
class _Sent:
    """A job handed to a worker, waiting for its outcome."""

    job: Job
    future: Future[Outcome]
    packed: tuple[str, bytes, str, bytes, bytes]  # function and context digests and bytes, fields
    started: float = 0.0  # when the worker could start it (monotonic)


class _Worker:
    """One worker process and the two pipe ends the main process holds."""

    def __init__(self) -> None:
        self.sent: set[str] = set()  # digests of the functions and contexts this worker holds
        job_read, self.job_write = os.pipe()
        self.outcome_read, outcome_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cpbuild.worker", "serve", str(job_read), str(outcome_write)],
            pass_fds=(job_read, outcome_write),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(job_read)
        os.close(outcome_write)
        write_frame(self.job_write, pickle.dumps(worker_init()))

    def close(self, kill: bool = False) -> None:
        for fd in (self.job_write, self.outcome_read):
            try:
                os.close(fd)
            except OSError:
                pass
        if kill:
            kill_group(self.process)
        else:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                kill_group(self.process)


class ProcessExecutor:
    name = "process"

    def __init__(self, jobs: int, root: Path) -> None:
        # Jobs waiting here beyond those the workers hold, so that a worker that hands back an
        # outcome finds its next job at once rather than after a round trip through the scheduler.
        self.queue_ahead = jobs * WINDOW
        self.root = root
        self._packer = JobPacker(root)
        self._queue: queue.SimpleQueue[tuple[Job, Future[Outcome], Any] | None] = queue.SimpleQueue()
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._slot, args=(i,), name=f"cpbuild-slot-{i}", daemon=True)
            for i in range(jobs)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        try:
            job = prepare(job)
            packed = (*self._packer.function(job.function), *self._packer.context(job), self._packer.fields(job))
        except Exception as error:
            future.set_result(Outcome(False, error=f"{job.task_id} cannot be sent to a worker process: {type(error).__name__}: {error}"))
            return future
        self._queue.put((job, future, packed))
        return future

    # -- one slot: a thread that feeds one worker ------------------------------------------------

    def _slot(self, index: int) -> None:
        sent: deque[_Sent] = deque()
        held: _Sent | None = None  # a large job, sent once the worker has nothing else
        closing = False
        while True:
            while not closing and held is None and len(sent) < WINDOW:
                try:
                    item = self._queue.get(block=not sent)
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                elif item[1].set_running_or_notify_cancel():
                    held = _Sent(*item)
                    if self._send(index, held, sent, ahead_ok=True):
                        held = None
            if not sent:
                if held is not None:
                    self._send(index, held, sent, ahead_ok=False)
                    held = None
                    continue
                if closing:
                    break
                continue
            head = sent.popleft()
            try:
                outcome = self._receive(index, head, sent)
            except Exception as error:  # never leave a future unresolved: the build would hang
                outcome = Outcome(False, error=f"the process executor failed running {head.job.task_id}: {error!r}")
            head.future.set_result(outcome)
            if sent:
                sent[0].started = time.monotonic()
        with self._lock:
            worker = self._workers.pop(index, None)
        if worker is not None:
            worker.close(kill=self._closing)

    def _send(self, index: int, item: _Sent, sent: deque[_Sent], ahead_ok: bool) -> bool:
        """Hand ``item`` to the slot's worker; False if it is too large to go ahead of a job
        the worker holds (it is then sent later). A job that cannot be handed over fails."""
        if self._closing:
            item.future.set_result(Outcome(False, error=f"{item.job.task_id} was stopped"))
            return True
        try:
            worker = self._worker(index, replace_dead=not sent)
        except OSError as error:
            item.future.set_result(Outcome(False, error=f"cannot start a worker process for {item.job.task_id}: {error}"))
            return True
        digest, function, context_digest, context, fields = item.packed
        frame = pickle.dumps((
            digest, None if digest in worker.sent else function,
            context_digest, None if context_digest in worker.sent else context,
            fields,
        ))
        if sent and not (ahead_ok and len(frame) < AHEAD_BYTES):
            return False
        worker.sent.update((digest, context_digest))
        item.started = time.monotonic()
        try:
            write_frame(worker.job_write, frame)
        except BrokenPipeError:
            if not sent:
                self._retire(index, kill=True)
                item.future.set_result(Outcome(False, error=f"the worker for {item.job.task_id} exited before taking the job"))
                return True
            # It died running an earlier job; reading its outcome says so and sends this one again.
        sent.append(item)
        return True

    def _receive(self, index: int, head: _Sent, sent: deque[_Sent]) -> Outcome:
        """The outcome of the worker's current job ``head``; on a timeout or the worker's
        death, the jobs still waiting behind it go to a fresh worker."""
        worker = self._workers[index]
        job = head.job
        if job.timeout is not None:
            remaining = max(0.0, head.started + job.timeout - time.monotonic())
            ready, _, _ = select.select([worker.outcome_read], [], [], remaining)
            if not ready:
                self._retire(index, kill=True)
                self._resend(index, sent)
                return Outcome(
                    False,
                    error=f"{job.task_id} timed out after {job.timeout:g}s; its process group was killed",
                    duration=time.monotonic() - head.started,
                    worker=f"pid {worker.process.pid}",
                )
        data = read_frame(worker.outcome_read)
        if data is not None:
            return pickle.loads(data)
        worker.process.wait()
        status = describe_exit(worker.process.returncode)
        self._retire(index, kill=True)
        if self._closing:
            for other in sent:
                other.future.set_result(Outcome(False, error=f"{other.job.task_id} was stopped"))
            sent.clear()
            return Outcome(False, error=f"{job.task_id} was stopped", worker=f"pid {worker.process.pid}")
        self._resend(index, sent)
        return Outcome(
            False,
            error=f"the worker process running {job.task_id} died ({status})",
            duration=time.monotonic() - head.started,
            worker=f"pid {worker.process.pid}",
        )

    def _resend(self, index: int, sent: deque[_Sent]) -> None:
        """Hand the job a lost worker held but never started (at most one: WINDOW is 2) to
        the slot's next worker."""
        if sent:
            self._send(index, sent.popleft(), sent, ahead_ok=False)

    # -- workers ----------------------------------------------------------------------------------

    def _worker(self, index: int, replace_dead: bool) -> _Worker:
        with self._lock:
            worker = self._workers.get(index)
            if worker is None or (replace_dead and worker.process.poll() is not None):
                if worker is not None:
                    worker.close()
                worker = self._workers[index] = _Worker()
            return worker

    def _retire(self, index: int, kill: bool) -> _Worker | None:
        with self._lock:
            worker = self._workers.pop(index, None)
        if worker is not None:
            worker.close(kill=kill)
        return worker

    def shutdown(self, cancel: bool = False) -> None:
        self._closing = cancel
        if cancel:
            _cancel_queued(self._queue)
            with self._lock:
                workers = list(self._workers.values())
            for worker in workers:
                kill_group(worker.process, grace=0.5)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=None if not cancel else 5)


def create(config: Any, jobs: int) -> ProcessExecutor:
    return ProcessExecutor(jobs, config.root)
