"""Measure ``cpbuild --watch``: how soon an edit reruns its task, and what watching costs idle.

The runner generates a project of N file tasks in modules of ten (``task_mod{k}.py``), starts
``python -m cpbuild --watch`` on it, and edits one input (``inputs/edited.txt``) E times. The
edited input's task is trivial (it copies its input into its product) and appends
``start <content> <time.time()>`` and ``end <content> <time.time()>`` to a timing file outside
the project, so the runner can measure, per edit:

* **write -> start**: from the moment before the runner writes the input to the moment the task
  function starts (file-system event, debounce, re-import of the task modules, keys, scheduling);
* **write -> end**: the same to the end of the trivial task.

Each edit waits for the watcher to be idle again (its "cpbuild: watching" line) before the next,
so every edit is one cycle. Afterwards the runner reads the watcher's CPU time (utime + stime from
``/proc/PID/stat``) before and after an idle period and reports the share of one core.

Targets (issue 4): median write -> start <= 100 ms (including the 50 ms debounce), median
write -> end of a trivial task <= 150 ms, idle CPU < 1% of one core over 30 s.

Standard library only. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import common

TARGET_START_MS = 100.0
TARGET_END_MS = 150.0
TARGET_IDLE_CPU_PERCENT = 1.0

EDITED_TASK = '''
import time
from pathlib import Path
from typing import Annotated

from cpbuild import Product

TIMES = Path({times!r})


def task_edited(data: Path = Path("inputs/edited.txt"),
                out: Annotated[Path, Product] = Path("out/edited.txt")) -> None:
    text = data.read_text().strip()
    with TIMES.open("a") as log:
        log.write(f"start {{text}} {{time.time()!r}}\\n")
    out.write_text(text)
    with TIMES.open("a") as log:
        log.write(f"end {{text}} {{time.time()!r}}\\n")
'''

OTHER_TASK = '''

@task(id="{i}", kwargs={{"src": Path("inputs/{i}.txt"), "out": Path("out/{i}.txt")}})
def task_copy{k}(src: Path, out: Annotated[Path, Product]) -> None:
    out.write_text(src.read_text())
'''


def write_project(folder: Path, tasks: int, times: Path) -> None:
    """``tasks`` file tasks: the edited one in ``task_edited.py``, the others ten per module."""
    (folder / "inputs").mkdir(parents=True)
    (folder / "cpbuild.toml").write_text("jobs = 1\n")
    (folder / "task_edited.py").write_text(EDITED_TASK.format(times=str(times)))
    (folder / "inputs" / "edited.txt").write_text("initial\n")
    others = list(range(1, tasks))
    for k in range(0, len(others), 10):
        chunk = others[k : k + 10]
        body = ["from pathlib import Path", "from typing import Annotated", "",
                "from cpbuild import Product, task", ""]
        for i in chunk:
            (folder / "inputs" / f"{i}.txt").write_text(f"source {i}\n")
            body.append(OTHER_TASK.format(i=i, k=k // 10))
        (folder / f"task_mod{k // 10}.py").write_text("\n".join(body))


class Watcher:
    """The ``cpbuild --watch`` process and its output lines."""

    def __init__(self, folder: Path, polling: bool, jobs: int) -> None:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if polling:
            env["CPBUILD_WATCH_POLL"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cpbuild", "--watch", "-j", str(jobs)],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def idle_count(self) -> int:
        return sum(1 for line in self.lines if line.startswith("cpbuild: watching"))

    def wait(self, predicate, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or self.process.poll() is not None:
                tail = "\n".join(self.lines[-20:])
                raise SystemExit(f"watch_latency: timed out waiting for {what}\n{tail}")
            time.sleep(0.001)

    def cpu_seconds(self) -> float:
        """utime + stime of the watcher (fields 14 and 15 of /proc/PID/stat), in seconds."""
        text = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def threads(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode


def read_times(path: Path) -> dict[tuple[str, str], float]:
    times = {}
    if path.exists():
        for line in path.read_text().splitlines():
            kind, text, stamp = line.split()
            times[(kind, text)] = float(stamp)
    return times


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "max": max(values),
        "min": min(values),
        "mean": statistics.fmean(values),
    }


def run(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    project = folder / "project"
    times_path = folder / "times.log"
    project.mkdir(parents=True)
    write_project(project, args.tasks, times_path)
    edited = project / "inputs" / "edited.txt"
    watcher = Watcher(project, args.polling, args.jobs)
    try:
        watcher.wait(lambda: watcher.idle_count() >= 1, "the first build", timeout=120)
        start_ms: list[float] = []
        end_ms: list[float] = []
        cycle_ms: list[float] = []
        for i in range(args.edits):
            idle_before = watcher.idle_count()
            time.sleep(args.pause)  # let the machine settle; not part of any measurement
            text = f"edit-{i}"
            written = time.time()
            if args.save == "atomic":
                tmp = edited.with_name(".edited.txt.tmp")
                tmp.write_text(text + "\n")
                os.replace(tmp, edited)
            else:
                edited.write_text(text + "\n")
            watcher.wait(lambda t=text: ("end", t) in read_times(times_path), f"the rerun of edit {i}")
            watcher.wait(lambda n=idle_before: watcher.idle_count() > n, f"the watcher idle after edit {i}")
            stamps = read_times(times_path)
            start_ms.append((stamps[("start", text)] - written) * 1000)
            end_ms.append((stamps[("end", text)] - written) * 1000)
            done = [line for line in watcher.lines if line.startswith("cpbuild: cycle ")][-1]
            took = done.rsplit(" in ", 1)[-1].split(";")[0]
            cycle_ms.append(float(took.removesuffix("s")) * 1000)
            common.progress(f"  edit {i + 1:2d}: start {start_ms[-1]:6.1f} ms, end {end_ms[-1]:6.1f} ms")
        time.sleep(1.0)  # idle from here on
        threads = watcher.threads()
        before_cpu, before = watcher.cpu_seconds(), time.monotonic()
        time.sleep(args.idle)
        after_cpu, after = watcher.cpu_seconds(), time.monotonic()
        idle_percent = (after_cpu - before_cpu) / (after - before) * 100
        cycles_during_idle = watcher.idle_count()
    finally:
        code = watcher.stop()
    return {
        "start_ms": start_ms,
        "end_ms": end_ms,
        "cycle_ms": cycle_ms,
        "idle_cpu_percent": idle_percent,
        "idle_cpu_seconds": after_cpu - before_cpu,
        "idle_seconds": after - before,
        "threads": threads,
        "exit_code": code,
        "idle_lines": cycles_during_idle,
    }


def report(args: argparse.Namespace, result: dict[str, object]) -> tuple[str, bool]:
    start = summary(result["start_ms"])  # type: ignore[arg-type]
    end = summary(result["end_ms"])  # type: ignore[arg-type]
    cycle = summary(result["cycle_ms"])  # type: ignore[arg-type]
    idle = float(result["idle_cpu_percent"])  # type: ignore[arg-type]
    ok_start = start["median"] <= TARGET_START_MS
    ok_end = end["median"] <= TARGET_END_MS
    ok_idle = idle < TARGET_IDLE_CPU_PERCENT
    mode = "polling" if args.polling else "native observer"
    lines = [
        f"cpbuild --watch -j {args.jobs}: {args.tasks} file tasks, {args.edits} edits "
        f"({args.save} save), {mode}",
        "",
        f"{'measure':<34} {'median':>9} {'max':>9} {'min':>9}  target",
        f"{'-' * 34} {'-' * 9} {'-' * 9} {'-' * 9}  {'-' * 24}",
        f"{'write -> task start':<34} {start['median']:>6.1f} ms {start['max']:>6.1f} ms "
        f"{start['min']:>6.1f} ms  median <= {TARGET_START_MS:.0f} ms {'ok' if ok_start else 'MISSED'}",
        f"{'write -> task end (trivial task)':<34} {end['median']:>6.1f} ms {end['max']:>6.1f} ms "
        f"{end['min']:>6.1f} ms  median <= {TARGET_END_MS:.0f} ms {'ok' if ok_end else 'MISSED'}",
        f"{'cycle (as the watcher reports it)':<34} {cycle['median']:>6.1f} ms {cycle['max']:>6.1f} ms "
        f"{cycle['min']:>6.1f} ms",
        "",
        f"idle CPU over {result['idle_seconds']:.0f} s: {idle:.3f}% of one core "
        f"({result['idle_cpu_seconds']:.2f} s CPU; {result['threads']} threads)  "
        f"target < {TARGET_IDLE_CPU_PERCENT:g}% {'ok' if ok_idle else 'MISSED'}",
    ]
    if result["exit_code"] != 0:
        lines.append(f"watcher exit code after SIGINT: {result['exit_code']} (expected 0)")
    return "\n".join(lines), ok_start and ok_end and ok_idle and result["exit_code"] == 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=20, help="edits of the input (default 20)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of idle watching to measure CPU over (default 30)")
    parser.add_argument("--tasks", type=int, default=50, help="file tasks in the project (default 50)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cpbuild -j (default 1: the inline executor; more: worker processes)")
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds between an idle watcher and the next edit (default 0.3)")
    parser.add_argument("--save", choices=["write", "atomic"], default="write",
                        help="how the input is edited: rewritten in place, or written to a "
                        "temporary file renamed over it as editors do (default write)")
    parser.add_argument("--polling", action="store_true",
                        help="measure the polling fallback (CPBUILD_WATCH_POLL=1) instead")
    parser.add_argument("--workdir", type=Path, help="folder for the generated project (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated project")
    parser.add_argument("--json", type=Path,
                        help="results file (default benchmarks/results/watch-latency-YYYY-MM-DD.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.edits < 1 or args.tasks < 1:
        raise SystemExit("watch_latency: --edits and --tasks must be at least 1")
    if not Path("/proc/self/stat").exists():
        raise SystemExit("watch_latency: needs /proc to read the watcher's CPU time (Linux)")
    machine = common.machine_info()
    with common.work_folder("watch-latency-", args.workdir, args.keep, announce=False) as folder:
        result = run(args, folder)
    text, ok = report(args, result)
    print(text)
    path = args.json or common.results_path("watch-latency-polling" if args.polling else "watch-latency")
    payload = {
        "benchmark": "watch_latency",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {"start_median_ms": TARGET_START_MS, "end_median_ms": TARGET_END_MS,
                    "idle_cpu_percent": TARGET_IDLE_CPU_PERCENT},
        "summary": {
            "start_ms": summary(result["start_ms"]),  # type: ignore[arg-type]
            "end_ms": summary(result["end_ms"]),  # type: ignore[arg-type]
            "cycle_ms": summary(result["cycle_ms"]),  # type: ignore[arg-type]
            "idle_cpu_percent": result["idle_cpu_percent"],
            "met": ok,
        },
        "runs": result,
        "machine": machine,
        "cpbuild_commit": common.git_describe(common.BENCHMARKS_DIR),
    }
    common.write_json(path, payload)
    print(f"\nresults: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
