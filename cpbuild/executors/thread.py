"""The thread executor: tasks run in threads of the main process.

Good for tasks that wait (subprocesses, network, I/O) or release the GIL (numpy); values need no
pickling on the way in. Output is captured per task through thread-local streams; output
written directly to file descriptor 1/2 by child processes is not captured here.

Threads cannot be stopped from outside. They are daemon threads, so Ctrl-C ends the build at
once (as DESIGN §6 asks) instead of waiting for them; a task's products are deleted by the
scheduler, and the process exits without waiting for the task's function to return.
Timeouts are not enforced here (use the process executor).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any

from cpbuild.runner import Job, Outcome, run_job, uninstall_streams


class ThreadExecutor:
    name = "thread"

    def __init__(self, jobs: int) -> None:
        self.queue_ahead = jobs
        self._queue: queue.SimpleQueue[tuple[Job, Future[Outcome]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"cpbuild-worker-{i}", daemon=True)
            for i in range(jobs)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        self._queue.put((job, future))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(run_job(job))
            except BaseException as error:  # never leave a future unresolved
                future.set_result(Outcome(False, error=f"the thread executor failed: {error!r}"))

    def shutdown(self, cancel: bool = False) -> None:
        uninstall_streams()  # the process gets its real standard streams back
        if cancel:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[1].cancel()
            return  # running tasks cannot be stopped; the daemon threads end with the process
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


def create(config: Any, jobs: int) -> ThreadExecutor:
    return ThreadExecutor(jobs)
