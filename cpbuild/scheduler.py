"""The scheduler: runs the selected tasks in dependency order (DESIGN §6).

In-degree counters and a ready heap (collection order breaks ties, so output is stable): a task
becomes ready when its last upstream task settles, then the rebuilder decides whether it runs.
Up-to-date tasks are settled at once without loading their values. Stale tasks go to their
executor within ``-j``. Only this main loop writes the state and the object store.

Failures: no new task starts after the first failure unless ``--keep-going``; a failed task's
products that it created or modified are deleted (make's ``.DELETE_ON_ERROR``) and nothing is
recorded for it; tasks downstream of a failure are skipped.
"""

from __future__ import annotations

import heapq
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpbuild.errors import ExitCode
from cpbuild.model import Task
from cpbuild.rebuilder import Decision
from cpbuild.runner import Job, Outcome
from cpbuild.state import Record

RAN = "ran"
UP_TO_DATE = "up-to-date"
FAILED = "failed"
SKIPPED = "skipped"
WOULD_RUN = "would-run"


@dataclass
class TaskReport:
    """How one task was settled in a build."""

    task: Task
    outcome: str
    reasons: list[str] = field(default_factory=list)
    duration: float = 0.0
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    executor: str = ""
    worker: str = ""


@dataclass
class BuildSummary:
    reports: list[TaskReport]
    duration: float
    interrupted: bool = False
    dry_run: bool = False

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.reports if r.outcome == outcome)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.count(FAILED):
            return ExitCode.TASKS_FAILED
        return ExitCode.OK


@dataclass
class BuildOptions:
    jobs: int = 1
    keep_going: bool = False
    dry_run: bool = False
    force: bool = False
    capture: bool = True


class Scheduler:
    """One build of a selection of tasks."""

    def __init__(self, session: Any, ids: list[str], options: BuildOptions) -> None:
        self.session = session
        self.graph = session.graph
        self.rebuilder = session.rebuilder
        self.state = session.state
        self.storage = session.storage
        self.ids = ids
        self.options = options
        self.selected = set(ids)
        self.value_digests: dict[str, str | None] = {}
        self.reports: dict[str, TaskReport] = {}
        self.consumers = {
            up for i in ids for up in self.graph.value_deps[i].values() if up in self.selected
        }
        self._executors: dict[str, Any] = {}
        self._stopping = False

    # -- main loop ----------------------------------------------------------------------------

    def run(self) -> BuildSummary:
        start = time.perf_counter()
        hook = self.session.hook
        tasks = [self.graph.tasks[i] for i in self.ids]
        hook.cpbuild_build_start(session=self.session, tasks=tasks)
        pending = {i: sum(1 for u in self.graph.upstream[i] if u in self.selected) for i in self.ids}
        order = self.graph.order
        ready = [(order[i], i) for i, n in pending.items() if n == 0]
        heapq.heapify(ready)
        running: dict[Future[Outcome], tuple[Task, Decision, dict[Path, Any], Any]] = {}
        interrupted = False

        def settle(task_id: str) -> None:
            for down in self.graph.downstream.get(task_id, ()):
                if down in pending:
                    pending[down] -= 1
                    if pending[down] == 0:
                        heapq.heappush(ready, (order[down], down))

        try:
            while ready or running:
                while ready and len(running) < self.options.jobs:
                    _, task_id = heapq.heappop(ready)
                    task = self.graph.tasks[task_id]
                    if self._stopping:
                        self._finish(TaskReport(task, SKIPPED, ["the build stopped after a failure"]))
                        settle(task_id)
                        continue
                    submitted = self._start(task)
                    if submitted is None:
                        settle(task_id)
                    else:
                        running[submitted[0]] = (task, *submitted[1:])
                if running:
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in done:
                        task, decision, before, executor = running.pop(future)
                        self._complete(task, decision, before, future.result(), executor)
                        settle(task.id)
        except KeyboardInterrupt:
            interrupted = True
            for task, _, before, _ in running.values():
                self._delete_products(task, before)
            for executor in self._executors.values():
                executor.shutdown(cancel=True)
        finally:
            self.state.update_files(self.rebuilder.files.take_dirty())
            if not interrupted:
                for executor in self._executors.values():
                    executor.shutdown()
        reports = [self.reports[i] for i in self.ids if i in self.reports]
        summary = BuildSummary(reports, time.perf_counter() - start, interrupted, self.options.dry_run)
        hook.cpbuild_build_finish(session=self.session, summary=summary)
        return summary

    # -- one task -----------------------------------------------------------------------------

    def _start(self, task: Task) -> tuple[Future[Outcome], Decision, dict[Path, Any], Any] | None:
        """Decide about ``task``; settle it now (returns None) or submit it."""
        blocked = [u for u in self.graph.upstream[task.id] if u in self.selected and self.reports[u].outcome in (FAILED, SKIPPED)]
        if blocked:
            up = self.reports[blocked[0]]
            verb = "failed" if up.outcome == FAILED else "was skipped"
            self._finish(TaskReport(task, SKIPPED, [f"upstream {up.task.name} {verb}"]))
            return None
        if task.skip_reason is not None:
            self._finish(TaskReport(task, SKIPPED, [task.skip_reason]))
            return None
        would_run = [u for u in self.graph.upstream[task.id] if u in self.selected and self.reports[u].outcome == WOULD_RUN]
        if would_run:
            reason = f"upstream {self.graph.tasks[would_run[0]].name} would run"
            self._finish(TaskReport(task, WOULD_RUN, [reason]))
            return None
        upstream = {
            name: (up, self.value_digests.get(up)) for name, up in self.graph.value_deps[task.id].items()
        }
        try:
            parts, problems = self.rebuilder.parts(task, self.graph.args[task.id], upstream)
        except Exception as error:  # an argument that cannot be pickled, a plugin's extra
            self._finish(TaskReport(task, FAILED, ["its key cannot be computed"], error=f"{type(error).__name__}: {error}"))
            self._stopping = not self.options.keep_going
            return None
        if problems:
            self._finish(TaskReport(task, FAILED, problems, error="; ".join(problems)))
            self._stopping = not self.options.keep_going
            return None
        decision = self.rebuilder.decide(
            task, parts, self.options.force, task.id in self.consumers, self.storage
        )
        if not decision.run:
            assert decision.record is not None
            if self.state.latest.get(task.id) is not decision.record and not self.options.dry_run:
                self.state.set_latest(decision.record)
            self.value_digests[task.id] = decision.record.value
            self._finish(TaskReport(task, UP_TO_DATE, decision.reasons))
            return None
        if self.options.dry_run:
            self._finish(TaskReport(task, WOULD_RUN, decision.reasons))
            return None
        try:
            kwargs = self._arguments(task)
        except LookupError as error:
            self._finish(TaskReport(task, FAILED, decision.reasons, error=str(error)))
            self._stopping = not self.options.keep_going
            return None
        before = {}
        for product in task.products:
            product.parent.mkdir(parents=True, exist_ok=True)
            before[product] = _stat(product)
        executor = self._executor(task)
        job = Job(task.id, task.function, kwargs, self.session.serializer, self._capture(task))
        self.session.hook.cpbuild_task_start(session=self.session, task=task)
        return executor.submit(job), decision, before, executor

    def _capture(self, task: Task) -> bool:
        return self.options.capture and task.options.capture

    def _arguments(self, task: Task) -> dict[str, Any]:
        kwargs = dict(self.graph.args[task.id])
        for param in task.params:
            if param.name in kwargs or param.name in self.graph.value_deps[task.id]:
                continue
            kwargs[param.name] = param.value  # inputs and products, absolute
        serializer = self.session.serializer
        for name, up in self.graph.value_deps[task.id].items():
            digest = self.value_digests.get(up)
            data = self.storage.get(digest) if digest else None
            if data is None:
                raise LookupError(
                    f"the value of {up} is missing from the store; rebuild it with "
                    f"cpbuild -B {self.graph.tasks[up].name}"
                )
            kwargs[name] = serializer.loads(data)
        return kwargs

    def _executor(self, task: Task) -> Any:
        name = task.options.executor or self.session.executor_name
        executor = self._executors.get(name)
        if executor is None:
            executor = self._executors[name] = self.session.make_executor(name, self.options.jobs)
        return executor

    def _complete(
        self, task: Task, decision: Decision, before: dict[Path, Any], outcome: Outcome, executor: Any
    ) -> None:
        report = TaskReport(
            task,
            RAN,
            decision.reasons,
            outcome.duration,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            executor=getattr(executor, "name", ""),
            worker=outcome.worker,
        )
        error = outcome.error
        if outcome.ok:
            missing = [self.graph.rel(p) for p in task.products if not p.is_file()]
            if missing:
                error = f"{task.id} did not create its declared product{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        if error is not None:
            self._delete_products(task, before)
            report.outcome, report.error = FAILED, error
            self._stopping = not self.options.keep_going
            self._finish(report)
            return
        files = self.rebuilder.files
        products = {}
        for path in task.products:
            products[self.graph.rel(path)] = files.digest(str(path), fresh=True)
        assert outcome.value is not None and decision.key is not None and decision.parts is not None
        value_digest = self.session.hasher.bytes_digest(outcome.value)
        self.storage.put(value_digest, outcome.value)
        record = Record(decision.key, task.id, value_digest, products, outcome.duration)
        if task.options.cache:
            self.state.record(record, decision.parts, files.take_dirty(), time.time())
        self.value_digests[task.id] = value_digest
        self._finish(report)

    def _delete_products(self, task: Task, before: dict[Path, Any]) -> None:
        """Delete the products a failed or interrupted run created or changed."""
        for path, old in before.items():
            if _stat(path) != old:
                try:
                    os.unlink(path)
                except (FileNotFoundError, IsADirectoryError):
                    pass

    def _finish(self, report: TaskReport) -> None:
        self.reports[report.task.id] = report
        self.session.hook.cpbuild_task_finish(session=self.session, task=report.task, report=report)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
