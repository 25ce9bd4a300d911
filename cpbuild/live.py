"""The live display on a terminal: a progress bar, the running tasks, an ETA.

Built on rich (a well-kept library for exactly this; hand-written cursor control breaks on
resizes and odd terminals). It is imported only when output goes to a terminal and the build
actually starts, so a no-op or a CI run never pays for the import.

The ETA is the sum of the remaining tasks' durations from their last recorded builds (tasks
never built count as the mean of the known ones), divided by the number of jobs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


class LiveDisplay:
    def __init__(self, stream: Any, total: int, expected: dict[str, float], jobs: int) -> None:
        self.console = Console(file=stream, highlight=False)
        self.expected = expected
        self.jobs = max(1, jobs)
        known = [d for d in expected.values() if d > 0]
        self.default_duration = sum(known) / len(known) if known else 0.0
        self.remaining = dict(expected)
        self.running: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()  # rich redraws from its own thread
        self.progress = Progress(
            TextColumn("[bold]cpbuild"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.bar = self.progress.add_task("build", total=total, eta="")
        self.live = Live(
            self._render(), console=self.console, refresh_per_second=8, transient=True,
            redirect_stdout=False, redirect_stderr=False, get_renderable=self._render,
        )
        self.live.start()

    def _eta(self, running: list[tuple[str, tuple[str, float]]], remaining: list[float]) -> str:
        seconds = sum(d if d > 0 else self.default_duration for d in remaining) / self.jobs
        now = time.monotonic()
        # Time already spent on running tasks counts against their expected durations.
        for task_id, (_, started) in running:
            seconds -= min(now - started, self.expected.get(task_id, 0.0)) / self.jobs
        return f"ETA {seconds:.0f}s" if seconds >= 1 else ""

    def _render(self) -> Group:
        with self._lock:
            running = list(self.running.items())
            remaining = list(self.remaining.values())
        self.progress.update(self.bar, eta=self._eta(running, remaining))
        table = Table.grid(padding=(0, 1))
        now = time.monotonic()
        for name, started in sorted((entry for _, entry in running), key=lambda item: item[1]):
            table.add_row(Text("  running", style="cyan"), Text(name), Text(f"{now - started:.1f}s", style="dim"))
        return Group(self.progress, table)

    def start_task(self, task_id: str, name: str) -> None:
        with self._lock:
            self.running[task_id] = (name, time.monotonic())

    def finish_task(self, task_id: str, line: str | None) -> None:
        with self._lock:
            self.running.pop(task_id, None)
            self.remaining.pop(task_id, None)
        self.progress.advance(self.bar)
        if line:
            self.console.print(Text(line))

    def stop(self) -> None:
        self.live.stop()
