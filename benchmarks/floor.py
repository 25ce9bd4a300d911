"""What no build tool can go below on this machine, for the workloads of parallel.py.

Three fixed costs, each measured with nothing but the standard library:

* **start**: an interpreter that starts and exits (``python -c pass``) in the environment the
  tools run in (site packages, ``.pth`` files): every Python tool pays it once per build;
* **create**: creating N small files in one new folder from two processes at once, as two
  workers writing the products of N file tasks do (the folder's lock serializes creation);
* **round trip**: N tiny jobs sent to two forked worker processes over pipes and answered,
  each worker holding the job it runs and the next (what cpbuild's pool does), with nothing
  else per job: no key, no record, no value.

The floor of a workload is start + what its tasks cannot avoid: round trips for ``values``,
round trips and creates for ``files``. A tool's distance to that floor is its own bookkeeping.
The medians of ``--repeat`` runs are printed and written to
``benchmarks/results/floor-DATE.json``.

Standard library only, like the other runners.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import common

HEADER = struct.Struct("<Q")


def start_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=common.tool_env(), check=True)
    return time.perf_counter() - started


def create_seconds(n: int) -> float:
    """Two processes create n files between them in one new folder."""
    base = Path(tempfile.mkdtemp(prefix="cpbuild-floor-"))
    try:
        folder = base / "out"
        folder.mkdir()
        started = time.perf_counter()
        children = []
        for part in range(2):
            pid = os.fork()
            if pid == 0:
                for i in range(part, n, 2):
                    fd = os.open(folder / f"{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.write(fd, b"SOURCE\n")
                    os.close(fd)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _serve(jobs: int, outcomes: int) -> None:
    buffer = b""
    while True:
        while len(buffer) < HEADER.size or len(buffer) < HEADER.size + HEADER.unpack_from(buffer)[0]:
            chunk = os.read(jobs, 1 << 16)
            if not chunk:
                os._exit(0)
            buffer += chunk
        size = HEADER.unpack_from(buffer)[0]
        job = pickle.loads(buffer[HEADER.size:HEADER.size + size])
        buffer = buffer[HEADER.size + size:]
        reply = pickle.dumps(job * 2)
        os.write(outcomes, HEADER.pack(len(reply)) + reply)


def round_trip_seconds(n: int, window: int = 2) -> float:
    """n jobs through two forked workers, each holding up to ``window`` jobs."""
    started = time.perf_counter()
    workers = []
    for _ in range(2):
        job_read, job_write = os.pipe()
        outcome_read, outcome_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in (job_write, outcome_read, *(fd for w in workers for fd in w[1:3])):
                os.close(fd)  # the other workers' ends too, or they never see the end of input
            _serve(job_read, outcome_write)
        os.close(job_read)
        os.close(outcome_write)
        workers.append([pid, job_write, outcome_read, 0])  # pid, pipes, jobs held
    sent = done = 0
    while done < n:
        for worker in workers:
            while worker[3] < window and sent < n:
                data = pickle.dumps(sent)
                os.write(worker[1], HEADER.pack(len(data)) + data)
                worker[3] += 1
                sent += 1
        ready, _, _ = select.select([w[2] for w in workers], [], [])
        for worker in workers:
            if worker[2] in ready:
                size = HEADER.unpack(os.read(worker[2], HEADER.size))[0]
                pickle.loads(os.read(worker[2], size))
                worker[3] -= 1
                done += 1
    for pid, job_write, outcome_read, _ in workers:
        os.close(job_write)
        os.close(outcome_read)
        os.waitpid(pid, 0)
    return time.perf_counter() - started


def measured(what: str, function: Callable[[], float], repeat: int) -> list[float]:
    runs = [function() for _ in range(repeat)]
    common.progress(f"  {what}: median {common.fmt_seconds(common.median(runs))}")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000, metavar="N",
                        help="tasks of the workloads (default: 1,000, as parallel.py)")
    parser.add_argument("--repeat", type=int, default=7, metavar="K",
                        help="runs of each measurement (default: 7)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="where to write the results (default: benchmarks/results/floor-YYYY-MM-DD.json)")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.error("floor.py forks worker processes: Linux only")
    n = args.tasks
    common.progress(f"floor of {n:,} tasks with 2 workers, {args.repeat} runs each")
    runs = {
        "start": measured("interpreter start", start_seconds, args.repeat),
        "create": measured(f"create {n:,} files", lambda: create_seconds(n), args.repeat),
        "round_trip": measured(f"{n:,} round trips", lambda: round_trip_seconds(n), args.repeat),
    }
    medians = {name: common.median(values) or 0.0 for name, values in runs.items()}
    floors = {
        "values": medians["start"] + medians["round_trip"],
        "files": medians["start"] + medians["round_trip"] + medians["create"],
    }
    rows = [[name, common.fmt_seconds(seconds)] for name, seconds in medians.items()]
    rows += [[f"floor of {name}", common.fmt_seconds(seconds)] for name, seconds in floors.items()]
    print(common.table(["measure", "median"], rows), flush=True)
    json_path = args.json or common.results_path("floor")
    common.write_json(json_path, {
        "benchmark": "floor",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": common.machine_info(executable=True),
        "settings": {"tasks": n, "repeat": args.repeat},
        "runs_s": {name: common.rounded(values, 6) for name, values in runs.items()},
        "medians_s": {name: round(seconds, 6) for name, seconds in medians.items()},
        "floors_s": {name: round(seconds, 6) for name, seconds in floors.items()},
    })
    common.progress(f"results written to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
