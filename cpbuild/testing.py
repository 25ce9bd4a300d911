"""Testing cpbuild projects and plugins: the ``project`` fixture, as pytest's ``pytester``.

A test writes a project into a temporary folder, runs the real ``cpbuild`` CLI on it in a
subprocess, and sees which tasks ran::

    pytest_plugins = ["cpbuild.testing"]

    def test_rebuild(project):
        project.write("task_a.py", "from ranlog import ran\n\ndef task_a():\n    ran('a')\n")
        assert project.run().ran == {"a"}
        assert project.run().ran == set()

Tasks count their executions by calling ``ran("name")`` from the ``ranlog`` helper module the
fixture writes; it appends to a log file named by an environment variable (so the log's
location is not part of any key). ``result.ran`` is the set of names logged during that run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

RANLOG = '''\
import os


def ran(name):
    """Record that a task ran (tests count executions through this file)."""
    with open(os.environ["CPBUILD_TEST_LOG"], "a") as log:
        log.write(name + "\\n")
'''


TIMING = '''\
import os
import time
from pathlib import Path


def timed(name, seconds):
    """Sleep, recording the task's start and end times (see Project.intervals)."""
    start = time.time()
    time.sleep(seconds)
    folder = Path(os.environ["CPBUILD_TEST_LOG"]).with_suffix(".intervals")
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"{start} {time.time()}")
'''


GATED = '''
import time
from pathlib import Path
from typing import Annotated
from cpbuild import Product
from ranlog import ran

GATE = Path({gate!r})


def task_quick(out: Annotated[Path, Product] = Path("quick.txt")) -> None:
    ran("quick")
    out.write_text("done")


def task_waits(quick: None, out: Annotated[Path, Product] = Path("partial.txt")) -> None:
    ran("waits")
    out.write_text("half written")
    while not GATE.exists():
        time.sleep(0.02)
    out.write_text("complete")
'''


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    ran_list: list[str]
    stopped_in: float = 0.0  # seconds from SIGINT to exit (Project.interrupt)

    @property
    def ran(self) -> set[str]:
        return set(self.ran_list)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:
        return (
            f"Result(exit_code={self.exit_code}, ran={self.ran_list})\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


class Project:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = path.parent / f"{path.name}-runs.log"
        self.write("ranlog.py", RANLOG)

    def write(self, relpath: str, text: str) -> Path:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        return target

    def write_sleepers(self, count: int, seconds: float, decorator: str = "") -> None:
        """Tasks s0, s1, ... that each sleep ``seconds`` and record when they ran, to check
        concurrency from the tasks' own clocks (``intervals``), not the build's wall time."""
        self.write("timing.py", TIMING)
        body = "from cpbuild import task\nfrom ranlog import ran\nfrom timing import timed\n\n"
        for i in range(count):
            body += f"@task({decorator})\ndef task_s{i}() -> None:\n    ran('s{i}')\n    timed('s{i}', {seconds})\n\n"
        self.write("task_sleep.py", body)

    def intervals(self) -> dict[str, tuple[float, float]]:
        """(start, end) of every task that called ``timing.timed`` since the project was made."""
        folder = self.log.with_suffix(".intervals")
        spans = {}
        for path in folder.iterdir():
            start, end = path.read_text().split()
            spans[path.name] = (float(start), float(end))
        return spans

    def write_gated(self) -> Path:
        """Tasks ``quick`` and ``waits``: ``waits`` writes half of ``partial.txt`` and waits until
        the returned gate file exists, so a test can interrupt a build in the middle of a task."""
        gate = self.path / "gate"
        self.write("task_wait.py", GATED.format(gate=str(gate)))
        return gate

    def interrupt(self, *args: str, when: str = "partial.txt", timeout: float = 30) -> Result:
        """Start ``cpbuild ARGS``, send SIGINT once ``when`` exists, and wait for the end."""
        import signal
        import time

        self.log.write_text("")
        process = subprocess.Popen(self.command(*args), cwd=self.path, env=self.env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marker = self.path / when
        deadline = time.monotonic() + timeout
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"{when} never appeared: the build did not reach the task"
        process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=timeout)
        ran = [line for line in self.log.read_text().splitlines() if line]
        return Result(process.returncode, stdout, stderr, ran, time.monotonic() - signalled)

    def read(self, relpath: str) -> str:
        return (self.path / relpath).read_text()

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["CPBUILD_TEST_LOG"] = str(self.log)
        # The user's cache (the environment cache, see cpbuild.environment) stays the test's own.
        env["XDG_CACHE_HOME"] = str(self.path.parent / "user-cache")
        env.pop("PYTHONPATH", None)
        env.update(extra)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cpbuild", *args]

    def run(self, *args: str, timeout: float = 120, cwd: Path | None = None, **env: str) -> Result:
        self.log.write_text("")
        completed = subprocess.run(
            self.command(*args),
            cwd=cwd or self.path,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        ran = [line for line in self.log.read_text().splitlines() if line]
        return Result(completed.returncode, completed.stdout, completed.stderr, ran)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "project"
    root.mkdir()
    return Project(root)
