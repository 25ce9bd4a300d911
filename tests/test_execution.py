"""Executors, queues, retries, timeouts, crashes and interrupts (issue: parallel execution).

Concurrency is checked from the tasks' own start/end timestamps, written to files, so the
assertions do not depend on interpreter start-up or machine load beyond the tasks themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cpbuild.testing import TIMING as TIMING_HELPER


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_two_independent_tasks_run_in_parallel(project, executor):
    project.write_sleepers(2, 1.0)
    result = project.run("-j2", "--executor", executor)
    assert result.exit_code == 0, result
    assert result.ran == {"s0", "s1"}
    spans = project.intervals().values()
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    assert wall < 1.6, f"two 1 s tasks took {wall:.2f} s with -j2 on {executor}"
    assert project.run("-j2", "--executor", executor).ran == set()


def test_queue_limit_serializes_its_tasks_without_blocking_others(project):
    project.write_sleepers(3, 0.3, decorator='queue="gpu"')
    project.write("cpbuild.toml", "[queues]\ngpu = 1\n")
    project.write(  # collected after the queued tasks, so it is ready while two of them wait
        "task_zz_free.py",
        "from ranlog import ran\nfrom timing import timed\n\n"
        "def task_free() -> int:\n    ran('free')\n    timed('free', 0)\n    return 1\n",
    )
    result = project.run("-j3", "--executor", "thread")
    assert result.exit_code == 0, result
    assert result.ran == {"s0", "s1", "s2", "free"}
    intervals = project.intervals()
    free_start = intervals.pop("free")[0]
    spans = sorted(intervals.values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"queue gpu=1 tasks overlapped: {spans}"
    assert free_start < spans[0][1], "a task outside the queue waited for the queued ones"


def test_queue_limit_from_the_command_line(project):
    project.write_sleepers(2, 0.3, decorator='queue="io"')
    result = project.run("-j2", "--executor", "thread", "--queue", "io=1")
    assert result.exit_code == 0, result
    (a_start, a_end), (b_start, b_end) = sorted(project.intervals().values())
    assert b_start >= a_end


def test_queue_limit_below_one_is_a_config_error(project):
    project.write_sleepers(1, 0)
    project.write("cpbuild.toml", "[queues]\ngpu = 0\n")
    result = project.run()
    assert result.exit_code == 4
    assert "queues" in result.stderr and "cpbuild.toml" in result.stderr


FAKE_SCHEDULER = """\
#!{python}
'''Stand-in job scheduler: runs the command in a new session with a job id in its environment.'''
import os
import sys

pid = os.fork()
if pid == 0:
    os.setsid()
    os.execvpe(sys.argv[1], sys.argv[1:], dict(os.environ, FAKE_JOB_ID="4242"))
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_prefix_executor_runs_the_task_through_the_scheduler_command(project):
    script = project.write("fake_srun", FAKE_SCHEDULER.format(python=sys.executable))
    script.chmod(0o755)
    project.write("cpbuild.toml", f'[prefixes]\ngpu = "{script}"\n')
    project.write(
        "task_remote.py",
        """
        import os
        from cpbuild import task
        from ranlog import ran

        @task(queue="gpu")
        def task_remote() -> str:
            ran("remote")
            print("in a session of its own:", os.getsid(0) == os.getpid())
            return os.environ.get("FAKE_JOB_ID", "no job id")

        def task_local(remote: str) -> str:
            ran("local")
            return "got " + remote
        """,
    )
    project.write(
        "task_check.py",
        """
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product

        def task_check(local: str, out: Annotated[Path, Product] = Path("out.txt")) -> None:
            out.write_text(local)
        """,
    )
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == {"remote", "local"}
    assert project.read("out.txt") == "got 4242"
    log = project.run("--log", "remote")
    assert "in a session of its own: True" in log.stdout
    assert project.run().ran == set()


def test_job_prefix_option_on_the_task(project):
    script = project.write("fake_srun", FAKE_SCHEDULER.format(python=sys.executable))
    script.chmod(0o755)
    project.write(
        "task_remote.py",
        f"""
        import os
        from cpbuild import task

        @task(job_prefix=["{script}"])
        def task_remote() -> str:
            return os.environ.get("FAKE_JOB_ID", "no job id")

        def task_show(remote: str) -> None:
            print("remote said", remote)
        """,
    )
    result = project.run("-s")
    assert result.exit_code == 0, result
    assert "remote said 4242" in result.stdout


def test_failing_prefix_command_is_reported_with_its_output(project):
    project.write(
        "task_bad.py",
        """
        from cpbuild import task

        @task(job_prefix=["sh", "-c", "echo 'no such partition' >&2; exit 3", "--"])
        def task_bad() -> int:
            return 1
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert "exit status 3" in result.stdout
    assert "no such partition" in result.stdout


@pytest.mark.parametrize("executor", ["process", "prefix"])
def test_timeout_kills_the_task_and_its_children(project, executor):
    pid_file = project.path / "child.pid"
    project.write(
        "task_slow.py",
        f"""
        import subprocess
        import time
        from cpbuild import task

        @task(timeout=1, executor="{executor}", job_prefix=[])
        def task_slow() -> None:
            child = subprocess.Popen(["sleep", "60"])
            open({str(pid_file)!r}, "w").write(str(child.pid))
            time.sleep(60)
        """,
    )
    start = time.monotonic()
    result = project.run("-j2")
    assert time.monotonic() - start < 30
    assert result.exit_code == 1, result
    assert "timed out after 1s" in result.stdout
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the task's child process survived the timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_retries_rerun_a_failing_task_and_keep_every_attempts_log(project):
    project.write(
        "task_flaky.py",
        """
        from pathlib import Path
        from cpbuild import task
        from ranlog import ran

        @task(retries=2)
        def task_flaky() -> str:
            ran("flaky")
            counter = Path("attempts.txt")
            n = int(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text(str(n))
            print(f"attempt {n}")
            if n < 3:
                raise RuntimeError(f"flaky failure {n}")
            return "ok"
        """,
    )
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran_list == ["flaky", "flaky", "flaky"]
    assert "retrying" in result.stderr
    log = project.run("--log", "flaky").stdout
    assert "attempt 1: failed" in log and "flaky failure 1" in log
    assert "attempt 2: failed" in log and "attempt 3: ok" in log


def test_retries_exhausted_fail_with_a_clear_message(project):
    project.write(
        "task_bad.py",
        """
        from cpbuild import task

        @task(retries=1)
        def task_bad() -> None:
            raise ValueError("always")
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert "ValueError: always" in result.stdout
    assert "failed 2 attempts" in result.stdout


@pytest.mark.parametrize("how", ["os._exit(3)", "os.kill(os.getpid(), signal.SIGSEGV)"])
def test_a_dying_worker_fails_its_task_and_the_build_goes_on(project, how):
    project.write(
        "task_crash.py",
        f"""
        import os
        import signal
        from ranlog import ran

        def task_crash() -> None:
            {how}

        def task_fine() -> int:
            ran("fine")
            return 1

        def task_after(fine: int) -> int:
            ran("after")
            return fine + 1
        """,
    )
    result = project.run("-j2", "--executor", "process", "--keep-going", timeout=60)
    assert result.exit_code == 1, result
    assert "worker process running task_crash.py::crash died" in result.stdout
    expected = "exit status 3" if "_exit" in how else "SIGSEGV"
    assert expected in result.stdout
    assert result.ran == {"fine", "after"}


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
def test_sigint_leaves_no_partial_product_and_the_next_build_finishes_the_rest(project, executor):
    gate = project.write_gated()
    result = project.interrupt("--executor", executor, "-j2")
    assert result.exit_code == 2, result
    assert result.ran == {"quick", "waits"}
    assert not (project.path / "partial.txt").exists(), "a partial product was left"
    assert project.read("quick.txt") == "done"
    gate.write_text("open")
    result = project.run("--executor", executor, "-j2")
    assert result.exit_code == 0, result
    assert result.ran == {"waits"}, "a task finished before the interrupt ran again"
    assert project.read("partial.txt") == "complete"


def test_process_executor_ships_project_code_by_value(project, tmp_path):
    project.write("helpers.py", "def double(x):\n    return 2 * x\n")
    project.write(
        "task_calc.py",
        """
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product
        from helpers import double

        def task_numbers() -> list[int]:
            return list(range(5))

        def task_doubled(numbers: list[int]) -> list[int]:
            return [double(n) for n in numbers]

        def task_write(doubled: list[int], out: Annotated[Path, Product] = Path("out.txt")) -> None:
            import sys  # where this runs: by value, neither this module nor helpers is imported
            imported = [name for name in ("helpers", "task_calc") if name in sys.modules]
            out.write_text(" ".join(map(str, doubled)) + f" imported={imported}")
        """,
    )
    result = project.run("-j2", "--executor", "process", "--json-report", "report.json")
    assert result.exit_code == 0, result
    assert project.read("out.txt") == "0 2 4 6 8 imported=[]"
    import json

    report = json.loads(project.read("report.json"))
    assert {t["executor"] for t in report["tasks"]} == {"process"}


def test_fd_level_output_of_child_processes_is_captured_by_the_process_executor(project):
    project.write(
        "task_shell.py",
        """
        import subprocess

        def task_shell() -> None:
            subprocess.run(["sh", "-c", "echo from-a-child-process"], check=True)
            raise RuntimeError("fail to show the output")
        """,
    )
    result = project.run("-j2", "--executor", "process")
    assert result.exit_code == 1
    assert "from-a-child-process" in result.stdout.split("captured stdout")[1]


def test_large_values_do_not_pass_through_the_main_process(project):
    project.write(
        "task_big.py",
        """
        def task_big() -> bytes:
            return b"x" * 5_000_000

        def task_size(big: bytes) -> int:
            return len(big)

        def task_show(size: int) -> None:
            print("size", size)
        """,
    )
    project.write(
        "logstore.py",
        """
        import os
        from pathlib import Path
        from cpbuild.hookspecs import hookimpl
        from cpbuild.storage.local import LocalStorage

        LOG = Path(__file__).with_name("puts.log")

        def note(text):
            with open(LOG, "a") as log:
                log.write(text + "\\n")

        class LoggingStorage(LocalStorage):
            def put(self, digest, data):
                note(f"{os.getpid()} {len(data)}")
                super().put(digest, data)

            def put_many(self, objects):
                for data in objects.values():
                    note(f"{os.getpid()} {len(data)}")
                super().put_many(objects)

        @hookimpl(tryfirst=True)
        def cpbuild_make_storage(name, config, hasher):
            note(f"main {os.getpid()}")
            return LoggingStorage(config.cache_path / "objects", hasher)
        """,
    )
    project.write("cpbuild.toml", 'plugins = ["logstore"]\n')
    result = project.run("-j2", "--executor", "process", "-s")
    assert result.exit_code == 0, result
    assert "size 5000000" in result.stdout
    lines = [line.split() for line in project.read("puts.log").splitlines()]
    main = {pid for who, pid in lines if who == "main"}
    puts = [(pid, int(size)) for pid, size in lines if pid != "main"]
    large = [pid for pid, size in puts if size >= 5_000_000]
    assert large and not set(large) & main, "the large value was written by the main process"
    assert any(size < 100 and pid in main for pid, size in puts), "small values come back"


def test_log_of_a_task_without_output_explains_why_there_is_none(project):
    project.write_sleepers(1, 0)
    result = project.run("--log", "s0")
    assert result.exit_code == 4
    assert "has no log" in result.stderr
    assert project.run().ran == {"s0"}
    quiet = project.run("--log", "s0")
    assert quiet.exit_code == 4
    assert "printed nothing" in quiet.stderr


def test_stdout_buffer_and_breakpoint_work_under_capture(project):
    project.write("debughook.py", "def hook(*args, **kwargs):\n    print('IN THE DEBUGGER')\n")
    project.write(
        "task_dbg.py",
        """
        import sys

        def task_binary() -> None:
            sys.stdout.buffer.write(b"bytes written\\n")

        def task_dbg() -> None:
            print("captured before the breakpoint")
            breakpoint()
        """,
    )
    result = project.run(PYTHONBREAKPOINT="debughook.hook")
    assert result.exit_code == 0, result
    assert "IN THE DEBUGGER" in result.stdout, "capture is suspended at a breakpoint"
    assert "captured before the breakpoint" not in result.stdout
    assert "bytes written" not in result.stdout, "sys.stdout.buffer is captured too"
    assert "bytes written" in project.run("--log", "binary").stdout


def test_sigterm_stops_workers_and_leaves_no_partial_product(project):
    project.write(
        "task_term.py",
        """
        import os
        import time
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product

        def task_long(out: Annotated[Path, Product] = Path("long.txt")) -> None:
            out.write_text(str(os.getpid()))
            time.sleep(60)
        """,
    )
    process = subprocess.Popen(
        project.command("-j2", "--executor", "process"), cwd=project.path, env=project.env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    product = project.path / "long.txt"
    deadline = time.monotonic() + 30
    while not (product.exists() and product.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    worker = int(product.read_text())
    process.terminate()
    assert process.wait(timeout=30) == 2
    assert not product.exists()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker), "the worker outlived cpbuild"


def test_jobs_waiting_behind_a_crash_or_a_timeout_run_on_a_fresh_worker(project):
    # A worker holds the job it runs and, behind a quick function's task, the next one: the
    # next must not be lost when the one it waits behind crashes or times out.
    project.write(
        "task_mix.py",
        """
        import os
        import time
        from cpbuild import task
        from ranlog import ran

        for i in range(10):

            @task(name=f"t{i}", kwargs={"i": i}, timeout=0.5 if i == 6 else None)
            def step(i: int) -> int:
                if i == 3:
                    os._exit(3)
                if i == 6:
                    time.sleep(30)
                ran(f"t{i}")
                return i
        """,
    )
    result = project.run("-j1", "--executor", "process", "--keep-going", timeout=60)
    assert result.exit_code == 1, result
    assert "worker process running task_mix.py::t3 died (exit status 3)" in result.stdout
    assert "task_mix.py::t6 timed out after 0.5s" in result.stdout
    assert result.ran == {f"t{i}" for i in range(10)} - {"t3", "t6"}
    assert "8 ran" in result.output and "2 failed" in result.output


def test_a_reused_worker_captures_each_task_apart(project):
    project.write(
        "task_talk.py",
        """
        import subprocess
        import sys
        from cpbuild import task

        def task_a() -> int:
            print("from a")
            subprocess.run(["sh", "-c", "echo child of a; echo child error of a >&2"], check=True)
            return 1

        @task(capture=False)
        def task_b(a: int) -> int:
            print("uncaptured b", flush=True)
            return a + 1

        def task_c(b: int) -> int:
            print("from c")
            print("error of c", file=sys.stderr)
            return b + 1
        """,
    )
    result = project.run("-j1", "--executor", "process")
    assert result.exit_code == 0, result
    assert "uncaptured b" in result.stdout
    assert "from a" not in result.stdout and "from c" not in result.stdout
    log_a = project.run("--log", "a").stdout
    assert "from a" in log_a and "child of a" in log_a and "child error of a" in log_a
    assert "from c" not in log_a and "error of c" not in log_a
    log_c = project.run("--log", "c").stdout
    assert "from c" in log_c and "error of c" in log_c
    assert "of a" not in log_c and "uncaptured" not in log_c


def test_a_killed_build_leaves_its_workers_without_the_project_lock(project):
    # Workers forked from cpbuild must not keep what they inherited: the lock, other pipes.
    gate = project.write_gated()
    process = subprocess.Popen(project.command("-j2", "--executor", "process"), cwd=project.path,
                               env=project.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (project.path / "partial.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (project.path / "partial.txt").exists(), "the build never reached the waiting task"
    process.kill()  # SIGKILL: cpbuild cannot stop its workers itself
    process.wait()
    result = project.run("--no-wait", "--list")  # the worker may still run for a moment
    assert result.exit_code == 0, result
    gate.write_text("open")
    result = project.run("-j2", "--executor", "process")
    assert result.exit_code == 0, result
    assert project.read("partial.txt") == "complete"


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_values_finished_before_an_interrupt_are_kept_for_the_next_build(project, executor):
    # Small values are stored by the main process in batches: an interrupt must not lose them.
    gate = project.path / "gate"
    project.write(
        "task_values.py",
        f"""
        import time
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product
        from ranlog import ran

        def task_a() -> int:
            ran("a")
            return 42

        def task_b(a: int) -> dict:
            ran("b")
            return {{"from a": a}}

        def task_waits(b: dict, out: Annotated[Path, Product] = Path("partial.txt")) -> None:
            ran("waits")
            out.write_text("half written")
            while not Path({str(gate)!r}).exists():
                time.sleep(0.02)
            out.write_text(str(b["from a"]))
        """,
    )
    result = project.interrupt("--executor", executor, "-j2")
    assert result.exit_code == 2, result
    assert result.ran == {"a", "b", "waits"}
    gate.write_text("open")
    result = project.run("--executor", executor, "-j2")
    assert result.exit_code == 0, result
    assert result.ran == {"waits"}
    assert project.read("partial.txt") == "42"


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
def test_worker_processes_run_tasks_as_batch_jobs(project):
    project.write(
        "task_policy.py",
        """
        import os

        def task_policy() -> int:
            return os.sched_getscheduler(0)

        def task_show(policy: int) -> None:
            print("policy", policy)
        """,
    )
    result = project.run("-j2", "--executor", "process", "-s")
    assert result.exit_code == 0, result
    assert f"policy {os.SCHED_BATCH}" in result.stdout


def test_no_job_waits_behind_a_long_task_while_another_worker_is_free(project):
    project.write("timing.py", TIMING_HELPER)
    project.write(
        "task_mixed.py",
        """
        from cpbuild import task
        from timing import timed

        def task_long() -> None:
            timed("long", 1.5)

        for i in range(6):

            @task(name=f"quick{i}", kwargs={"i": i})
            def quick(i: int) -> None:
                timed(f"quick{i}", 0.001)
        """,
    )
    result = project.run("-j2", "--executor", "process")
    assert result.exit_code == 0, result
    spans = project.intervals()
    late = [name for name, (_, end) in spans.items() if name != "long" and end > spans["long"][1]]
    assert not late, f"{late} waited behind the long task"


def test_tasks_on_the_process_and_thread_executors_in_one_build(project):
    # The process executor is waited in (poll) while the thread executor resolves its tasks
    # from threads of its own: the scheduler must notice both.
    project.write(
        "task_both.py",
        """
        import time
        from cpbuild import task
        from ranlog import ran

        @task(executor="thread")
        def task_slow_thread() -> int:
            time.sleep(0.3)
            ran("slow_thread")
            return 1

        def task_quick_process() -> int:
            ran("quick_process")
            return 2

        @task(executor="thread")
        def task_after_process(quick_process: int) -> int:
            ran("after_process")
            return quick_process + 1

        def task_after_thread(slow_thread: int, after_process: int) -> int:
            ran("after_thread")
            return slow_thread + after_process
        """,
    )
    started = time.monotonic()
    result = project.run("-j2", "--executor", "process", timeout=60)
    assert result.exit_code == 0, result
    assert result.ran == {"slow_thread", "quick_process", "after_process", "after_thread"}
    assert time.monotonic() - started < 30


def test_workers_are_off_the_terminal_and_see_what_task_modules_set(project):
    # Forked or started, a worker has no controlling terminal (a task that opens /dev/tty to
    # prompt would otherwise be stopped by the kernel for ever) and sees the environment
    # variables and umask the task modules set at import.
    import pexpect

    project.write(
        "task_env.py",
        """
        import os

        os.environ["SET_AT_IMPORT"] = "yes"
        os.umask(0o027)

        def task_probe() -> tuple:
            try:
                open("/dev/tty").close()
                terminal = "has a terminal"
            except OSError:
                terminal = "no terminal"
            umask = os.umask(0o022)
            os.umask(umask)
            return terminal, os.environ.get("SET_AT_IMPORT"), oct(umask)

        def task_show(probe: tuple) -> None:
            print("probe", *probe)
        """,
    )
    child = pexpect.spawn(sys.executable, ["-m", "cpbuild", "-j2", "--executor", "process", "-s"],
                          cwd=str(project.path), env=project.env(), encoding="utf-8", timeout=30)
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    assert "probe no terminal yes 0o27" in child.before


def test_an_idle_process_pool_does_not_spin_while_a_thread_task_runs(project):
    import resource

    project.write(
        "task_sleepy.py",
        """
        import time
        from cpbuild import task

        @task(executor="thread")
        def task_sleepy() -> None:
            time.sleep(1.5)
        """,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = project.run("-j2", "--executor", "process")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.exit_code == 0, result
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 0.5, f"cpbuild used {cpu:.2f} s of CPU while its only task slept 1.5 s"


def test_after_a_failure_jobs_queued_in_workers_are_not_started(project):
    """Short jobs wait in a worker behind the one it runs; when a task fails, those not started
    yet must not run (fail-fast), although the worker already holds them."""
    project.write(
        "task_many.py",
        """
        import time
        from cpbuild import task
        from ranlog import ran

        for n in range(200):

            @task(id=str(n), kwargs={"n": n})
            def task_t(n: int) -> None:
                if n == 50:
                    raise ValueError("task 50 fails")
                ran(f"t{n}")
                time.sleep(0.001)  # short: about eight of them wait in each worker
        """,
    )
    result = project.run("-j2", "--executor", "process")
    assert result.exit_code == 1, result
    assert "task 50 fails" in result.stdout
    after = sorted(int(name[1:]) for name in result.ran if int(name[1:]) > 50)
    # The two workers each finish the task they had started, and perhaps the next; without
    # the stop notice they ran the eight or so each held (up to 16 each).
    assert len(after) <= 6, f"ran after the failure: {after}"
    assert "skipped" in result.stdout
