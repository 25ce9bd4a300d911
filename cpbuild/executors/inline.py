"""The inline executor: runs each task in the main thread, one at a time.

The default for ``-j 1``: a breakpoint or ``pdb`` in a task works as in plain Python, and no
value crosses a process boundary.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from cpbuild.runner import Job, Outcome, run_job, uninstall_streams


class InlineExecutor:
    name = "inline"

    def submit(self, job: Job) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        future.set_result(run_job(job))
        return future

    def shutdown(self, cancel: bool = False) -> None:
        uninstall_streams()  # the process gets its real standard streams back


def create(config: Any, jobs: int) -> InlineExecutor:
    return InlineExecutor()
