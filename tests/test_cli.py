"""The command line (DESIGN §4, §7, §9): listing, reports, cleaning, selection, root discovery,
configuration, plugins, entry points, output capture and executors."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

import cpbuild
from cpbuild.testing import Project

PIPELINE = """
from pathlib import Path
from typing import Annotated

from cpbuild import Product
from ranlog import ran


def task_raw(data: Path = Path("data.txt")) -> list[int]:
    ran("raw")
    return [int(x) for x in data.read_text().split()]


def task_total(raw: list[int]) -> int:
    ran("total")
    return sum(raw)


def task_report(total: int, out: Annotated[Path, Product] = Path("build/report.txt")) -> None:
    ran("report")
    out.write_text(f"total={total}\\n")


def task_copy(data: Path = Path("data.txt"), produces: Path = Path("build/copy.txt")) -> None:
    ran("copy")
    produces.write_text(data.read_text())
"""

PIPELINE_TASKS = {"raw", "total", "report", "copy"}

SELECTION = """
from cpbuild import mark, task
from ranlog import ran

for n in (10, 20):

    @task(id=str(n), kwargs={"n": n})
    def task_table(n: int) -> int:
        ran(f"table[{n}]")
        return n


def task_report() -> str:
    ran("report")
    return "report"


@mark.slow
def task_fit() -> int:
    ran("fit")
    return 1


@mark.slow
@mark.gpu
def task_train() -> int:
    ran("train")
    return 2
"""

SELECTION_TASKS = {"table[10]", "table[20]", "report", "fit", "train"}

KEY_EXTRA_PLUGIN = """
import os

from cpbuild.hookspecs import hookimpl

__version__ = "2.5"


@hookimpl
def cpbuild_key_extras(task):
    return {"env:MYVAR": os.environ.get("MYVAR", "")}
"""


def make_pipeline(project):
    project.write("task_pipeline.py", PIPELINE)
    project.write("data.txt", "1 2 3\n")
    return project


def list_lines(result) -> dict[str, str]:
    """``cpbuild --list`` as {task id: status}."""
    lines = {}
    for line in result.stdout.splitlines():
        if "::" in line:
            task_id, _, status = line.partition("  ")
            lines[task_id.strip()] = status.strip()
    return lines


# -- --list ----------------------------------------------------------------------------------


def test_list_before_the_first_build_shows_every_task_stale(project):
    make_pipeline(project)
    result = project.run("--list")
    assert result.exit_code == 0, result
    assert result.ran == set()
    lines = list_lines(result)
    assert set(lines) == {f"task_pipeline.py::{name}" for name in PIPELINE_TASKS}
    assert lines["task_pipeline.py::raw"] == "stale: never built"
    assert lines["task_pipeline.py::copy"] == "stale: never built"
    assert lines["task_pipeline.py::total"].startswith("stale: ")


def test_list_shows_up_to_date_and_stale_with_reason(project):
    make_pipeline(project)
    assert project.run().ran == PIPELINE_TASKS
    (project.path / "build/copy.txt").unlink()
    lines = list_lines(project.run("--list"))
    assert lines["task_pipeline.py::raw"] == "up to date"
    assert lines["task_pipeline.py::report"] == "up to date"
    assert lines["task_pipeline.py::copy"] == "stale: product build/copy.txt is missing"
    (project.path / "data.txt").write_text("4 5\n")
    lines = list_lines(project.run("--list"))
    assert lines["task_pipeline.py::raw"] == "stale: input data.txt changed"
    assert lines["task_pipeline.py::total"].startswith("stale: ")
    assert "raw" in lines["task_pipeline.py::total"]


# -- --json-report ----------------------------------------------------------------------------


def test_json_report_has_id_outcome_reasons_and_duration_per_task(project):
    make_pipeline(project)
    result = project.run("--json-report", "reports/build.json")
    assert result.exit_code == 0, result
    report = json.loads(project.read("reports/build.json"))
    assert report["exit_code"] == 0
    tasks = {t["id"]: t for t in report["tasks"]}
    assert set(tasks) == {f"task_pipeline.py::{name}" for name in PIPELINE_TASKS}
    for entry in tasks.values():
        assert entry["outcome"] == "ran"
        assert entry["reasons"] == ["never built"]
        assert isinstance(entry["duration"], float) and entry["duration"] >= 0
    project.run("--json-report", "reports/build.json")
    again = json.loads(project.read("reports/build.json"))
    assert {t["outcome"] for t in again["tasks"]} == {"up-to-date"}


def test_json_report_records_failed_and_skipped_tasks(project):
    project.write(
        "task_fail.py",
        """
        def task_broken() -> int:
            raise ValueError("bad data")

        def task_after(broken: int) -> int:
            return broken

        def task_fine() -> int:
            return 1
        """,
    )
    result = project.run("--keep-going", "--json-report", "report.json")
    assert result.exit_code == 1, result
    report = json.loads(project.read("report.json"))
    assert report["exit_code"] == 1
    tasks = {t["id"]: t for t in report["tasks"]}
    assert tasks["task_fail.py::broken"]["outcome"] == "failed"
    assert "ValueError: bad data" in tasks["task_fail.py::broken"]["error"]
    assert tasks["task_fail.py::after"]["outcome"] == "skipped"
    assert tasks["task_fail.py::after"]["reasons"] == ["upstream broken failed"]
    assert tasks["task_fail.py::fine"]["outcome"] == "ran"


def test_json_report_path_is_relative_to_the_invocation_folder(project):
    make_pipeline(project)
    project.write("cpbuild.toml", "")
    (project.path / "sub").mkdir()
    result = project.run("--json-report", "r.json", cwd=project.path / "sub")
    assert result.exit_code == 0, result
    assert (project.path / "sub/r.json").is_file()


# -- --clean ----------------------------------------------------------------------------------


def test_clean_deletes_all_products_and_the_next_build_reruns_them(project):
    make_pipeline(project)
    project.run()
    result = project.run("--clean")
    assert result.exit_code == 0, result
    assert result.ran == set()
    assert not (project.path / "build/report.txt").exists()
    assert not (project.path / "build/copy.txt").exists()
    assert (project.path / "data.txt").exists(), "inputs are not products"
    rebuilt = project.run()
    assert rebuilt.exit_code == 0, rebuilt
    assert {"report", "copy"} <= rebuilt.ran
    assert project.read("build/report.txt") == "total=6\n"


def test_clean_of_a_selected_task_deletes_only_its_products(project):
    make_pipeline(project)
    project.run()
    result = project.run("--clean", "copy")
    assert result.exit_code == 0, result
    assert "removed build/copy.txt" in result.stdout
    assert not (project.path / "build/copy.txt").exists()
    assert (project.path / "build/report.txt").exists()
    assert project.run().ran == {"copy"}


# -- selection: -k and -m ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "expression", "expected"),
    [
        ("-k", "table and not 10", {"table[20]"}),
        ("-k", "report", {"report"}),
        ("-k", "table or fit", {"table[10]", "table[20]", "fit"}),
        ("-m", "slow", {"fit", "train"}),
        ("-m", "not slow", {"table[10]", "table[20]", "report"}),
        ("-m", "slow and not gpu", {"fit"}),
    ],
)
def test_select_with_keyword_and_marker_expressions(project, option, expression, expected):
    project.write("task_sel.py", SELECTION)
    result = project.run(option, expression)
    assert result.exit_code == 0, result
    assert result.ran == expected


def test_keyword_selecting_nothing_exits_5(project):
    project.write("task_sel.py", SELECTION)
    result = project.run("-k", "nothing_matches_this")
    assert result.exit_code == 5, result
    assert "no tasks selected" in result.stderr


# -- root discovery and configuration ----------------------------------------------------------


def test_dash_C_runs_in_another_folder(project):
    make_pipeline(project)
    result = project.run("-C", project.path.name, cwd=project.path.parent)
    assert result.exit_code == 0, result
    assert result.ran == PIPELINE_TASKS
    assert project.read("build/report.txt") == "total=6\n"
    assert (project.path / ".cpbuild").is_dir()
    assert not (project.path.parent / ".cpbuild").exists()


def test_dash_C_to_a_missing_folder_is_a_usage_error(project):
    result = project.run("-C", "no-such-folder")
    assert result.exit_code == 4, result
    assert "no-such-folder" in result.stderr


def test_root_is_found_upward_from_a_subfolder(project):
    make_pipeline(project)
    project.write("cpbuild.toml", "")
    deep = project.path / "docs" / "deep"
    deep.mkdir(parents=True)
    result = project.run(cwd=deep)
    assert result.exit_code == 0, result
    assert result.ran == PIPELINE_TASKS
    assert (project.path / ".cpbuild").is_dir()
    assert not (deep / ".cpbuild").exists()
    assert project.run("report", cwd=deep).ran == set()


def test_tool_cpbuild_table_in_pyproject_is_honoured(project):
    make_pipeline(project)
    project.write(
        "pyproject.toml",
        """
        [project]
        name = "demo"

        [tool.cpbuild]
        default = ["copy"]
        cache_dir = "_cache"
        """,
    )
    (project.path / "sub").mkdir()
    result = project.run(cwd=project.path / "sub")
    assert result.exit_code == 0, result
    assert result.ran == {"copy"}
    assert (project.path / "_cache").is_dir()
    assert not (project.path / ".cpbuild").exists()


def test_pyproject_without_tool_cpbuild_is_not_a_root_marker(project):
    make_pipeline(project)
    project.write("cpbuild.toml", "")
    project.write("sub/pyproject.toml", '[project]\nname = "unrelated"\n')
    result = project.run(cwd=project.path / "sub")
    assert result.exit_code == 0, result
    assert result.ran == PIPELINE_TASKS


# -- --version --------------------------------------------------------------------------------


def test_version_shows_cpbuild_and_builtin_plugins_with_versions(project):
    result = project.run("--version")
    assert result.exit_code == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"cpbuild {cpbuild.__version__}")
    for name in ("terminal", "local", "inline", "thread", "python"):
        assert f"  {name}: built-in {cpbuild.__version__}" in lines


# -- plugins ----------------------------------------------------------------------------------


def test_config_plugin_key_extras_rerun_tasks_and_why_names_them(project):
    make_pipeline(project)
    project.write("myplugin.py", KEY_EXTRA_PLUGIN)
    project.write("cpbuild.toml", 'plugins = ["myplugin"]\n')
    first = project.run(MYVAR="one")
    assert first.exit_code == 0, first
    assert first.ran == PIPELINE_TASKS
    assert project.run(MYVAR="one").ran == set()
    why = project.run("--why", "raw", MYVAR="two")
    assert why.ran == set()
    assert "key extra env:MYVAR changed" in why.stdout, why
    assert project.run(MYVAR="two").ran == PIPELINE_TASKS


def test_dash_p_loads_a_plugin_module(project):
    make_pipeline(project)
    project.write("myplugin.py", KEY_EXTRA_PLUGIN)
    assert project.run("-p", "myplugin", MYVAR="one").ran == PIPELINE_TASKS
    assert project.run("-p", "myplugin", MYVAR="one").ran == set()
    assert project.run("-p", "myplugin", MYVAR="two").ran == PIPELINE_TASKS


def test_version_lists_a_dash_p_plugin_with_its_version(project):
    project.write("myplugin.py", KEY_EXTRA_PLUGIN)
    result = project.run("-p", "myplugin", "--version")
    assert result.exit_code == 0, result
    assert "  myplugin: 2.5" in result.stdout.splitlines()


def test_version_lists_plugins_named_in_the_config(project):
    project.write("myplugin.py", KEY_EXTRA_PLUGIN)
    project.write("cpbuild.toml", 'plugins = ["myplugin"]\n')
    result = project.run("--version")
    assert result.exit_code == 0, result
    assert "  myplugin: 2.5" in result.stdout.splitlines()


def test_config_plugin_in_the_project_root_loads_with_dash_C(project):
    make_pipeline(project)
    project.write("myplugin.py", KEY_EXTRA_PLUGIN)
    project.write("cpbuild.toml", 'plugins = ["myplugin"]\n')
    first = project.run("-C", project.path.name, cwd=project.path.parent, MYVAR="one")
    assert first.exit_code == 0, first
    assert first.ran == PIPELINE_TASKS
    assert project.run(MYVAR="two").ran == PIPELINE_TASKS


def test_unknown_plugin_is_a_usage_error(project):
    make_pipeline(project)
    result = project.run("-p", "no_such_plugin_module")
    assert result.exit_code == 4, result
    assert "no_such_plugin_module" in result.stderr


def test_dash_p_no_terminal_silences_output_but_builds(project):
    make_pipeline(project)
    result = project.run("-p", "no:terminal")
    assert result.exit_code == 0, result
    assert result.stdout == ""
    assert result.ran == PIPELINE_TASKS
    assert project.read("build/report.txt") == "total=6\n"


ENTRY_POINT_PLUGIN = """
from cpbuild.hookspecs import hookimpl


@hookimpl
def cpbuild_build_finish(session, summary):
    print(f"myplug saw {len(summary.reports)} tasks")
"""


@pytest.fixture
def installed_plugin(tmp_path):
    """A folder holding the plugin module ``myplug`` and its dist-info with an entry point in
    the ``cpbuild`` group, as pip would install it; put it on PYTHONPATH."""
    site = tmp_path / "site"
    write_plugin_package(site, "myplug-1.0.dist-info", "METADATA")
    return str(site)


def write_plugin_package(folder, info_name: str, metadata_name: str) -> None:
    """The module ``myplug`` in ``folder`` and its metadata folder ``info_name`` (dist-info as
    pip installs it, egg-info as setuptools leaves it in a source tree) with the entry point."""
    folder.mkdir()
    (folder / "myplug.py").write_text(ENTRY_POINT_PLUGIN)
    info = folder / info_name
    info.mkdir()
    (info / metadata_name).write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cpbuild]\nmyplug = myplug\n")


def test_entry_point_plugin_is_listed_with_its_version(project, installed_plugin):
    result = project.run("--version", PYTHONPATH=installed_plugin)
    assert result.exit_code == 0, result
    line = next((line for line in result.stdout.splitlines() if "myplug" in line), None)
    assert line is not None, result
    assert "1.0" in line


def test_entry_point_plugin_hooks_are_called(project, installed_plugin):
    make_pipeline(project)
    result = project.run(PYTHONPATH=installed_plugin)
    assert result.exit_code == 0, result
    assert "myplug saw 4 tasks" in result.stdout
    assert "myplug saw" not in project.run().stdout


def test_dash_p_no_blocks_an_entry_point_plugin(project, installed_plugin):
    make_pipeline(project)
    result = project.run("-p", "no:myplug", PYTHONPATH=installed_plugin)
    assert result.exit_code == 0, result
    assert "myplug saw" not in result.stdout
    version = project.run("-p", "no:myplug", "--version", PYTHONPATH=installed_plugin)
    assert "myplug" not in version.stdout


def test_a_plugin_declared_inside_one_project_stays_with_that_project(project, tmp_path):
    """Metadata in a project's own src/ (setuptools leaves egg-info there) is found through the
    project's import path; the environment cache, shared by the user's projects, must not
    carry it over to another project, nor the other project's answer back."""
    make_pipeline(project)
    write_plugin_package(project.path / "src", "myplug.egg-info", "PKG-INFO")
    other = Project(tmp_path / "other")  # beside it: the same user cache (see Project.env)
    make_pipeline(other)
    assert project.path.parent == other.path.parent
    assert "myplug saw 4 tasks" in project.run().stdout
    result = other.run()
    assert result.exit_code == 0, result
    assert "myplug" not in result.stdout + result.stderr
    assert "myplug saw" in project.run("-B").stdout


def test_a_user_without_a_home_folder_can_build(project):
    """No HOME and no passwd entry (a container run under a bare user id): nothing is cached
    in the user's cache folder, and the build works."""
    make_pipeline(project)
    env = {k: v for k, v in project.env().items() if k not in ("HOME", "XDG_CACHE_HOME")}
    code = "import pwd, sys; pwd.getpwuid = lambda uid: (_ for _ in ()).throw(KeyError(uid)); " \
           "from cpbuild.cli import main; sys.exit(main())"
    completed = subprocess.run([sys.executable, "-c", code], cwd=project.path, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "internal error" not in completed.stderr


def test_main_called_in_process_leaves_the_callers_frozen_objects_frozen(project):
    """The scheduler freezes what collection made (gc.freeze) and main() unfreezes it; objects
    a caller froze before calling main() (a pre-forking server) stay frozen."""
    make_pipeline(project)
    code = (
        "import gc, sys; gc.freeze(); before = gc.get_freeze_count()\n"
        "from cpbuild.cli import main\n"
        "code = main(['-j1'])\n"
        "print('frozen', before, gc.get_freeze_count(), 'enabled', gc.isenabled()); sys.exit(code)"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=project.path, env=project.env(),
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    _, before, after, _, enabled = completed.stdout.split()[-5:]
    # (a few frozen objects die meanwhile: the count may drop a little, never to zero)
    assert int(before) > 1000 and int(after) > int(before) * 0.9 and enabled == "True", completed.stdout
    code = "import gc; from cpbuild.cli import main; main(['-B']); print('frozen', gc.get_freeze_count())"
    completed = subprocess.run([sys.executable, "-c", code], cwd=project.path, env=project.env(),
                               capture_output=True, text=True, timeout=120)
    assert completed.stdout.split()[-2:] == ["frozen", "0"], completed.stdout + completed.stderr


# -- entry points of cpbuild itself ---------------------------------------------------------------


def test_python_dash_m_cpbuild(project):
    make_pipeline(project)
    completed = subprocess.run(
        [sys.executable, "-m", "cpbuild", "--list"],
        cwd=project.path,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "task_pipeline.py::report" in completed.stdout


@pytest.fixture
def console_script(project, monkeypatch):
    """Make ``project.run`` use the installed ``cpbuild`` console script."""
    script = shutil.which("cpbuild")
    if script is None:
        pytest.skip("the cpbuild console script is not installed")
    monkeypatch.setattr(project, "command", lambda *args: [script, *args])
    return script


def test_console_script_builds(project, console_script):
    make_pipeline(project)
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == PIPELINE_TASKS
    assert project.run().ran == set()


def test_console_script_loads_a_config_plugin_from_the_project_root(project, console_script):
    make_pipeline(project)
    project.write("myplugin.py", KEY_EXTRA_PLUGIN)
    project.write("cpbuild.toml", 'plugins = ["myplugin"]\n')
    first = project.run(MYVAR="one")
    assert first.exit_code == 0, first
    assert project.run(MYVAR="two").ran == PIPELINE_TASKS


# -- output capture ---------------------------------------------------------------------------

TALKING = """
import sys

from ranlog import ran


def task_talk() -> int:
    ran("talk")
    print("hello from the task")
    print("warning from the task", file=sys.stderr)
    return 1
"""


def test_output_of_a_successful_task_is_captured_and_not_shown(project):
    project.write("task_talk.py", TALKING)
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == {"talk"}
    assert "hello from the task" not in result.output
    assert "warning from the task" not in result.output


def test_dash_s_shows_task_output_live(project):
    project.write("task_talk.py", TALKING)
    result = project.run("-s")
    assert result.exit_code == 0, result
    assert result.ran == {"talk"}
    assert "hello from the task" in result.stdout
    assert "warning from the task" in result.stderr
    # printed while the task ran, before the reporter's line about it
    assert result.stdout.index("hello from the task") < result.stdout.index("ran         talk")


# -- executors ----------------------------------------------------------------------------------


def test_thread_executor_with_two_jobs_builds_correctly(project):
    make_pipeline(project)
    result = project.run("--executor", "thread", "-j", "2")
    assert result.exit_code == 0, result
    assert result.ran == PIPELINE_TASKS
    assert len(result.ran_list) == len(PIPELINE_TASKS)
    assert project.read("build/report.txt") == "total=6\n"
    assert project.read("build/copy.txt") == "1 2 3\n"
    assert project.run("--executor", "thread", "-j", "2").ran == set()
    (project.path / "data.txt").write_text("5 5\n")
    assert project.run("--executor", "thread", "-j", "2").ran == PIPELINE_TASKS
    assert project.read("build/report.txt") == "total=10\n"


def test_thread_executor_runs_independent_tasks_at_once(project):
    # Both tasks wait on one barrier for two parties: run one after the other, the first would
    # time out and fail.
    project.write(
        "sync.py",
        "import threading\n\nBARRIER = threading.Barrier(2, timeout=30)\n",
    )
    project.write(
        "task_pair.py",
        """
        import sync
        from ranlog import ran

        def task_left() -> str:
            sync.BARRIER.wait()
            ran("left")
            return "left"

        def task_right() -> str:
            sync.BARRIER.wait()
            ran("right")
            return "right"
        """,
    )
    result = project.run("--executor", "thread", "-j", "2")
    assert result.exit_code == 0, result
    assert result.ran == {"left", "right"}


def test_graph_export_formats(project):
    project.write(
        "task_g.py",
        """
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product

        def task_raw() -> int:
            return 1

        def task_out(raw: int, out: Annotated[Path, Product] = Path("out.txt")) -> None:
            out.write_text(str(raw))

        def task_read(src: Path = Path("out.txt")) -> str:
            return src.read_text()
        """,
    )
    import json

    data = json.loads(project.run("--graph", "json").stdout)
    edges = {(e["source"].split("::")[1], e["target"].split("::")[1], e["kind"]) for e in data["edges"]}
    assert edges == {("raw", "out", "value"), ("out", "read", "file or order")}
    mermaid = project.run("--graph", "mermaid").stdout
    assert mermaid.startswith("flowchart LR") and "-.->" in mermaid and "-->" in mermaid
    dot = project.run("--graph", "dot").stdout
    assert dot.startswith("digraph cpbuild") and '[label="read"]' in dot
    assert "<pre class=\"mermaid\">" in project.run("--graph", "html").stdout
    assert not (project.path / "out.txt").exists(), "exporting the graph runs nothing"


def test_profile_shows_phases_and_the_slowest_tasks(project):
    project.write(
        "task_p.py",
        """
        import time

        def task_slow() -> None:
            time.sleep(0.2)

        def task_quick() -> None:
            pass
        """,
    )
    result = project.run("--profile")
    assert result.exit_code == 0, result
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("cpbuild profile: collect"))
    assert "task_p.py::slow" in lines[header + 1], "the slowest task comes first"


def test_relative_dash_c_and_targets_relative_to_the_invocation_folder(project):
    project.write("sub/cpbuild.toml", "")
    project.write(
        "sub/task_o.py",
        """
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product

        def task_o(out: Annotated[Path, Product] = Path("out.txt")) -> None:
            out.write_text("o")
        """,
    )
    (project.path / "elsewhere").mkdir()
    result = project.run("-C", "../sub", "out.txt", cwd=project.path / "elsewhere")
    assert result.exit_code == 0, result
    assert project.read("sub/out.txt") == "o"


def test_clean_without_targets_cleans_every_task_not_only_the_defaults(project):
    project.write(
        "task_two.py",
        """
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product, task

        def task_a(out: Annotated[Path, Product] = Path("a.txt")) -> None:
            out.write_text("a")

        @task(default=True)
        def task_b(out: Annotated[Path, Product] = Path("b.txt")) -> None:
            out.write_text("b")
        """,
    )
    assert project.run("a", "b").exit_code == 0
    assert project.run("--clean").exit_code == 0
    assert not (project.path / "a.txt").exists() and not (project.path / "b.txt").exists()


def test_a_hasher_plugin_is_used_for_values_and_objects_alike(project):
    project.write(
        "blake.py",
        """
        import hashlib
        from cpbuild.hookspecs import hookimpl

        class Blake:
            name = "blake2b"

            def bytes_digest(self, data):
                return hashlib.blake2b(data).hexdigest()

            def file_digest(self, path):
                with open(path, "rb") as stream:
                    return hashlib.file_digest(stream, "blake2b").hexdigest()

        @hookimpl(tryfirst=True)
        def cpbuild_make_hasher(config):
            return Blake()
        """,
    )
    project.write("cpbuild.toml", 'plugins = ["blake"]\n')
    project.write(
        "task_v.py",
        "from ranlog import ran\n\ndef task_v() -> int:\n    ran('v')\n    return 1\n\n"
        "def task_w(v: int) -> int:\n    ran('w')\n    return v + 1\n",
    )
    first = project.run()
    assert first.exit_code == 0, first
    assert first.ran == {"v", "w"}
    second = project.run()
    assert second.exit_code == 0 and "corrupted" not in second.output, second
    assert second.ran == set()
    with contextlib.closing(sqlite3.connect(project.path / ".cpbuild/objects/pack.db")) as pack:
        digests = [row[0] for row in pack.execute("SELECT digest FROM objects")]
    assert digests and all(len(d) == 128 for d in digests)  # small values live in the pack
