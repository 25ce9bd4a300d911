"""The terminal reporter: a built-in plugin over the reporting hooks.

Execution never prints; this plugin turns build events into lines. Verbosity follows pytest:
``-q`` shows failures and the summary, the default adds one line per task that ran, ``-v``
adds up-to-date tasks and the configuration header.
"""

from __future__ import annotations

import sys
from typing import Any

from cpbuild.hookspecs import hookimpl
from cpbuild.scheduler import FAILED, RAN, SKIPPED, UP_TO_DATE, WOULD_RUN, BuildSummary, TaskReport


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class TerminalReporter:
    def __init__(self) -> None:
        self.stream = sys.stdout

    def _write(self, text: str) -> None:
        stream = getattr(sys.stdout, "original", sys.stdout)  # past per-task capture
        stream.write(text + "\n")
        stream.flush()

    @staticmethod
    def _verbosity(session: Any) -> int:
        return getattr(session.options, "verbose", 0) - getattr(session.options, "quiet", 0)

    @hookimpl
    def cpbuild_build_start(self, session: Any, tasks: list[Any]) -> None:
        if session.mode == "build" and self._verbosity(session) > 0:
            config = session.config
            self._write(
                f"cpbuild: root {config.root}, config {config.display_source()}, "
                f"{_plural(len(tasks), 'task')} selected"
            )

    @hookimpl
    def cpbuild_task_finish(self, session: Any, task: Any, report: TaskReport) -> None:
        verbosity = self._verbosity(session)
        if session.mode == "dry-run":
            if report.outcome == WOULD_RUN:
                self._write(f"would run   {task.name}: {'; '.join(report.reasons)}")
            elif report.outcome == UP_TO_DATE:
                self._write(f"up to date  {task.name}")
            else:
                self._write(f"{report.outcome:<11} {task.name}: {'; '.join(report.reasons)}")
            return
        if session.mode != "build":
            return
        if report.outcome == RAN and verbosity >= 0:
            why = f"  [{'; '.join(report.reasons)}]" if verbosity > 0 else ""
            self._write(f"ran         {task.name} ({report.duration:.2f}s){why}")
        elif report.outcome == FAILED:
            self._write(f"FAILED      {task.name}")
        elif report.outcome == SKIPPED and verbosity >= 0:
            self._write(f"skipped     {task.name} ({'; '.join(report.reasons)})")
        elif report.outcome == UP_TO_DATE and verbosity > 0:
            self._write(f"up to date  {task.name}")

    @hookimpl
    def cpbuild_build_finish(self, session: Any, summary: BuildSummary) -> None:
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
        return f"cpbuild: {', '.join(parts) or 'nothing to do'} in {took}"

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
