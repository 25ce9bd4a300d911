"""Watch mode (DESIGN §8, issue 4): ``cpbuild --watch`` runs as a subprocess with a real
observer on a project in a temporary folder; tests see what happened through the run log
(``ran("name")``), the products and the watcher's output.

Synchronisation is by bounded polling for markers: the watcher prints
``cpbuild: cycle N done ...`` when a cycle ends and ``cpbuild: watching ...`` when it is idle.
The only fixed waits are the ones that prove that nothing happens (``quiet()``): half a second
after the debounce, far longer than a cycle of these projects takes to start.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cpbuild import watch as watch_module

#: Long enough that a cycle that was going to start would have started (debounce 50 ms).
QUIET = watch_module.DEBOUNCE + 0.5
TIMEOUT = 30.0

READ_DATA = """
from pathlib import Path
from typing import Annotated
from cpbuild import Product
from ranlog import ran


def task_read(data: Path = Path("data.txt"),
              out: Annotated[Path, Product] = Path("out/copy.txt")) -> None:
    ran("read")
    out.write_text(data.read_text().upper())
"""


class Watch:
    """A running ``cpbuild --watch`` and what it printed so far (stdout and stderr merged)."""

    def __init__(self, project, *args: str, **env: str) -> None:
        project.log.write_text("")
        self.project = project
        self.process = subprocess.Popen(
            project.command("--watch", *args),
            cwd=project.path,
            env=project.env(**env),
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

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate, what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError(
            f"timed out waiting for {what} (exit code {self.process.poll()})\n"
            f"--- output ---\n{self.output}\n--- run log ---\n{self.ran()}"
        )

    def last_cycle(self) -> str:
        """The output of the last cycle, from its header on."""
        starts = [i for i, line in enumerate(self.lines) if line.startswith("cpbuild: change")]
        return "\n".join(self.lines[starts[-1]:] if starts else self.lines)

    def cycles(self) -> int:
        return sum(1 for line in self.lines if re.match(r"cpbuild: cycle \d+ (done|stopped)", line))

    def idle(self) -> bool:
        return bool(self.lines) and self.lines[-1].startswith("cpbuild: watching")

    def wait_cycles(self, count: int) -> None:
        """Wait until ``count`` cycles ended and the watcher waits for changes again."""
        self.wait_for(lambda: self.cycles() >= count and self.idle(), f"{count} cycles")

    def ran(self) -> list[str]:
        return [line for line in self.project.log.read_text().splitlines() if line]

    def wait_ran(self, count: int, timeout: float = TIMEOUT) -> None:
        self.wait_for(lambda: len(self.ran()) >= count, f"{count} task runs", timeout)

    def quiet(self) -> None:
        """Proving that nothing happens needs a fixed wait: QUIET after the last change."""
        time.sleep(QUIET)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=TIMEOUT)
        self._reader.join(timeout=5)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def start(project):
    """``start(*args)`` runs ``cpbuild --watch *args`` on ``project``; always killed after."""
    running: list[Watch] = []

    def start_watch(*args: str, ready: bool = True, **env: str) -> Watch:
        watcher = Watch(project, *args, **env)
        running.append(watcher)
        if ready:
            watcher.wait_cycles(1)
        return watcher

    yield start_watch
    for watcher in running:
        watcher.kill()


def replace_atomically(path: Path, text: str) -> None:
    """What editors do: write a temporary file next to the target, rename it over the target."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def many_tasks() -> str:
    lines = ["from ranlog import ran", "from helpers import scale", ""]
    for i in range(10):
        lines += [f"def task_t{i}() -> int:", f'    ran("t{i}")', f"    return {i}", ""]
    lines += [
        "def task_after3(t3: int) -> int:",
        "    value = scale(t3)",
        '    ran(f"after3:{value}")',
        "    return value",
        "",
        "def task_after4(t4: int) -> int:",
        '    ran("after4")',
        "    return t4 + 1",
        "",
    ]
    return "\n".join(lines)


# -- acceptance 1 and 2: function-level reruns; comments run nothing ----------------------------


def test_editing_one_task_of_many_reruns_it_and_the_dependents_whose_inputs_changed(project, start):
    project.write("helpers.py", "def scale(x):\n    return 10 * x\n")
    module = project.write("task_many.py", many_tasks())
    watcher = start(PYTHONDONTWRITEBYTECODE="")  # bytecode caches as users have them
    assert len(watcher.ran()) == 12 and "after3:30" in watcher.ran(), watcher.output

    project.log.write_text("")
    module.write_text(many_tasks().replace("return 3\n", "return 33\n"))
    watcher.wait_cycles(2)
    assert sorted(watcher.ran()) == ["after3:330", "t3"], watcher.output
    assert "cpbuild: change: task_many.py" in watcher.output

    # A new value equal to the old one: the dependent does not rerun (early cutoff).
    project.log.write_text("")
    module.write_text(many_tasks().replace("return 3\n", "return 33\n").replace("return 4\n", "return 2 + 2\n"))
    watcher.wait_cycles(3)
    assert watcher.ran() == ["t4"], watcher.output

    # A project module the tasks import: only the task whose code reaches the edit reruns.
    project.log.write_text("")
    project.write("helpers.py", "def scale(x):\n    return 100 * x\n")
    watcher.wait_cycles(4)
    assert watcher.ran() == ["after3:3300"], watcher.output

    # The same size, most likely within the same second as the import of the last version:
    # CPython's cached bytecode would look valid, and must not be used.
    project.log.write_text("")
    project.write("helpers.py", "def scale(x):\n    return 200 * x\n")
    watcher.wait_cycles(5)
    assert watcher.ran() == ["after3:6600"], watcher.output
    assert watcher.stop() == 0


def test_a_comment_only_edit_runs_nothing(project, start):
    project.write("helpers.py", "def scale(x):\n    return 10 * x\n")
    module = project.write("task_many.py", many_tasks())
    watcher = start()
    project.log.write_text("")
    module.write_text("# a comment at the top\n" + many_tasks().replace("return 5\n", "return 5  # five\n"))
    watcher.wait_cycles(2)
    assert watcher.ran() == [], watcher.output
    assert "cpbuild: all 12 tasks up to date" in watcher.output


# -- acceptance 3, 4, 5: inputs, touch, atomic saves, bursts -------------------------------------


def test_changing_an_input_reruns_its_dependents_and_a_touch_runs_nothing(project, start):
    data = project.write("data.txt", "one\n")
    project.write("task_read.py", READ_DATA)
    watcher = start()
    assert watcher.ran() == ["read"]

    data.write_text("two\n")
    watcher.wait_cycles(2)
    assert watcher.ran() == ["read", "read"], watcher.output
    assert project.read("out/copy.txt") == "TWO\n"
    assert "cpbuild: change: data.txt" in watcher.output

    data.touch()  # metadata only (an Attrib event)
    os.utime(data, ns=(time.time_ns(), time.time_ns()))
    with open(data, "a"):  # opened for writing and closed unchanged (a Closed event), as `touch` does
        pass
    data.write_text("two\n")  # rewritten with the same bytes (Modified and Closed events)
    watcher.quiet()
    assert watcher.cycles() == 2, watcher.output
    assert watcher.ran() == ["read", "read"]
    assert watcher.stop() == 0


def test_an_atomic_save_gives_exactly_one_rebuild(project, start):
    data = project.write("data.txt", "one\n")
    project.write("task_read.py", READ_DATA)
    watcher = start("--clear")
    replace_atomically(data, "three\n")
    watcher.wait_cycles(2)
    watcher.quiet()
    assert watcher.cycles() == 2, watcher.output
    assert watcher.ran() == ["read", "read"]
    assert project.read("out/copy.txt") == "THREE\n"
    assert "\x1b[2J\x1b[H" in watcher.output  # --clear

    # Vim's save: rename the file to a backup, write the file anew, delete the backup.
    backup = data.with_name("data.txt~")
    os.rename(data, backup)
    data.write_text("four\n")
    backup.unlink()
    watcher.wait_cycles(3)
    watcher.quiet()
    assert watcher.cycles() == 3, watcher.output
    assert watcher.ran() == ["read"] * 3
    assert project.read("out/copy.txt") == "FOUR\n"


def test_fifty_rapid_writes_give_at_most_two_cycles_and_the_final_content_is_built(project, start):
    data = project.write("data.txt", "start\n")
    project.write("task_read.py", READ_DATA)
    watcher = start()
    for i in range(50):
        data.write_text(f"write {i}\n")
    watcher.wait_for(
        lambda: (project.path / "out/copy.txt").read_text() == "WRITE 49\n" and watcher.idle(),
        "the last write to be built",
    )
    watcher.quiet()
    assert 2 <= watcher.cycles() <= 3, watcher.output  # the first build and at most two more
    assert project.read("out/copy.txt") == "WRITE 49\n"
    assert watcher.ran().count("read") == watcher.cycles()


# -- acceptance 6 and 7: errors, new and deleted files -------------------------------------------


def test_a_syntax_error_is_reported_the_watch_survives_and_the_fix_rebuilds(project, start):
    good = 'from ranlog import ran\n\ndef task_a() -> int:\n    ran("a")\n    return 1\n'
    module = project.write("task_a.py", good)
    watcher = start()
    module.write_text(good.replace("return 1", "return (1"))
    watcher.wait_cycles(2)
    assert "SyntaxError" in watcher.output and "task_a.py:5" in watcher.output, watcher.output
    assert watcher.process.poll() is None

    # A broken helper imported by the task file: shown, and its fix (not the task file) resumes.
    project.write("helpers.py", "def two(:\n")
    module.write_text(good.replace("return 1", "return helpers.two()").replace("from ranlog", "import helpers\nfrom ranlog"))
    watcher.wait_cycles(3)
    assert "helpers.py:1" in watcher.output, watcher.output
    project.write("helpers.py", "def two():\n    return 2\n")
    watcher.wait_cycles(4)
    assert watcher.ran() == ["a", "a"], watcher.output
    assert "cycle 4 done in" in watcher.output
    assert watcher.stop() == 0


def test_new_task_files_are_collected_and_deleted_ones_disappear(project, start):
    project.write("task_a.py", 'from ranlog import ran\n\ndef task_a():\n    ran("a")\n')
    watcher = start()
    project.write("task_b.py", 'from ranlog import ran\n\ndef task_b():\n    ran("b")\n')
    watcher.wait_cycles(2)
    assert watcher.ran() == ["a", "b"], watcher.output

    # In a folder that did not exist: the new folder is watched and its files seen.
    project.write("sub/deeper/task_c.py", 'from ranlog import ran\n\ndef task_c():\n    ran("c")\n')
    watcher.wait_cycles(3)
    assert watcher.ran() == ["a", "b", "c"], watcher.output

    (project.path / "task_b.py").unlink()
    watcher.wait_cycles(4)
    assert "cpbuild: change: task_b.py" in watcher.last_cycle()
    assert "cpbuild: all 2 tasks up to date" in watcher.last_cycle(), watcher.output
    assert watcher.ran() == ["a", "b", "c"]


def test_a_deleted_input_gives_its_tasks_error_and_restoring_it_rebuilds(project, start):
    data = project.write("data.txt", "one\n")
    project.write("task_read.py", READ_DATA)
    watcher = start()
    data.unlink()
    watcher.wait_cycles(2)
    assert "task_read.py::read: input data.txt does not exist" in watcher.output, watcher.output
    data.write_text("back\n")
    watcher.wait_cycles(3)
    assert watcher.ran() == ["read", "read"], watcher.output
    assert project.read("out/copy.txt") == "BACK\n"


def test_an_input_in_a_folder_created_later_is_watched(project, start):
    project.write(
        "task_late.py",
        """
        from pathlib import Path
        from ranlog import ran

        def task_late(data: Path = Path("later/data.txt")) -> str:
            ran("late")
            return data.read_text()
        """,
    )
    watcher = start()
    assert "later/data.txt does not exist" in watcher.output
    project.write("later/data.txt", "here\n")
    watcher.wait_cycles(2)
    assert watcher.ran() == ["late"], watcher.output


# -- acceptance 8 and the lock: Ctrl-C, a second cpbuild -----------------------------------------


SLOW = """
import time
from pathlib import Path
from typing import Annotated
from cpbuild import Product
from ranlog import ran

GATE = Path({gate!r})


def task_slow(data: Path = Path("data.txt"),
              out: Annotated[Path, Product] = Path("out/slow.txt")) -> None:
    text = data.read_text().strip()
    ran("slow:" + text)
    out.write_text("partial")
    deadline = time.monotonic() + 20
    while not GATE.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    out.write_text(text)
"""


def test_sigint_exits_0_and_leaves_no_partial_product(project, start, tmp_path):
    project.write("data.txt", "v1\n")
    project.write("task_slow.py", SLOW.format(gate=str(tmp_path / "gate")))
    watcher = start(ready=False)
    product = project.path / "out/slow.txt"
    watcher.wait_for(product.exists, "the task to write its partial product")
    assert watcher.stop() == 0, watcher.output
    assert not product.exists(), "the interrupted task's product was left behind"
    assert "cpbuild: watch stopped" in watcher.output


def test_an_input_changed_while_its_task_runs_gets_another_cycle(project, start, tmp_path):
    data = project.write("data.txt", "v1\n")
    project.write("task_slow.py", SLOW.format(gate=str(tmp_path / "gate")))
    watcher = start(ready=False)
    watcher.wait_ran(1)
    data.write_text("v2\n")
    (tmp_path / "gate").write_text("open")
    watcher.wait_cycles(2)
    assert watcher.ran() == ["slow:v1", "slow:v2"], watcher.output
    assert project.read("out/slow.txt") == "v2"


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_restart_cancels_the_running_task_and_starts_again(project, start, tmp_path, executor):
    data = project.write("data.txt", "v1\n")
    project.write("task_slow.py", SLOW.format(gate=str(tmp_path / "gate")))
    watcher = start("--restart", "--executor", executor, ready=False)
    watcher.wait_ran(1)
    data.write_text("v2\n")
    # Well before the first run gives up waiting for the gate (20 s): it was stopped.
    watcher.wait_ran(2, timeout=8)
    watcher.wait_for(lambda: "cpbuild: change: data.txt" in watcher.output, "the restarted cycle")
    assert "starting again" in watcher.output, watcher.output
    (tmp_path / "gate").write_text("open")
    watcher.wait_cycles(2)
    assert watcher.ran() == ["slow:v1", "slow:v2"], watcher.output
    assert project.read("out/slow.txt") == "v2"
    assert watcher.stop() == 0


def test_a_second_cpbuild_while_watching_gets_a_clear_message(project, start):
    project.write("data.txt", "one\n")
    project.write("task_read.py", READ_DATA)
    watcher = start()
    result = project.run("--no-wait", timeout=60)
    assert result.exit_code == 2, result
    assert "another cpbuild" in result.stderr and "watch" in result.stderr, result
    waiting = subprocess.Popen(
        project.command(), cwd=project.path, env=project.env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert waiting.stderr is not None
        line = waiting.stderr.readline()  # blocks until the message (or the process ends)
        assert "waiting for another cpbuild" in line and "watch" in line, line
    finally:
        waiting.kill()
        waiting.wait(timeout=10)
    assert watcher.process.poll() is None


def test_watch_with_a_one_shot_option_is_a_usage_error(project):
    project.write("task_a.py", "def task_a():\n    pass\n")
    result = project.run("--watch", "--list")
    assert result.exit_code == 4, result
    assert "--watch cannot be combined with --list" in result.stderr


# -- the polling fallback ------------------------------------------------------------------------


def test_polling_observer_rebuilds_on_content_changes_only(project, start):
    data = project.write("data.txt", "one\n")
    project.write("task_read.py", READ_DATA)
    watcher = start(CPBUILD_WATCH_POLL="1")
    assert "polling every" in watcher.output
    data.write_text("two\n")
    watcher.wait_cycles(2)
    assert project.read("out/copy.txt") == "TWO\n"
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    time.sleep(2 * watch_module.POLL_INTERVAL)  # proving nothing happens: two polling rounds
    watcher.quiet()
    assert watcher.cycles() == 2, watcher.output


class _LimitedObserver:
    """Stands in for the inotify observer when the kernel's limits are reached."""

    def __init__(self, error: int, where: str) -> None:
        self.error, self.where = error, where
        if where == "init":
            raise OSError(error, os.strerror(error))

    def start(self) -> None:
        pass

    def schedule(self, *args, **kwargs):
        raise OSError(self.error, os.strerror(self.error))

    def stop(self) -> None:
        pass

    def join(self, timeout=None) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "where", "setting"),
    [
        (errno.ENOSPC, "schedule", "fs.inotify.max_user_watches"),
        (errno.EMFILE, "init", "fs.inotify.max_user_instances"),
    ],
)
def test_inotify_limits_fall_back_to_polling_with_a_clear_message(tmp_path, error, where, setting):
    from watchdog.events import FileSystemEventHandler

    seen: list[str] = []

    class Handler(FileSystemEventHandler):
        def dispatch(self, event):
            seen.append(os.fsdecode(event.src_path))

    messages: list[str] = []
    watches = watch_module.Watches(
        Handler(), messages.append, observer_class=lambda: _LimitedObserver(error, where)
    )
    try:
        assert watches.update({str(tmp_path)}) == {str(tmp_path)}
        assert watches.polling
        assert len(messages) == 1 and setting in messages[0] and "polling" in messages[0], messages
        (tmp_path / "new.txt").write_text("x")
        deadline = time.monotonic() + 10
        while str(tmp_path / "new.txt") not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert str(tmp_path / "new.txt") in seen
    finally:
        watches.stop()
