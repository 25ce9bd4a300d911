"""The terminal experience: a live display in a real pseudo-terminal, plain lines elsewhere."""

from __future__ import annotations

import sys

import pexpect

WAITING_TASKS = """
import time
from pathlib import Path
from ranlog import ran

GATE = Path({gate!r})


def wait_for_gate():
    while not GATE.exists():
        time.sleep(0.02)


def task_download_data() -> int:
    ran("download_data")
    wait_for_gate()
    return 1


def task_fit_model() -> int:
    ran("fit_model")
    wait_for_gate()
    return 2


def task_plot(download_data: int, fit_model: int) -> int:
    ran("plot")
    return download_data + fit_model
"""


def test_live_display_shows_the_bar_and_the_running_tasks(project):
    gate = project.path / "gate"
    project.write("task_live.py", WAITING_TASKS.format(gate=str(gate)))
    env = project.env(TERM="xterm")
    env.pop("CI", None)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cpbuild", "-j2", "--executor", "thread"],
        cwd=str(project.path),
        env=env,
        dimensions=(24, 100),
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect(r"0/3")  # the bar with done/total
        child.expect(r"running.*download_data")
        child.expect(r"running.*fit_model")
        gate.write_text("open")
        child.expect(r"cpbuild: 3 ran")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert sorted(project.log.read_text().split()) == ["download_data", "fit_model", "plot"]


def test_off_a_terminal_output_is_one_plain_line_per_event(project):
    gate = project.path / "gate"
    gate.write_text("open")
    project.write("task_live.py", WAITING_TASKS.format(gate=str(gate)))
    result = project.run("-j2", "--executor", "thread", "-v", CI="true")
    assert result.exit_code == 0, result
    assert "\x1b[" not in result.stdout
    lines = result.stdout.splitlines()
    assert "start       plot" in lines
    assert any(line.startswith("ran         plot (") for line in lines)


def test_no_op_in_a_terminal_shows_no_live_display(project):
    project.write("task_one.py", "def task_one() -> int:\n    return 1\n")
    project.run()
    env = project.env(TERM="xterm")
    env.pop("CI", None)
    child = pexpect.spawn(sys.executable, ["-m", "cpbuild"], cwd=str(project.path), env=env,
                          encoding="utf-8", timeout=30)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "all 1 task up to date" in child.before
    assert "━" not in child.before
