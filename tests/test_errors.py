"""Errors and failures (DESIGN §4, §6, §9): what the user sees, the exit code, and what is kept.

Collection errors exit 2 with a short message and no traceback from cpbuild's own code; a
failing task exits 1 with its trimmed traceback and captured output, deletes what it half-wrote
and records nothing; bad configuration and bad options are usage errors (exit 4); an empty
project exits 5. Nothing built earlier is lost when a later build fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sqlite3
from pathlib import Path

import pytest

#: cpbuild's own source folder: no traceback frame shown to users may come from here.
CPBUILD_DIR = str(Path(importlib.util.find_spec("cpbuild").origin).resolve().parent)

#: The most lines a collection error may take on stderr ("a short message").
SHORT = 6

PRODUCTS = """
from pathlib import Path
from typing import Annotated

from cpbuild import Product
from ranlog import ran


def task_first(out: Annotated[Path, Product] = Path("build/first.txt")) -> None:
    ran("first")
    out.write_text("first\\n")


def task_second(first: None, out: Annotated[Path, Product] = Path("build/second.txt")) -> int:
    ran("second")
    out.write_text("second\\n")
    return 2
"""


# -- helpers ----------------------------------------------------------------------------------


def traceback_frames(output: str) -> list[str]:
    """The file names of every traceback frame in ``output``."""
    return re.findall(r'^\s*File "([^"]+)", line \d+', output, flags=re.MULTILINE)


def assert_no_cpbuild_frames(result) -> None:
    """A traceback may be the user's, but none of its frames may be cpbuild's own code."""
    ours = [f for f in traceback_frames(result.output) if f.startswith(CPBUILD_DIR)]
    assert not ours, result


def assert_collection_error(result, *fragments: str) -> None:
    """Exit 2, nothing ran, a short message naming every fragment, no traceback at all."""
    assert result.exit_code == 2, result
    assert result.ran == set(), result
    assert "Traceback" not in result.output, result
    assert len(result.stderr.strip().splitlines()) <= SHORT, result
    for fragment in fragments:
        assert fragment in result.output, (fragment, result)


def assert_usage_error(result, *fragments: str) -> None:
    """Exit 4, nothing ran, no traceback, a message naming every fragment."""
    assert result.exit_code == 4, result
    assert result.ran == set(), result
    assert "Traceback" not in result.output, result
    for fragment in fragments:
        assert fragment in result.output, (fragment, result)


def write_tasks(project, body: str, name: str = "task_x.py") -> None:
    """A task module with the usual imports, then ``body``."""
    header = (
        "from pathlib import Path\n"
        "from typing import Annotated\n\n"
        "from cpbuild import Product\n"
        "from ranlog import ran\n"
    )
    project.write(name, header + body)


def write_one_task(project) -> None:
    write_tasks(project, '\n\ndef task_hello() -> str:\n    ran("hello")\n    return "hi"\n')


def line_with(output: str, fragment: str) -> str:
    """The first line of ``output`` that holds ``fragment`` (the message about it)."""
    lines = [line for line in output.splitlines() if fragment in line]
    assert lines, f"{fragment!r} not in output:\n{output}"
    return lines[0]


def suggestions(output: str, pattern: str) -> list[str]:
    """The comma-separated names that ``pattern``'s group captures, e.g. the close names."""
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not in output:\n{output}"
    return [name.strip() for name in match.group(1).split(",")]


# -- collection errors (exit 2) ---------------------------------------------------------------


def test_dependency_cycle_prints_the_cycle(project):
    write_tasks(
        project,
        """
def task_a(b: int) -> int:
    ran("a")
    return b


def task_b(a: int) -> int:
    ran("b")
    return a
""",
    )
    result = project.run()
    assert_collection_error(result, "cycle")
    assert "a -> b -> a" in result.output or "b -> a -> b" in result.output, result


def test_two_producers_of_one_file_name_both_tasks_and_the_file(project):
    write_tasks(
        project,
        """
def task_one(out: Annotated[Path, Product] = Path("build/out.txt")) -> None:
    ran("one")
    out.write_text("one")


def task_two(out: Annotated[Path, Product] = Path("build/out.txt")) -> None:
    ran("two")
    out.write_text("two")
""",
    )
    assert_collection_error(project.run(), "build/out.txt", "task_x.py::one", "task_x.py::two")


def test_input_that_neither_exists_nor_is_produced_names_task_and_path(project):
    write_tasks(
        project,
        """
def task_read(data: Path = Path("data/missing.csv")) -> str:
    ran("read")
    return data.read_text()
""",
    )
    assert_collection_error(project.run(), "task_x.py::read", "data/missing.csv")


def test_unresolvable_parameter_names_it_and_the_nearest_tasks(project):
    write_tasks(
        project,
        """
def task_squares() -> list[int]:
    ran("squares")
    return [1, 4, 9]


def task_total(square: list[int]) -> int:
    ran("total")
    return sum(square)
""",
    )
    assert_collection_error(project.run(), "task_x.py::total", "'square'", "squares")


def test_nearest_task_names_are_not_repeated(project):
    write_tasks(
        project,
        """
def task_squares() -> list[int]:
    return [1, 4, 9]


def task_total(square: list[int]) -> int:
    return sum(square)
""",
    )
    names = suggestions(project.run().output, r"nearest task names: (.*)$")
    assert len(names) == len(set(names)), names


def test_syntax_error_names_file_and_line(project):
    project.write("task_ok.py", 'from ranlog import ran\n\n\ndef task_ok():\n    ran("ok")\n')
    project.write("task_bad.py", "from ranlog import ran\n\n\ndef task_bad(:\n    pass\n")
    result = project.run()
    assert_collection_error(result, "task_bad.py:4", "SyntaxError")


def test_syntax_error_in_an_imported_helper_names_the_helper_file(project):
    project.write("helpers.py", "X = 1\n\ndef broken(:\n    pass\n")
    project.write(
        "task_uses_helper.py",
        "from helpers import X\n\n\ndef task_a() -> int:\n    return X\n",
    )
    assert_collection_error(project.run(), "helpers.py:3", "SyntaxError")


def test_every_broken_task_file_is_reported_at_once(project):
    project.write("task_bad.py", "def task_bad(:\n    pass\n")
    project.write("task_imports.py", "import nonexistent_module_xyz\n")
    result = project.run()
    assert result.exit_code == 2, result
    assert "task_bad.py:1" in result.output, result
    assert "task_imports.py" in result.output, result
    assert_no_cpbuild_frames(result)


def test_import_error_names_file_and_shows_the_users_line(project):
    project.write("task_ok.py", 'from ranlog import ran\n\n\ndef task_ok():\n    ran("ok")\n')
    project.write("task_imports.py", "import os\nimport nonexistent_module_xyz\n")
    result = project.run()
    assert result.exit_code == 2, result
    assert result.ran == set(), result
    assert "task_imports.py" in result.output, result
    assert "import nonexistent_module_xyz" in result.output, result
    assert "ModuleNotFoundError" in result.output, result
    assert_no_cpbuild_frames(result)


# -- unknown target (usage error, exit 4) -----------------------------------------------------


def test_unknown_target_suggests_close_names(project):
    write_tasks(
        project,
        """
def task_report() -> str:
    ran("report")
    return "r"
""",
    )
    assert_usage_error(project.run("reprot"), "reprot", "did you mean", "report")


def test_target_suggestions_are_not_repeated(project):
    write_tasks(project, '\n\ndef task_report() -> str:\n    return "r"\n')
    names = suggestions(project.run("reprot").output, r"did you mean:? ([^?(]*)")
    assert len(names) == len(set(names)), names


# -- a task that fails (exit 1) ---------------------------------------------------------------

FAILING = """
def task_boom() -> int:
    ran("boom")
    print("about to divide by zero")
    return 1 // 0


def task_later() -> int:
    ran("later")
    return 2


def task_down(boom: int) -> int:
    ran("down")
    return boom + 1
"""


def test_failing_task_shows_its_line_exception_and_captured_stdout(project):
    write_tasks(project, FAILING)
    result = project.run("boom")
    assert result.exit_code == 1, result
    assert result.ran == {"boom"}
    assert "return 1 // 0" in result.output, result
    assert "ZeroDivisionError" in result.output, result
    assert "about to divide by zero" in result.output, result
    assert_no_cpbuild_frames(result)


def test_downstream_of_a_failure_does_not_run(project):
    write_tasks(project, FAILING)
    result = project.run("down")
    assert result.exit_code == 1, result
    assert result.ran_list == ["boom"], result


def test_default_starts_no_new_task_after_the_first_failure(project):
    write_tasks(project, FAILING)
    result = project.run("-j", "1")
    assert result.exit_code == 1, result
    assert result.ran_list == ["boom"], result


def test_keep_going_runs_independent_tasks_but_not_downstream_ones(project):
    write_tasks(project, FAILING)
    result = project.run("-j", "1", "--keep-going")
    assert result.exit_code == 1, result
    assert result.ran_list == ["boom", "later"], result


def test_failed_task_deletes_the_product_it_half_wrote(project):
    write_tasks(
        project,
        """
def task_write(out: Annotated[Path, Product] = Path("build/out.txt")) -> None:
    ran("write")
    out.write_text("half")
    raise RuntimeError("disk full")
""",
    )
    result = project.run()
    assert result.exit_code == 1, result
    assert "disk full" in result.output, result
    assert not (project.path / "build/out.txt").exists()


def test_failed_task_records_nothing_so_the_next_build_runs_it_again(project):
    # The failure depends on an environment variable, which is not part of the key. Its
    # product is deleted, which alone would make a record stale: --why shows there is none.
    write_tasks(
        project,
        """
import os


def task_flaky(out: Annotated[Path, Product] = Path("build/out.txt")) -> int:
    ran("flaky")
    out.write_text("done\\n")
    if os.environ.get("FLAKY_FAIL"):
        raise RuntimeError("flaky failure")
    return 1
""",
    )
    failed = project.run(FLAKY_FAIL="1")
    assert failed.exit_code == 1, failed
    assert not (project.path / "build/out.txt").exists()
    assert "never built" in project.run("--why", "flaky").stdout
    again = project.run()
    assert again.exit_code == 0, again
    assert again.ran == {"flaky"}
    assert project.read("build/out.txt") == "done\n"
    assert project.run().ran == set()


def test_failed_value_task_records_nothing(project):
    write_tasks(
        project,
        """
import os


def task_flaky() -> int:
    ran("flaky")
    if os.environ.get("FLAKY_FAIL"):
        raise RuntimeError("flaky failure")
    return 1
""",
    )
    assert project.run(FLAKY_FAIL="1").exit_code == 1
    again = project.run()
    assert again.exit_code == 0, again
    assert again.ran == {"flaky"}


@pytest.mark.parametrize(
    ("expression", "type_name"),
    [("(x for x in range(3))", "generator"), ("threading.Lock()", "_thread.lock")],
)
def test_unpicklable_return_value_names_the_task_and_the_type(project, expression, type_name):
    write_tasks(
        project,
        f"""
import threading


def task_unpicklable():
    ran("unpicklable")
    return {expression}
""",
    )
    result = project.run()
    assert result.exit_code == 1, result
    assert result.ran == {"unpicklable"}
    assert "task_x.py::unpicklable" in line_with(result.output, type_name), result
    assert "Traceback" not in result.output, result
    assert project.run().ran == {"unpicklable"}, "a failed task has no record"


def test_declared_product_not_created_names_task_and_product(project):
    write_tasks(
        project,
        """
def task_forget(out: Annotated[Path, Product] = Path("build/never.txt")) -> None:
    ran("forget")
""",
    )
    result = project.run()
    assert result.exit_code == 1, result
    assert result.ran == {"forget"}
    assert "forget" in line_with(result.output, "build/never.txt"), result
    assert "Traceback" not in result.output, result


# -- configuration (usage errors, exit 4) -----------------------------------------------------

CONFIG_FILES = [
    pytest.param("cpbuild.toml", "", id="cpbuild.toml"),
    pytest.param("pyproject.toml", "[tool.cpbuild]\n", id="pyproject.toml"),
]


@pytest.mark.parametrize(("filename", "header"), CONFIG_FILES)
def test_unknown_config_key_names_file_and_key_and_suggests_the_close_one(
    project, filename, header
):
    write_one_task(project)
    project.write(filename, header + "job = 2\n")
    assert_usage_error(project.run(), filename, "'job'", "did you mean 'jobs'")


@pytest.mark.parametrize(("filename", "header"), CONFIG_FILES)
def test_wrong_config_type_names_file_and_key(project, filename, header):
    write_one_task(project)
    project.write(filename, header + 'jobs = "two"\n')
    assert_usage_error(project.run(), filename, "'jobs'")


@pytest.mark.parametrize(("filename", "header"), CONFIG_FILES)
def test_invalid_toml_names_the_file(project, filename, header):
    write_one_task(project)
    project.write(filename, header + "jobs = \n")
    assert_usage_error(project.run(), filename, "invalid TOML")


# -- command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--no-such-option"], ["-j", "0"], ["-j", "two"]],
    ids=["unknown-option", "zero-jobs", "non-integer-jobs"],
)
def test_bad_command_line_is_a_usage_error(project, args):
    write_one_task(project)
    assert_usage_error(project.run(*args), args[0])


def test_no_tasks_collected_exits_5(project):
    project.write("helpers.py", "X = 1\n")
    result = project.run()
    assert result.exit_code == 5, result
    assert "no tasks collected" in result.output, result
    assert "Traceback" not in result.output, result


# -- nothing built is lost on an error --------------------------------------------------------


def test_collection_error_keeps_earlier_products_and_fixing_reruns_nothing(project):
    project.write("task_products.py", PRODUCTS)
    first = project.run()
    assert first.exit_code == 0, first
    assert first.ran == {"first", "second"}
    good = project.read("task_products.py")
    project.write("task_products.py", good.replace("def task_second(", "def task_second(:"))
    broken = project.run()
    assert_collection_error(broken, "task_products.py:")
    assert project.read("build/first.txt") == "first\n"
    assert project.read("build/second.txt") == "second\n"
    project.write("task_products.py", good)
    fixed = project.run()
    assert fixed.exit_code == 0, fixed
    assert fixed.ran == set()


def test_a_task_module_that_exits_at_import_is_a_collection_error(project):
    project.write("task_exits.py", "import sys\n\nsys.exit(0)\n\ndef task_a():\n    pass\n")
    result = project.run()
    assert result.exit_code == 2, result
    assert "task_exits.py" in result.stderr and "SystemExit" in result.stderr


def test_a_damaged_state_database_is_named_with_what_to_do(project):
    project.write("task_a.py", "def task_a() -> int:\n    return 1\n")
    assert project.run().exit_code == 0
    (project.path / ".cpbuild" / "state.db").write_bytes(b"this is not a database" * 100)
    for name in ("state.db-wal", "state.db-shm"):
        (project.path / ".cpbuild" / name).unlink(missing_ok=True)
    result = project.run()
    assert result.exit_code == 3, result
    assert "state.db" in result.stderr and "delete it" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unwritable_report_path_is_an_error_without_traceback(project):
    project.write("task_a.py", "def task_a() -> int:\n    return 1\n")
    (project.path / "blocker").write_text("a file, not a folder")
    result = project.run("--json-report", "blocker/report.json")
    assert result.exit_code == 4, result
    assert "blocker" in result.stderr and "Traceback" not in result.stderr


def test_remote_cache_without_a_plugin_is_a_config_error(project):
    project.write("task_a.py", "def task_a() -> int:\n    return 1\n")
    project.write("cpbuild.toml", 'remote_cache = "sftp://host/cache"\n')
    result = project.run()
    assert result.exit_code == 4
    assert "remote_cache" in result.stderr and "plugin" in result.stderr


VALUES = """
from ranlog import ran

def task_v() -> int:
    ran("v")
    return 41

def task_w(v: int) -> int:
    ran("w")
    return v + 1
"""


def test_a_corrupted_value_is_reported_deleted_and_rebuilt(project):
    project.write("task_values.py", VALUES)
    assert project.run().ran == {"v", "w"}
    with contextlib.closing(sqlite3.connect(project.path / ".cpbuild/objects/pack.db")) as pack:
        pack.execute("UPDATE objects SET data = X'00'")
        pack.commit()
    project.write("task_values.py", VALUES.replace("v + 1", "v + 2"))
    result = project.run()  # w runs again and loads v's value, which no longer matches its digest
    assert result.exit_code == 1, result
    assert result.ran == set()
    assert "is corrupted; it is deleted and will be rebuilt" in result.stdout
    assert "rebuild its producer with cpbuild -B" in result.stdout
    result = project.run()  # v's value is missing now: v runs again, then w
    assert result.exit_code == 0, result
    assert result.ran == {"v", "w"}


def test_a_damaged_value_pack_is_named_with_what_to_do(project):
    project.write("task_values.py", VALUES)
    assert project.run().exit_code == 0
    for name in ("pack.db-wal", "pack.db-shm"):
        (project.path / ".cpbuild/objects" / name).unlink(missing_ok=True)
    (project.path / ".cpbuild/objects/pack.db").write_bytes(b"this is not a database" * 100)
    result = project.run()
    assert result.exit_code == 3, result
    assert "pack.db cannot be used" in result.stderr and "delete it" in result.stderr
    assert "Traceback" not in result.output
