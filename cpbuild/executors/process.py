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
from concurrent.futures import Future
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


class _Worker:
    """One worker process and the two pipe ends the main process holds."""

    def __init__(self) -> None:
        self.functions: set[str] = set()  # digests of the task functions this worker holds
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
        self.queue_ahead = jobs  # tasks waiting here while others run: no idle worker between tasks
        self.root = root
        self._packer = JobPacker(root)
        self._queue: queue.SimpleQueue[tuple[Job, Future[Outcome]] | None] = queue.SimpleQueue()
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
            digest, function = self._packer.function(job.function)
            rest = self._packer.rest(prepare(job))
        except Exception as error:
            future.set_result(Outcome(False, error=f"{job.task_id} cannot be sent to a worker process: {type(error).__name__}: {error}"))
            return future
        self._queue.put((job, future, (digest, function, rest)))  # type: ignore[arg-type]
        return future

    def _slot(self, index: int) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            job, future, packed = item  # type: ignore[misc]
            if not future.set_running_or_notify_cancel():
                continue
            try:
                outcome = self._run(index, job, packed)
            except Exception as error:  # never leave a future unresolved: the build would hang
                outcome = Outcome(False, error=f"the process executor failed running {job.task_id}: {error!r}")
            future.set_result(outcome)
        with self._lock:
            worker = self._workers.pop(index, None)
        if worker is not None:
            worker.close(kill=self._closing)

    def _worker(self, index: int) -> _Worker:
        with self._lock:
            worker = self._workers.get(index)
            if worker is None or worker.process.poll() is not None:
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

    def _run(self, index: int, job: Job, packed: tuple[str, bytes, bytes]) -> Outcome:
        worker = self._worker(index)
        start = time.monotonic()
        digest, function, rest = packed
        frame = pickle.dumps((digest, None if digest in worker.functions else function, rest))
        worker.functions.add(digest)
        try:
            write_frame(worker.job_write, frame)
        except BrokenPipeError:
            self._retire(index, kill=True)
            return Outcome(False, error=f"the worker for {job.task_id} exited before taking the job")
        if job.timeout is not None:
            ready, _, _ = select.select([worker.outcome_read], [], [], job.timeout)
            if not ready:
                self._retire(index, kill=True)
                return Outcome(
                    False,
                    error=f"{job.task_id} timed out after {job.timeout:g}s; its process group was killed",
                    duration=time.monotonic() - start,
                    worker=f"pid {worker.process.pid}",
                )
        data = read_frame(worker.outcome_read)
        if data is None:
            worker.process.wait()
            status = describe_exit(worker.process.returncode)
            self._retire(index, kill=True)
            if self._closing:
                return Outcome(False, error=f"{job.task_id} was stopped", worker=f"pid {worker.process.pid}")
            return Outcome(
                False,
                error=f"the worker process running {job.task_id} died ({status})",
                duration=time.monotonic() - start,
                worker=f"pid {worker.process.pid}",
            )
        return pickle.loads(data)

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
