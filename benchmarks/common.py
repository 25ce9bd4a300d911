"""What the benchmark runners (layers.py, parallel.py, watch_latency.py) share.

Each runner is a script run as ``python benchmarks/NAME.py`` (the script's folder is then first
on sys.path), so this module is imported as plain ``common``, not as a package. It keeps in one place the pieces whose behaviour must be
the same in every runner for their numbers to compare: the environment a tool runs in, how a run
is timed and its memory read, how a time budget cuts repetitions short, how durations and tables
are printed, and how results and the measured cpbuild are recorded.

Standard library only, so the runners work before cpbuild itself is installable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"

#: Variables that would make a tool behave unlike on a user's machine: a parent make's flags
#: (e.g. its -j) and ninja's status format. PYTHONDONTWRITEBYTECODE (set on some sandboxes and
#: CI images) makes every Python tool recompile all its modules on every run (and each worker
#: process too), which no user sees; it is removed for all tools alike.
SCRUBBED_ENV = (
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEFILES",
    "NINJA_STATUS",
    "PYTHONDONTWRITEBYTECODE",
)
#: A version number in a tool's ``--version`` output ("python -m pytask, version 0.6.0").
VERSION = re.compile(r"\d+\.\d+[\w.+-]*")


# --------------------------------------------------------------------------------------------
# The tools
# --------------------------------------------------------------------------------------------


def tool_env() -> dict[str, str]:
    """The environment every measured tool runs in: this one less SCRUBBED_ENV.

    Warnings are silenced (PYTHONWARNINGS=ignore) to keep every tool in its quiet mode: a
    dependency's warning is output printed on every run, not part of the tool's work.
    """
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def python_tool(module: str) -> list[str]:
    """Python tools run under this interpreter, not through a (possibly pyenv) shim script.

    A shim would add tens of milliseconds to every run, and could pick another interpreter
    than the one the runner checked the tools are installed in.
    """
    return [sys.executable, "-m", module]


@dataclass
class Tool:
    """A tool in one configuration: its command line, its state, whether it runs here.

    The runners subclass it to add what only they need (the files to generate for it).
    """

    name: str  # row label in the tables
    command: list[str]
    version_command: list[str]
    state: tuple[str, ...]  # glob patterns of the tool's own state, deleted with its products
    unavailable: str | None = None  # why the tool cannot run here, if it cannot
    version: str = ""

    def probe(self) -> None:
        """Find out whether the tool runs here and which version it is (once per run).

        A tool that is missing or broken is marked unavailable with the reason rather than
        stopping the runner, so that the other tools are still measured.
        """
        if self.unavailable:
            return
        try:
            proc = subprocess.run(
                self.version_command, capture_output=True, text=True, timeout=60, env=tool_env()
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.unavailable = f"{self.version_command[0]}: {exc}"
            return
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            last = out.splitlines()[-1] if out else f"exit code {proc.returncode}"
            self.unavailable = f"`{' '.join(self.version_command[-3:])}` failed: {last}"
        else:
            first = out.splitlines()[0] if out else "?"
            match = VERSION.search(first)
            self.version = match.group(0) if match else first

    def clean(self, folder: Path, products: Iterable[str] = ()) -> None:
        """Delete ``out/``, the given products (paths relative to ``folder``) and the tool's
        state, so that the next build is a full build from clean. Bytecode caches are kept,
        as they are in a user's project."""
        shutil.rmtree(folder / "out", ignore_errors=True)
        for rel in products:
            (folder / rel).unlink(missing_ok=True)
        for pattern in self.state:
            for path in folder.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def relocate(folder: Path) -> None:
    """Give ``folder`` (same path, same content) new directories on disk.

    Where a new directory lands on the disk decides how fast files can be created in it: on the
    machine of benchmarks/README.md, 1,000 files took from 11 ms to 190 ms to create in sibling
    folders, each folder keeping its speed for minutes. A project folder made once per tool
    would give one tool a fast place for all its builds and another a slow one; a copy per
    build draws the place afresh for every build of every tool.
    """
    copy = folder.with_name(folder.name + ".relocated")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy, symlinks=True)
    shutil.rmtree(folder)
    copy.rename(folder)


# --------------------------------------------------------------------------------------------
# Running and measuring
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed build."""

    seconds: float
    maxrss_mb: float
    returncode: int
    timed_out: bool  # killed because the budget was spent


def run_timed(command: Sequence[str], cwd: Path, log: Path, timeout: float | None) -> Run:
    """Run one build; wall time plus peak RSS from wait4 (no /usr/bin/time in the timing).

    wait4's ru_maxrss is the larger of the process's own peak and that of the largest
    descendant it waited for (what /usr/bin/time -v reports), in KiB on Linux. The process gets
    its own session so that a budget timeout can kill its whole process group (worker processes
    included), and nothing else.
    """
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=tool_env(),
            start_new_session=True,
        )
        killed = threading.Event()
        killer = None
        if timeout is not None:
            killer = threading.Timer(max(timeout, 0.0), _kill_group, (proc.pid, killed))
            killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if killer is not None:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    divisor = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return Run(seconds, usage.ru_maxrss / divisor, proc.returncode, killed.is_set())


def _kill_group(pid: int, killed: threading.Event) -> None:
    """Kill the build's process group (its own session: see run_timed), and only that."""
    killed.set()
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log_tail(log: Path, lines: int = 12) -> str:
    """The end of a build's output, where a failing tool says why, for the failure note."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class Outcome(Protocol):
    """The part of a runner's result cell that says how its repetitions ended."""

    status: str  # ok | skipped | not available | failed | timeout
    note: str
    error: str


class Repetitions:
    """The repeated builds of one cell (one tool on one workload) within its time budget.

    Iterating gives the repetition numbers. A repetition is not started when the previous one
    suggests it would not fit, and a build still running when the budget is spent is killed:
    one slow tool cannot hold the whole run hostage, and the cell still reports the runs that
    finished (its note says how many). A build that fails, or whose products are wrong, ends
    the cell as failed: no time is reported for a tool that did not do the work.

    The budget counts the cell's own builds (cleaning included), not the wall time since the
    cell began: cells may take turns (``interleave``) without spending each other's budget.
    """

    def __init__(
        self, cell: Outcome, tool: Tool, folder: Path, seconds: float, repeats: int
    ) -> None:
        self.cell = cell
        self.tool = tool
        self.folder = folder
        self.log = folder / "build.log"
        self.seconds = seconds
        self.repeats = repeats
        self.rep = 0
        self.spent = 0.0  # seconds of this cell's builds so far
        self.last = 0.0  # the previous repetition's, which predicts the next one's

    def __iter__(self) -> Iterator[int]:
        for rep in range(self.repeats):
            if rep > 0 and self.spent + self.last > self.seconds:
                self.cell.note = self._cut_note(rep)
                return
            self.rep = rep
            self.last = 0.0
            yield rep

    def full_build(
        self, check: Callable[[], str | None], products: Iterable[str] = (), what: str = "",
        fresh_folder: bool = False,
    ) -> Run | None:
        """Clean (``Tool.clean``) and one timed full build; None when the repetitions stop.

        The first repetition's products are checked (``check`` says what is wrong, or None), so
        that a tool which silently skipped the work cannot look fast. With ``fresh_folder`` the
        project moves to new directories first (``relocate``; counted in the budget, not in
        the build's time).
        """
        started = time.monotonic()
        self.tool.clean(self.folder, products)
        if fresh_folder:
            relocate(self.folder)
        run = run_timed(self.tool.command, self.folder, self.log, self._left(started))
        self._spend(started)
        if self._stopped(run, f"full build > {self.seconds:.0f} s (budget)", what):
            return None
        if self.rep == 0:
            problem = check()
            if problem:
                self._fail(problem)
                return None
        return run

    def rebuild(self, timeout_note: str, what: str) -> Run | None:
        """One timed build on top of the last (a no-op); None when the repetitions stop."""
        started = time.monotonic()
        run = run_timed(self.tool.command, self.folder, self.log, self._left(started))
        self._spend(started)
        return None if self._stopped(run, timeout_note, what) else run

    def _left(self, now: float) -> float:
        return self.seconds - self.spent - (time.monotonic() - now)

    def _spend(self, started: float) -> None:
        seconds = time.monotonic() - started
        self.spent += seconds
        self.last += seconds

    def _cut_note(self, rep: int) -> str:
        return f"{rep} of {self.repeats} runs (budget {self.seconds:.0f} s)"

    def _fail(self, problem: str) -> None:
        self.cell.status = "failed"
        self.cell.error = f"{problem}\n{log_tail(self.log)}"

    def _stopped(self, run: Run, timeout_note: str, what: str) -> bool:
        """Whether the repetitions stop after ``run``, with the reason recorded in the cell.

        Killed on the first repetition, there is nothing to report: the cell is a timeout
        (``timeout_note``); on a later one the cell keeps the runs that finished. A non-zero
        exit code fails the cell ("``what`` exit code N" and the end of the build's output).
        """
        if run.timed_out:
            if self.rep == 0:
                self.cell.status = "timeout"
                self.cell.note = timeout_note
            else:
                self.cell.note = self._cut_note(self.rep)
            return True
        if run.returncode != 0:
            code = f"exit code {run.returncode}"
            self._fail(f"{what} {code}" if what else code)
            return True
        return False


def interleave(steps: Iterable[Iterator[object]]) -> None:
    """Run several generators a step at a time, in turns, until all are exhausted.

    Each cell's generator yields after each repetition: the tools take turns, so that a drift
    of the machine during the run (another tenant's load, the file system's journal) affects
    every tool alike instead of whichever happened to run then."""
    active = list(steps)
    while active:
        for step in list(active):
            if next(step, StopIteration) is StopIteration:
                active.remove(step)


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no runs: a missing number rather than a made-up one."""
    return statistics.median(values) if values else None


def rounded(values: Iterable[float], digits: int) -> list[float]:
    """Values rounded for the JSON file: more digits than the clock's resolution are noise."""
    return [round(x, digits) for x in values]


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def progress(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def fmt_seconds(seconds: float | None) -> str:
    """A duration with about three significant digits, in ms below one second."""
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 100:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s"


def table(header: list[str], body: list[list[str]]) -> str:
    """A plain-text table: left-aligned columns two spaces apart, a dashed line under the header.

    Plain text so that it reads the same in a terminal, a log file and a commit message.
    """
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(col.ljust(w) for col, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notes_and_versions(notes: list[str], versions: Iterable[str]) -> list[str]:
    """The report's closing lines: the notes (if any) and the versions measured."""
    out: list[str] = []
    if notes:
        out += ["", "Notes:", *(f"  {note}" for note in notes)]
    return [*out, "", "Versions: " + "; ".join(versions)]


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


def load_average() -> list[float] | None:
    """The load average, recorded because other work on the machine skews every number."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(executable: bool = False) -> dict[str, object]:
    """The machine the numbers belong to: they compare only with numbers from the same one."""
    info: dict[str, object] = {"python": sys.version.split()[0]}
    if executable:
        info["executable"] = sys.executable
    info.update(
        {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": load_average(),
        }
    )
    return info


def git_describe(folder: Path) -> str | None:
    """The commit of the checkout ``folder`` is in ("-dirty" with local edits), or None."""
    git = shutil.which("git")
    if not git:
        return None
    rev = subprocess.run(
        [git, "-C", str(folder), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (rev.stdout.strip() or None) if rev.returncode == 0 else None


def cpbuild_source() -> dict[str, str]:
    """Which cpbuild was measured: the imported package's folder and, if it is a git checkout,
    its commit (with "-dirty" for uncommitted changes), so a result can be traced to the code."""
    info: dict[str, str] = {}
    proc = subprocess.run(
        [sys.executable, "-c", "import cpbuild; print(cpbuild.__file__)"],
        capture_output=True,
        text=True,
        env=tool_env(),
        check=False,
    )
    if proc.returncode != 0:
        return info
    package = Path(proc.stdout.strip()).parent
    info["package"] = str(package)
    commit = git_describe(package)
    if commit is not None:
        info["commit"] = commit
    return info


def results_path(stem: str) -> Path:
    """The default results file: one per benchmark and day, replaced by a later run that day."""
    return RESULTS_DIR / f"{stem}-{datetime.date.today().isoformat()}.json"


def write_json(path: Path, payload: Mapping[str, object]) -> None:
    """Write next to the target and rename, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Command line and work folders
# --------------------------------------------------------------------------------------------


def parse_names(allowed: tuple[str, ...], what: str = "name") -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated subset of ``allowed`` (tools, workloads)."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {', '.join(unknown) or text!r}; "
                f"choose from {', '.join(allowed)}"
            )
        return names

    return parse


def add_budget_option(parser: argparse.ArgumentParser, default: float, per: str) -> None:
    """--budget: the seconds one cell may take (see Repetitions); a cell is one tool on one
    ``per`` ("size", "workload")."""
    parser.add_argument(
        "--budget",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"time allowed per tool per {per}; further repetitions are skipped and a build "
        f"still running is killed when it is spent (default: {default:.0f})",
    )


def add_output_options(parser: argparse.ArgumentParser, results_stem: str) -> None:
    """--workdir, --keep and --json, worded alike in layers.py and parallel.py."""
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where workloads are generated (default: a fresh temporary folder)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated workloads (to inspect or rerun)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"where to write the results (default: benchmarks/results/{results_stem}-YYYY-MM-DD.json)",
    )


@contextmanager
def work_folder(
    prefix: str, parent: Path | None, keep: bool, announce: bool = True
) -> Iterator[Path]:
    """A fresh folder for the generated workloads, deleted at the end unless ``keep``.

    Fresh so that no state of an earlier run (a tool's database, products) makes a build look
    faster; ``announce`` says on stderr where it is, for inspecting a run in progress.
    """
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if announce:
        progress(f"workloads in {base}")
    try:
        yield base
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        elif announce:
            progress(f"workloads kept in {base}")
