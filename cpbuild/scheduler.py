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

import gc
import heapq
import os
import queue
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cpbuild.errors import ExitCode
from cpbuild.model import Record, Task
from cpbuild.rebuilder import Decision, TaskKeyError

if TYPE_CHECKING:
    from concurrent.futures import Future

    from cpbuild.runner import Outcome

RAN = "ran"
UP_TO_DATE = "up-to-date"
FAILED = "failed"
SKIPPED = "skipped"
WOULD_RUN = "would-run"

#: Finished tasks wait at most this long to be recorded: one transaction for all the tasks that
#: finish within it (a transaction per tiny task cost more than the task). A cpbuild killed
#: with SIGKILL loses at most this much finished work; Ctrl-C and errors lose none.
RECORD_EVERY = 0.1
#: How often the queue of finished futures is looked at while an executor that is polled (the
#: process executor) and one with threads of its own (prefix, thread) both have tasks running.
POLL_STEP = 0.005
#: Products of one folder stat'ed one by one before the folder is listed (see _stat_before).
STAT_BEFORE_LISTING = 16


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
    attempts: int = 1


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
    probe: bool = False  # decide only, silently; stop at the first task that would run


class WouldRun(Exception):
    """A probe found a task that must run (the graph cache cannot answer alone)."""


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
        self._executors: dict[str, Any] = session.executors  # also those started before collection
        self._attempts: dict[str, int] = {}
        self._logs: dict[str, list[str]] = {}
        self._stopping = False
        self._submitting: tuple[Task, dict[str, Any]] | None = None
        #: product folders: [products looked at, their names when listed] (see _stat_before)
        self._folders: dict[str, list[Any]] = {}
        self._task_finish = session.hook.cpbuild_task_finish
        self._finished: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
        self._unstored: dict[str, bytes] = {}  # small values that came back, by digest
        self._unrecorded: list[tuple[Record, dict[str, Any], list[Any]]] = []
        self._pending_since = 0.0  # when the oldest value or record still to write came in
        self._blocking: set[str] = set()  # failed or skipped: their downstream is skipped
        self._would_run: set[str] = set()  # dry run: their downstream would run too
        limits = dict(session.config.queues)
        self.queue_limits: dict[str, int] = limits
        self.queue_running: dict[str, int] = {}
        self.parked: dict[str, list[tuple[int, str]]] = {}

    # -- main loop ----------------------------------------------------------------------------

    def run(self) -> BuildSummary:
        start = time.perf_counter()
        hook = self.session.hook
        tasks = [self.graph.tasks[i] for i in self.ids]
        if not self.options.probe:
            hook.cpbuild_build_start(session=self.session, tasks=tasks)
        pending = {i: sum(1 for u in self.graph.upstream[i] if u in self.selected) for i in self.ids}
        order = self.graph.order
        ready = [(order[i], i) for i, n in pending.items() if n == 0]
        heapq.heapify(ready)
        running: dict[Future[Outcome], tuple[Task, Decision, dict[str, Any], Any]] = {}
        interrupted = False

        def settle(task_id: str) -> None:
            for down in self.graph.downstream.get(task_id, ()):
                if down in pending:
                    pending[down] -= 1
                    if pending[down] == 0:
                        heapq.heappush(ready, (order[down], down))

        try:
            while ready or running:
                while ready and len(running) < self.options.jobs + self._ahead():
                    _, task_id = heapq.heappop(ready)
                    task = self.graph.tasks[task_id]
                    queue = task.options.queue
                    if queue in self.queue_limits and self.queue_running.get(queue, 0) >= self.queue_limits[queue]:
                        self.parked.setdefault(queue, []).append((order[task_id], task_id))
                        continue  # waits for its queue without blocking other ready tasks
                    submitted = self._start(task)
                    if submitted is None:
                        settle(task_id)
                    else:
                        running[submitted[0]] = (task, *submitted[1:])
                        if queue is not None:
                            self.queue_running[queue] = self.queue_running.get(queue, 0) + 1
                if running:
                    timeout = None
                    unwritten = bool(self._unrecorded or self._unstored)
                    if unwritten:
                        timeout = max(0.0, self._pending_since + RECORD_EVERY - time.monotonic())
                    done = self._next_finished(timeout)
                    if unwritten and time.monotonic() - self._pending_since >= RECORD_EVERY:
                        self._flush_records()
                    for future in done:
                        task, decision, before, executor = running.pop(future)
                        if future.cancelled():  # queued in its executor when the build stopped
                            self._finish(TaskReport(task, SKIPPED, ["the build stopped after a failure"]))
                            retry = None
                        else:
                            retry = self._complete(task, decision, before, future.result(), executor)
                            if self._stopping:
                                for other in running:
                                    other.cancel()  # only those that have not started
                        if retry is not None:
                            running[retry] = (task, decision, before, executor)
                            continue
                        settle(task.id)
                        queue = task.options.queue
                        if queue is not None:
                            self.queue_running[queue] -= 1
                            for item in self.parked.pop(queue, ()):
                                heapq.heappush(ready, item)
        except BaseException as error:  # Ctrl-C, SIGTERM, or a failure of cpbuild or a plugin
            interrupted = True
            stopped = [(task, before) for task, _, before, _ in running.values()]
            if self._submitting is not None:
                stopped.append(self._submitting)
            # Stop the workers first: a task still running could write its product again.
            for executor in self._executors.values():
                executor.shutdown(cancel=True)
            self._executors.clear()
            for task, before in stopped:
                self._delete_products(task, before)
            if not isinstance(error, KeyboardInterrupt):
                if not self.options.probe:
                    self._end(start, interrupted=True)  # the reporter must stop its display
                raise
        finally:
            self._flush_records()
            if not interrupted and not self.options.dry_run:
                self.rebuilder.files.settle_racy()
            self.state.update_files(self.rebuilder.files.take_dirty())
            if self.rebuilder.code is not None:
                self.state.update_code(self.rebuilder.code.new_cache)
            if not interrupted:
                for executor in self._executors.values():
                    executor.shutdown()
                self._executors.clear()
        return self._end(start, interrupted)

    def _next_finished(self, timeout: float | None) -> list[Future[Outcome]]:
        """The futures that finished: waits for the first (up to ``timeout``), takes the rest.

        Each future puts itself on a queue when it finishes (``_submit``); a queue costs a
        fraction of what ``concurrent.futures.wait`` costs per call, which installs and removes
        a waiter on every running future, and a build of small tasks calls it once per task.
        Executors without threads of their own (``poll``, the process executor) are waited in."""
        pollers = [e for e in self._executors.values() if hasattr(e, "poll")]
        if pollers:
            deadline = None if timeout is None else time.monotonic() + timeout
            alone = len(pollers) == len(self._executors) == 1
            while self._finished.empty():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if alone:
                    pollers[0].poll(left)  # the only executor: wait in it
                else:  # others resolve futures from threads of their own: wait on the queue
                    for executor in pollers:  # in short steps, collecting outcomes in between
                        executor.poll(0)
                    try:
                        step = POLL_STEP if left is None else min(left, POLL_STEP)
                        return self._drain([self._finished.get(timeout=step)])
                    except queue.Empty:
                        pass
                if left == 0.0:
                    break
            timeout = 0  # what finished is in the queue now
        try:
            return self._drain([self._finished.get(timeout=timeout)])
        except queue.Empty:
            return []

    def _drain(self, done: list[Future[Outcome]]) -> list[Future[Outcome]]:
        """``done`` and every other future on the queue of finished ones."""
        while True:
            try:
                done.append(self._finished.get_nowait())
            except queue.Empty:
                return done

    def _end(self, start: float, interrupted: bool) -> BuildSummary:
        reports = [self.reports[i] for i in self.ids if i in self.reports]
        summary = BuildSummary(reports, time.perf_counter() - start, interrupted, self.options.dry_run)
        if not self.options.probe:
            self.session.hook.cpbuild_build_finish(session=self.session, summary=summary)
        return summary

    # -- one task -----------------------------------------------------------------------------

    def _start(self, task: Task) -> tuple[Future[Outcome], Decision, dict[str, Any], Any] | None:
        """Decide about ``task``; settle it now (returns None) or submit it."""
        upstream_ids = self.graph.upstream[task.id]
        if self._blocking and not self._blocking.isdisjoint(upstream_ids):
            up = self.reports[next(u for u in upstream_ids if u in self._blocking)]
            verb = "failed" if up.outcome == FAILED else "was skipped"
            self._finish(TaskReport(task, SKIPPED, [f"upstream {up.task.name} {verb}"]))
            return None
        if self._stopping:
            self._finish(TaskReport(task, SKIPPED, ["the build stopped after a failure"]))
            return None
        if task.skip_reason is not None:
            self._finish(TaskReport(task, SKIPPED, [task.skip_reason]))
            return None
        if self._would_run and not self._would_run.isdisjoint(upstream_ids):
            up = next(u for u in upstream_ids if u in self._would_run)
            self._finish(TaskReport(task, WOULD_RUN, [f"upstream {self.graph.tasks[up].name} would run"]))
            return None
        value_deps = self.graph.value_deps[task.id]
        upstream = (
            {name: (up, self.value_digests.get(up)) for name, up in value_deps.items()} if value_deps else {}
        )
        try:
            parts, problems = self.rebuilder.parts(task, self.graph.args[task.id], upstream)
        except TaskKeyError as error:  # an argument that cannot be pickled, a plugin's extra
            self._finish(TaskReport(task, FAILED, ["its key cannot be computed"], error=f"{task.id}: {error}"))
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
        if self.options.probe:
            raise WouldRun(task.id)
        if self.options.dry_run:
            self._finish(TaskReport(task, WOULD_RUN, decision.reasons))
            return None
        missing = [u for u in self.graph.value_deps[task.id].values() if not self.value_digests.get(u)]
        if missing:
            error = f"the value of {missing[0]} is missing; rebuild it with cpbuild -B {self.graph.tasks[missing[0]].name}"
            self._finish(TaskReport(task, FAILED, decision.reasons, error=error))
            self._stopping = not self.options.keep_going
            return None
        return self._submit(task, decision, attempt=1)

    def _submit(self, task: Task, decision: Decision, attempt: int) -> tuple[Future[Outcome], Decision, dict[str, Any], Any]:
        if not gc.isenabled():  # the CLI turns the collector off for collection; user code needs it
            # What collection made lives as long as the build: frozen, the collector does not
            # scan it again and again (it took a tenth of a build of a thousand small tasks).
            # Not when a caller of cli.main froze objects of its own: main() unfreezes on return.
            if not gc.get_freeze_count():
                gc.freeze()
            gc.enable()
        before = {product: self._stat_before(product) for product in task.product_files}
        executor = self._executor(task)
        session = self.session
        if getattr(executor, "in_process", True):
            session.tasks_ran = True  # task code runs in this process: exit normally
        from cpbuild.runner import Job  # only when a task runs

        values: dict[str, str] = {name: self.value_digests[up] for name, up in self.graph.value_deps[task.id].items()}  # type: ignore[misc]
        job = Job(
            task.id,
            task.function,
            self.graph.args[task.id],
            values,
            session.serializer,
            session.hasher,
            self.storage,
            capture=self._capture(task),
            timeout=task.options.timeout,
            options={"queue": task.options.queue, "job_prefix": self._job_prefix(task), "attempt": attempt},
            inline={d: self._unstored[d] for d in values.values() if d in self._unstored} if self._unstored else {},
            products=task.product_files,
            paths=self._paths(task),
        )
        if attempt == 1:
            session.hook.cpbuild_task_start(session=session, task=task)
        self._attempts[task.id] = attempt
        self._submitting = (task, before)  # an inline executor runs the task inside submit()
        future = executor.submit(job)
        self._submitting = None
        future.add_done_callback(self._finished.put)
        return future, decision, before, executor

    def _stat_before(self, product: str) -> tuple[int, int, int] | None:
        """The stat of a product before its task runs (None: it does not exist), creating its
        folder. After a few products of one folder the folder is listed once, and products
        not in that listing are known not to exist without a stat: looking up a missing name
        waits for the folder's lock, which the workers creating other products there hold."""
        folder, name = os.path.split(product)
        seen = self._folders.get(folder)
        if seen is None:
            os.makedirs(folder, exist_ok=True)
            seen = self._folders[folder] = [0, None]
        if seen[1] is None:
            seen[0] += 1
            if seen[0] <= STAT_BEFORE_LISTING:
                return _stat(product)
            seen[1] = set(os.listdir(folder))
        return _stat(product) if name in seen[1] else None

    def _capture(self, task: Task) -> bool:
        return self.options.capture and task.options.capture

    def _paths(self, task: Task) -> dict[str, Any]:
        """Input and product parameters (absolute path strings; ``Path`` objects in the task)."""
        args, deps = self.graph.args[task.id], self.graph.value_deps[task.id]
        return {p.name: p.value for p in task.params if p.name not in args and p.name not in deps}

    def _job_prefix(self, task: Task) -> list[str] | None:
        if task.options.job_prefix is not None:
            return list(task.options.job_prefix)
        prefix = self.session.config.prefixes.get(task.options.queue or "")
        return prefix.split() if prefix else None

    def _executor(self, task: Task) -> Any:
        return self.session.executor(self.session.executor_for(task), self.options.jobs)

    def _ahead(self) -> int:
        """Tasks to hand over beyond -j: an executor that queues tasks may ask for more, so that
        its workers never wait for the main process between two tasks; it still runs at most -j
        at once."""
        return max((int(getattr(e, "queue_ahead", 0)) for e in self._executors.values()), default=0)

    def _complete(
        self, task: Task, decision: Decision, before: dict[str, Any], outcome: Outcome, executor: Any
    ) -> Future[Outcome] | None:
        """Record a finished task; returns a new future when a failed attempt is retried."""
        attempt = self._attempts.get(task.id, 1)
        error = outcome.error
        products: dict[str, str | None] = {}
        if outcome.ok:
            from cpbuild.runner import local_products

            files = self.rebuilder.files
            hashed = local_products(outcome)
            products = {
                self.graph.rel(path): files.digest(path, fresh=True) if hashed is None or path not in hashed
                else files.accept(path, hashed[path])
                for path in task.product_files
            }
            missing = [rel for rel, product_digest in products.items() if product_digest is None]
            if missing:
                error = f"{task.id} did not create its declared product{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        log = self._logs.setdefault(task.id, [])
        if error is not None or outcome.stdout or outcome.stderr or log:
            log.append(_log_text(attempt, outcome, error))
        if error is not None:
            self._delete_products(task, before)
            if attempt <= task.options.retries and not self._stopping:
                self.session.hook.cpbuild_report_message(
                    session=self.session,
                    message=f"{task.name} failed (attempt {attempt} of {task.options.retries + 1}); retrying",
                    level="warning",
                )
                return self._submit(task, decision, attempt + 1)[0]
        report = TaskReport(
            task,
            RAN if error is None else FAILED,
            decision.reasons,
            outcome.duration,
            error=error,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            executor=getattr(executor, "name", ""),
            worker=outcome.worker,
            attempts=attempt,
        )
        self.session.write_log(task, "".join(log) if log else None)
        if error is not None:
            if attempt > 1:
                report.error = f"{error.rstrip()}\n(failed {attempt} attempts; the log of every attempt: cpbuild --log {task.name})"
            self._stopping = not self.options.keep_going
            self._finish(report)
            return None
        files = self.rebuilder.files
        assert outcome.value_digest is not None and decision.key is not None and decision.parts is not None
        if not (self._unrecorded or self._unstored):
            self._pending_since = time.monotonic()
        if outcome.value is not None:
            self._unstored[outcome.value_digest] = outcome.value  # stored with the records
        record = Record(decision.key, task.id, outcome.value_digest, products, outcome.duration)
        if task.options.cache:
            self._unrecorded.append((record, decision.parts, files.take_dirty()))
        self.value_digests[task.id] = outcome.value_digest
        self._finish(report)
        return None

    def _flush_records(self) -> None:
        """Store the small values that came back and record the finished tasks not recorded
        yet, each in one transaction (see RECORD_EVERY), values first: a record never names a
        value that is not stored. What an interruption leaves pending the ``finally`` of
        ``run`` writes."""
        if self._unstored:
            put_many = getattr(self.storage, "put_many", None)
            if put_many is not None:
                put_many(self._unstored)
            else:
                for digest, data in self._unstored.items():
                    self.storage.put(digest, data)
            self._unstored = {}
        if self._unrecorded:
            self.state.record(self._unrecorded, time.time())
            self._unrecorded = []

    def _delete_products(self, task: Task, before: dict[str, Any]) -> None:
        """Delete the products a failed or interrupted run created or changed."""
        for path, old in before.items():
            if _stat(path) != old:
                try:
                    os.unlink(path)
                except (FileNotFoundError, IsADirectoryError):
                    pass

    def _finish(self, report: TaskReport) -> None:
        self.reports[report.task.id] = report
        if report.outcome in (FAILED, SKIPPED):
            self._blocking.add(report.task.id)
        elif report.outcome == WOULD_RUN:
            self._would_run.add(report.task.id)
        if self.options.probe:
            if report.outcome == FAILED:
                raise WouldRun(report.task.id)  # let a real build report it
            return
        self._task_finish(session=self.session, task=report.task, report=report)


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _log_text(attempt: int, outcome: Outcome, error: str | None) -> str:
    """One attempt's section of a task's log file."""
    status = "ok" if error is None else "failed"
    parts = [f"=== attempt {attempt}: {status} in {outcome.duration:.2f}s on {outcome.worker} ===\n"]
    for label, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr), ("error", error)):
        if text:
            parts.append(f"--- {label} ---\n{text.rstrip()}\n")
    return "".join(parts)


def replay(session: Any, summary: BuildSummary) -> None:
    """Report a probe that found everything up to date as the build it stands for."""
    hook = session.hook
    hook.cpbuild_build_start(session=session, tasks=[r.task for r in summary.reports])
    for report in summary.reports:
        hook.cpbuild_task_finish(session=session, task=report.task, report=report)
    hook.cpbuild_build_finish(session=session, summary=summary)
