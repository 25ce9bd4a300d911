"""The terminal reporter: a built-in plugin over the reporting hooks.

Execution never prints; this plugin turns build events into lines. Verbosity follows pytest:
``-q`` shows failures and the summary, the default adds one line per task that ran, ``-v``
adds up-to-date tasks, task starts and the configuration header.

On a terminal (and not under ``CI=true``) a live display shows a progress bar, the running
tasks and an ETA while tasks run (``cpbuild.live``, imported only then); elsewhere output is
one plain line per event, which logs and CI systems keep readable.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from cpbuild.hookspecs import hookimpl
from cpbuild.scheduler import FAILED, RAN, SKIPPED, UP_TO_DATE, WOULD_RUN, BuildSummary, TaskReport


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _stdout() -> Any:
    return getattr(sys.stdout, "original", sys.stdout)  # past per-task capture


class TerminalReporter:
    def __init__(self) -> None:
        self.live: Any = None
        self.want_live = False
        self.total = 0
        self.done = 0

    def _write(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
            return
        stream = _stdout()
        stream.write(text + "\n")
        stream.flush()

    def _want_live(self, session: Any) -> bool:
        stream = _stdout()
        return (
            session.mode == "build"
            and self._verbosity(session) >= 0
            and not getattr(session.options, "no_capture", False)  # -s: tasks talk to the terminal
            and os.environ.get("CI", "").lower() not in ("true", "1")
            and os.environ.get("TERM") != "dumb"
            and hasattr(stream, "isatty")
            and stream.isatty()
        )

    @staticmethod
    def _verbosity(session: Any) -> int:
        return getattr(session.options, "verbose", 0) - getattr(session.options, "quiet", 0)

    @hookimpl
    def cpbuild_task_start(self, session: Any, task: Any) -> None:
        if self.live is None and self.want_live:
            self._start_live(session)
        if self.live is not None:
            self.live.start_task(task.id, task.name)
        elif session.mode == "build" and self._verbosity(session) > 0:
            self._write(f"start       {task.name}")

    def _start_live(self, session: Any) -> None:
        """Start the display at the first task that actually runs: a no-op never shows it."""
        from cpbuild.live import LiveDisplay

        latest = session.state.latest if session.state else {}
        pending = {i: (latest[i].duration if i in latest else 0.0) for i in self.pending}
        self.live = LiveDisplay(_stdout(), self.total, pending, session.config.jobs)
        for _ in range(self.done):
            self.live.progress.advance(self.live.bar)

    @hookimpl
    def cpbuild_build_start(self, session: Any, tasks: list[Any]) -> None:
        self.total, self.done, self.live = len(tasks), 0, None
        self.pending = {t.id for t in tasks}
        self.want_live = self._want_live(session)  # decided once: it looks at the terminal
        if session.mode == "build" and self._verbosity(session) > 0:
            config = session.config
            self._write(
                f"cpbuild: root {config.root}, config {config.display_source()}, "
                f"{_plural(len(tasks), 'task')} selected"
            )

    @hookimpl
    def cpbuild_task_finish(self, session: Any, task: Any, report: TaskReport) -> None:
        self.done += 1
        self.pending.discard(task.id)
        line = self._task_line(session, task, report)
        if self.live is not None:
            self.live.finish_task(task.id, line)
        elif line:
            self._write(line)

    def _task_line(self, session: Any, task: Any, report: TaskReport) -> str | None:
        verbosity = self._verbosity(session)
        if session.mode == "dry-run":
            if report.outcome == WOULD_RUN:
                return f"would run   {task.name}: {'; '.join(report.reasons)}"
            if report.outcome == UP_TO_DATE:
                return f"up to date  {task.name}"
            return f"{report.outcome:<11} {task.name}: {'; '.join(report.reasons)}"
        if session.mode != "build":
            return None
        if report.outcome == RAN and verbosity >= 0:
            why = f"  [{'; '.join(report.reasons)}]" if verbosity > 0 else ""
            return f"ran         {task.name} ({report.duration:.2f}s){why}"
        if report.outcome == FAILED:
            return f"FAILED      {task.name}"
        if report.outcome == SKIPPED and verbosity >= 0:
            return f"skipped     {task.name} ({'; '.join(report.reasons)})"
        if report.outcome == UP_TO_DATE and verbosity > 0:
            return f"up to date  {task.name}"
        return None

    @hookimpl
    def cpbuild_build_finish(self, session: Any, summary: BuildSummary) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if session.mode not in ("build", "dry-run"):
            return
        failed = [r for r in summary.reports if r.outcome == FAILED]
        for report in failed:
            self._failure(report)
        if self._verbosity(session) < -1:
            return
        self._write(self.summary_line(summary))

    def _failure(self, report: TaskReport) -> None:
        title = f" FAILED {report.task.id} "
        self._write(f"\n{title:_^79}")
        if report.error:
            self._write(report.error.rstrip())
        for label, text in (("stdout", report.stdout), ("stderr", report.stderr)):
            if text:
                self._write(f"{' captured ' + label + ' ':-^79}")
                self._write(text.rstrip())

    @staticmethod
    def summary_line(summary: BuildSummary) -> str:
        total = len(summary.reports)
        took = f"{summary.duration:.2f}s"
        if summary.interrupted:
            return f"cpbuild: interrupted after {took}; {summary.count(RAN)} ran, nothing half-done recorded"
        if summary.dry_run:
            n = summary.count(WOULD_RUN)
            if n == 0 and not summary.count(FAILED):
                return f"cpbuild: all {_plural(total, 'task')} up to date; nothing would run"
            return f"cpbuild: {n} of {_plural(total, 'task')} would run"
        if total and summary.count(UP_TO_DATE) == total:
            return f"cpbuild: all {_plural(total, 'task')} up to date ({took})"
        parts = []
        for outcome, label in ((FAILED, "failed"), (RAN, "ran"), (UP_TO_DATE, "up to date"), (SKIPPED, "skipped")):
            n = summary.count(outcome)
            if n:
                parts.append(f"{n} {label}")
        line = f"cpbuild: {', '.join(parts) or 'nothing to do'} in {took}"
        ran = sorted((r for r in summary.reports if r.outcome in (RAN, FAILED)), key=lambda r: -r.duration)
        if len(ran) > 1 and ran[0].duration >= 0.1:
            slowest = ", ".join(f"{r.task.name} {r.duration:.2f}s" for r in ran[:3])
            line += f"; slowest: {slowest}"
        return line

    @hookimpl
    def cpbuild_report_message(self, session: Any, message: str, level: str) -> None:
        prefix = {"warning": "cpbuild: warning: ", "error": "cpbuild: error: "}.get(level, "cpbuild: ")
        target = sys.stderr if level in ("warning", "error") else None
        if target is not None:
            stream = getattr(target, "original", target)
            stream.write(prefix + message + "\n")
            stream.flush()
        else:
            self._write(prefix + message)
