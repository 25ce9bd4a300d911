"""The dask executor, through the real ``cpbuild`` CLI: a local cluster the plugin starts, and a
scheduler and workers started here as separate processes (``--dask-address``).

Concurrency is checked from the tasks' own start/end timestamps, so cluster start-up does not
count. Workers of the external cluster run in another folder without the project on their
path: task functions and project helpers reach them by value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

PIPELINE = """
from pathlib import Path
from typing import Annotated

from cpbuild import Product
from helpers import double
from ranlog import ran


def task_numbers() -> list[int]:
    ran("numbers")
    return list(range(5))


def task_doubled(numbers: list[int]) -> list[int]:
    ran("doubled")
    return [double(n) for n in numbers]


def task_total(doubled: list[int]) -> int:
    ran("total")
    return sum(doubled)


def task_write(
    doubled: list[int], total: int, out: Annotated[Path, Product] = Path("build/out.txt")
) -> None:
    ran("write")
    out.write_text(" ".join(map(str, doubled)) + f" = {total}")
"""

HELPERS = """
def double(n):
    return 2 * n
"""

ALL = {"numbers", "doubled", "total", "write"}

def pipeline(project) -> None:
    project.write("cpbuild.toml", "")
    project.write("helpers.py", HELPERS)
    project.write("task_pipeline.py", PIPELINE)


def report(project, name: str = "report.json") -> dict[str, dict]:
    return {t["name"]: t for t in json.loads(project.read(name))["tasks"]}


# -- without a cluster -----------------------------------------------------------------------


def test_version_lists_the_plugin(project):
    result = project.run("--version")
    assert result.exit_code == 0, result
    assert "dask: cpbuild-dask 0.1.0" in result.stdout


def test_importing_the_plugin_does_not_import_dask():
    code = "import sys, cpbuild_dask; print(sorted({'dask', 'distributed'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("dask_workers = '2'", "key 'dask_workers' must be an integer >= 1, got str '2'"),
        ("dask_workers = 0", "key 'dask_workers' must be an integer >= 1"),
        ("dask_address = 8786", "key 'dask_address' must be a scheduler address"),
    ],
)
def test_bad_configuration_names_the_file_and_key(project, toml, message):
    pipeline(project)
    project.write("cpbuild.toml", toml + "\n")
    result = project.run("--executor", "dask")
    assert result.exit_code == 4, result
    assert str(project.path / "cpbuild.toml") in result.stderr
    assert message in result.stderr
    assert result.ran == set()


def test_unreachable_scheduler_is_a_usage_error(project):
    pipeline(project)
    result = project.run(
        "--executor", "dask", "--dask-address", "tcp://127.0.0.1:1",
        DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s",
    )
    assert result.exit_code == 4, result
    assert "cannot connect to the dask scheduler at tcp://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


# -- a local cluster started by the plugin ---------------------------------------------------


def test_builds_products_and_values_on_a_local_cluster(project):
    pipeline(project)
    result = project.run("-j", "2", "--executor", "dask", "--json-report", "report.json")
    assert result.exit_code == 0, result
    assert result.ran == ALL
    assert project.read("build/out.txt") == "0 2 4 6 8 = 20"
    tasks = report(project)
    assert {t["executor"] for t in tasks.values()} == {"dask"}
    assert all(t["worker"].startswith("tcp://127.0.0.1:") for t in tasks.values()), tasks
    again = project.run("-j", "2", "--executor", "dask")
    assert again.exit_code == 0, again
    assert again.ran == set()


def test_two_independent_tasks_run_in_parallel(project):
    project.write("cpbuild.toml", "")
    project.write_sleepers(2, 1.0)
    result = project.run("-j2", "--executor", "dask")
    assert result.exit_code == 0, result
    assert result.ran == {"s0", "s1"}
    spans = project.intervals().values()
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    assert wall < 1.6, f"two 1 s tasks took {wall:.2f} s with -j2 on dask"


def test_a_crash_or_timeout_fails_only_its_task(project):
    project.write("cpbuild.toml", "")
    project.write(
        "task_bad.py",
        """
        import os
        import time

        from cpbuild import task
        from ranlog import ran


        def task_boom() -> int:
            raise ValueError("boom")


        def task_die() -> int:
            os._exit(3)


        @task(timeout=1)
        def task_slow() -> int:
            time.sleep(60)
            return 1


        def task_ok() -> int:
            ran("ok")
            return 2


        def task_after(ok: int) -> int:
            ran("after")
            return ok + 1
        """,
    )
    start = time.monotonic()
    result = project.run("-j2", "--executor", "dask", "--keep-going", "--json-report", "report.json")
    assert time.monotonic() - start < 40, "a crash or a timeout held the build up"
    assert result.exit_code == 1, result
    tasks = report(project)
    assert result.ran == {"ok", "after"}, (result, tasks)
    assert {n: t["outcome"] for n, t in tasks.items()} == {
        "boom": "failed", "die": "failed", "slow": "failed", "ok": "ran", "after": "ran",
    }
    assert "ValueError: boom" in tasks["boom"]["error"]
    assert "dask worker running task_bad.py::die died" in tasks["die"]["error"]
    assert "timed out after 1s" in tasks["slow"]["error"]


def test_sigint_stops_the_build_and_leaves_no_partial_product(project):
    project.write("cpbuild.toml", "")
    gate = project.write_gated()
    result = project.interrupt("--executor", "dask", "-j2")
    assert result.exit_code == 2, result
    assert result.stopped_in < 5, "stopping the local cluster took too long"
    assert not (project.path / "partial.txt").exists(), "the interrupted task's product was left behind"
    assert project.read("quick.txt") == "done"
    gate.write_text("open")
    result = project.run("--executor", "dask", "-j2")
    assert result.exit_code == 0, result
    assert result.ran == {"waits"}
    assert project.read("partial.txt") == "complete"


# -- an external scheduler and workers -------------------------------------------------------


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A ``dask scheduler`` and a ``dask worker`` (2 processes, 1 thread each) as subprocesses,
    in a folder of their own; yields (scheduler address, worker addresses)."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask-cluster")
    scheduler_file = folder / "scheduler.json"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    processes: list[subprocess.Popen] = []

    def start(*args: str, name: str) -> None:
        log = open(folder / f"{name}.log", "w")  # the child keeps its own copy
        processes.append(subprocess.Popen(
            [sys.executable, "-m", *args], cwd=folder, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
        log.close()

    try:
        start(
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
            "--no-dashboard", "--scheduler-file", str(scheduler_file), name="scheduler",
        )
        deadline = time.monotonic() + 30
        while not scheduler_file.is_file() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or processes[0].poll() is not None:
                pytest.fail(f"the dask scheduler did not start:\n{(folder / 'scheduler.log').read_text()}")
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        start(
            "distributed.cli.dask_worker", address, "--nworkers", "2", "--nthreads", "1",
            "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(folder / "work"),
            name="worker",
        )
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            workers = set(client.scheduler_info()["workers"])
        yield address, workers
    finally:
        for process in reversed(processes):
            _stop(process)


def external(project) -> None:
    """The pipeline, with ``ran`` logging to a fixed path: workers started by the fixture do
    not have the test's environment variables."""
    pipeline(project)
    project.write(
        "ranlog.py",
        f"""
        def ran(name):
            with open({str(project.log)!r}, "a") as log:
                log.write(name + "\\n")
        """,
    )


def test_builds_on_an_external_cluster(project, dask_cluster):
    address, workers = dask_cluster
    external(project)
    args = ("-j2", "--executor", "dask", "--dask-address", address, "--json-report", "report.json")
    result = project.run(*args)
    assert result.exit_code == 0, result
    assert result.ran == ALL
    assert project.read("build/out.txt") == "0 2 4 6 8 = 20"
    tasks = report(project)
    assert {t["executor"] for t in tasks.values()} == {"dask"}
    assert {t["worker"] for t in tasks.values()} <= workers, (tasks, workers)
    again = project.run(*args)
    assert again.exit_code == 0, again
    assert again.ran == set()


def test_command_line_address_overrides_the_configuration(project, dask_cluster):
    address, workers = dask_cluster
    external(project)
    # The configured address is unreachable: the build works only if the option wins.
    project.write(
        "cpbuild.toml", 'executor = "dask"\ndask_address = "tcp://127.0.0.1:1"\nstorage = "memory"\n'
    )
    result = project.run("-j2", "--dask-address", address, "--json-report", "report.json")
    assert result.exit_code == 0, result
    assert result.ran == ALL
    assert project.read("build/out.txt") == "0 2 4 6 8 = 20"
    assert {t["worker"] for t in report(project).values()} <= workers


def test_configured_address(project, dask_cluster):
    address, workers = dask_cluster
    external(project)
    project.write("cpbuild.toml", f'executor = "dask"\ndask_address = "{address}"\n')
    result = project.run("-j2", "--json-report", "report.json")
    assert result.exit_code == 0, result
    assert result.ran == ALL
    assert {t["worker"] for t in report(project).values()} <= workers
