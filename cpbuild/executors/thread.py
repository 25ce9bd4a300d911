"""The thread executor: tasks run in a pool of threads in the main process.

Good for tasks that wait (subprocesses, network, I/O) or release the GIL (numpy); values need no
pickling on the way in. Output is captured per task through thread-local streams; output
written directly to file descriptor 1/2 by child processes is not captured here.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cpbuild.runner import Job, Outcome, run_job


class ThreadExecutor:
    name = "thread"

    def __init__(self, jobs: int) -> None:
        self.capacity = jobs
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cpbuild-worker")

    def submit(self, job: Job) -> Future[Outcome]:
        return self._pool.submit(run_job, job)

    def shutdown(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


def create(config: Any, jobs: int) -> ThreadExecutor:
    return ThreadExecutor(jobs)
