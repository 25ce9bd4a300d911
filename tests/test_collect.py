"""Collecting tasks (DESIGN §3): pytask-style files, module names, ids, relative paths,
src-layout packages, ``Needs``, ``after`` and ``skip``."""

from __future__ import annotations

import pytest

# A task file as a pytask user writes it; only the import line differs between the variants.
PYTASK_BODY = """
from __future__ import annotations

from pathlib import Path
from typing import Annotated

IMPORT_LINE
from ranlog import ran


def task_create_data(produces: Path = Path("data/numbers.txt")) -> None:
    ran("create_data")
    produces.write_text("1 2 3 4\\n")


def task_total(
    data: Path = Path("data/numbers.txt"),
    path_to_total: Annotated[Path, PRODUCT] = Path("out/total.txt"),
) -> None:
    ran("total")
    numbers = [int(x) for x in data.read_text().split()]
    path_to_total.write_text(f"{sum(numbers)}\\n")


for factor in (2, 10):

    @TASK(id=str(factor), kwargs={"factor": factor, "produces": Path(f"out/scaled_{factor}.txt")})
    def task_scale(produces: Path, factor: int, data: Path = Path("data/numbers.txt")) -> None:
        ran(f"scale[{factor}]")
        numbers = [int(x) * factor for x in data.read_text().split()]
        produces.write_text(" ".join(map(str, numbers)) + "\\n")


@MARK.slow
def task_slow_report(
    total: Path = Path("out/total.txt"),
    produces: Path = Path("out/report.txt"),
) -> None:
    ran("slow_report")
    produces.write_text(f"total is {total.read_text().strip()}\\n")


@TASK
def summarize(total: Path = Path("out/total.txt")) -> str:
    ran("summarize")
    return f"sum={total.read_text().strip()}"
"""

PYTASK_VARIANTS = {
    "from-cpbuild-import": (
        "from cpbuild import Product, mark, task",
        {"PRODUCT": "Product", "TASK": "task", "MARK": "mark"},
    ),
    "import-cpbuild-as-pytask": (
        "import cpbuild as pytask",
        {"PRODUCT": "pytask.Product", "TASK": "pytask.task", "MARK": "pytask.mark"},
    ),
}


def pytask_file(variant: str) -> str:
    import_line, names = PYTASK_VARIANTS[variant]
    text = PYTASK_BODY.replace("IMPORT_LINE", import_line)
    for placeholder, name in names.items():
        text = text.replace(placeholder, name)
    return text


def list_ids(result) -> list[str]:
    """Task ids from ``cpbuild --list`` (the first column)."""
    return [line.split()[0] for line in result.stdout.splitlines() if "::" in line]


# -- pytask compatibility -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(PYTASK_VARIANTS))
def test_pytask_style_file_runs_with_only_its_import_changed(project, variant):
    project.write("task_pytask.py", pytask_file(variant))
    first = project.run()
    assert first.exit_code == 0, first
    assert first.ran == {"create_data", "total", "scale[2]", "scale[10]", "slow_report", "summarize"}
    assert len(first.ran_list) == 6
    assert project.read("data/numbers.txt") == "1 2 3 4\n"
    assert project.read("out/total.txt") == "10\n"
    assert project.read("out/scaled_2.txt") == "2 4 6 8\n"
    assert project.read("out/scaled_10.txt") == "10 20 30 40\n"
    assert project.read("out/report.txt") == "total is 10\n"
    second = project.run()
    assert second.exit_code == 0, second
    assert second.ran == set()


@pytest.mark.parametrize("variant", sorted(PYTASK_VARIANTS))
def test_pytask_markers_select_with_dash_m(project, variant):
    project.write("task_pytask.py", pytask_file(variant))
    listed = project.run("--list")
    assert listed.exit_code == 0, listed
    slow_line = next(line for line in listed.stdout.splitlines() if "slow_report" in line)
    assert "[slow]" in slow_line
    result = project.run("-m", "slow")
    assert result.exit_code == 0, result
    # the slow task and the tasks producing its inputs
    assert result.ran == {"create_data", "total", "slow_report"}


# -- module names -----------------------------------------------------------------------------


def test_two_task_files_with_the_same_name_in_different_folders(project):
    # Each folder's helper has its own name. Same-named sibling helpers in two folders (a/helpers.py
    # and b/helpers.py) would share one ``sys.modules["helpers"]``: a documented limit.
    project.write("a/helpers_a.py", "def label():\n    return 'from a'\n")
    project.write("b/helpers_b.py", "def label():\n    return 'from b'\n")
    for folder in ("a", "b"):
        project.write(
            f"{folder}/task_data.py",
            f"""
            from pathlib import Path
            from typing import Annotated

            from cpbuild import Product
            from helpers_{folder} import label
            from ranlog import ran


            def task_data(out: Annotated[Path, Product] = Path("out.txt")) -> None:
                ran("{folder}/data")
                out.write_text(label())
            """,
        )
    listed = project.run("--list")
    assert listed.exit_code == 0, listed
    assert sorted(list_ids(listed)) == ["a/task_data.py::data", "b/task_data.py::data"]
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == {"a/data", "b/data"}
    assert project.read("a/out.txt") == "from a"
    assert project.read("b/out.txt") == "from b"
    only_b = project.run("-B", "b/task_data.py::data")
    assert only_b.ran == {"b/data"}, only_b


# -- ids and names ------------------------------------------------------------------------------


def test_list_shows_ids_with_file_name_and_param_id(project):
    project.write(
        "task_x.py",
        """
        from cpbuild import task

        for n in (10, 100):

            @task(id=f"n{n}", kwargs={"n": n})
            def task_table(n: int) -> int:
                return n

        def task_plain() -> int:
            return 0
        """,
    )
    listed = project.run("--list")
    assert listed.exit_code == 0, listed
    assert list_ids(listed) == ["task_x.py::table[n10]", "task_x.py::table[n100]", "task_x.py::plain"]


def test_task_name_option_renames_the_task(project):
    project.write(
        "task_x.py",
        """
        from cpbuild import task
        from ranlog import ran

        @task(name="custom")
        def build_it() -> int:
            ran("custom")
            return 1

        def task_uses(custom: int) -> int:
            ran("uses")
            return custom + 1
        """,
    )
    listed = project.run("--list")
    assert list_ids(listed) == ["task_x.py::custom", "task_x.py::uses"], listed
    result = project.run("custom")
    assert result.exit_code == 0, result
    assert result.ran == {"custom"}
    assert project.run("uses").ran == {"uses"}


def test_parametrized_tasks_without_ids_get_ids_from_kwargs_values(project):
    project.write(
        "task_x.py",
        """
        from cpbuild import task

        for city in ("paris", "rome"):

            @task(kwargs={"city": city})
            def task_weather(city: str) -> str:
                return city

        for n, unit in ((1, "km"), (2, "mi")):

            @task(kwargs={"n": n, "unit": unit})
            def task_distance(n: int, unit: str) -> str:
                return f"{n}{unit}"
        """,
    )
    listed = project.run("--list")
    assert listed.exit_code == 0, listed
    assert list_ids(listed) == [
        "task_x.py::weather[paris]",
        "task_x.py::weather[rome]",
        "task_x.py::distance[1-km]",
        "task_x.py::distance[2-mi]",
    ]


# -- paths and working directory ------------------------------------------------------------


def test_relative_paths_are_relative_to_the_task_module_folder(project):
    project.write("in.txt", "root input\n")
    project.write("sub/in.txt", "sub input\n")
    project.write(
        "sub/task_sub.py",
        """
        from pathlib import Path

        from ranlog import ran

        def task_copy(source: Path = Path("in.txt"), produces: Path = Path("out/copy.txt")) -> None:
            ran("copy")
            produces.write_text(source.read_text())
        """,
    )
    result = project.run()
    assert result.exit_code == 0, result
    assert project.read("sub/out/copy.txt") == "sub input\n"
    assert not (project.path / "out").exists()


def test_tasks_run_with_the_project_root_as_working_directory(project):
    project.write("cpbuild.toml", "")
    project.write(
        "sub/task_where.py",
        """
        import os
        from pathlib import Path

        def task_where(produces: Path = Path("cwd.txt")) -> None:
            produces.write_text(os.getcwd())
        """,
    )
    result = project.run(cwd=project.path / "sub")
    assert result.exit_code == 0, result
    assert project.read("sub/cwd.txt") == str(project.path.resolve())


# -- src layout ---------------------------------------------------------------------------------


def make_src_layout(project):
    project.write("pyproject.toml", '[project]\nname = "mypkg"\n\n[tool.cpbuild]\npaths = ["src"]\n')
    project.write("src/mypkg/__init__.py", "")
    project.write(
        "src/mypkg/helpers.py",
        """
        def double(x):
            return 2 * x


        def triple(x):
            return 3 * x
        """,
    )
    project.write(
        "src/mypkg/task_pipe.py",
        """
        from pathlib import Path
        from typing import Annotated

        from cpbuild import Product
        from mypkg.helpers import double
        from ranlog import ran

        from .helpers import triple


        def task_doubled(out: Annotated[Path, Product] = Path("build/doubled.txt")) -> None:
            ran("doubled")
            out.write_text(str(double(21)))


        def task_tripled() -> int:
            ran("tripled")
            return triple(5)
        """,
    )


def test_src_layout_package_with_task_modules_inside(project):
    make_src_layout(project)
    listed = project.run("--list")
    assert list_ids(listed) == ["src/mypkg/task_pipe.py::doubled", "src/mypkg/task_pipe.py::tripled"], listed
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == {"doubled", "tripled"}
    assert project.read("src/mypkg/build/doubled.txt") == "42"
    assert project.run().ran == set()


def test_src_layout_package_code_is_tracked_as_project_code(project):
    make_src_layout(project)
    assert project.run().ran == {"doubled", "tripled"}
    helpers = project.read("src/mypkg/helpers.py")
    project.write("src/mypkg/helpers.py", helpers.replace("return 2 * x", "return x + x + 1"))
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == {"doubled"}
    assert project.read("src/mypkg/build/doubled.txt") == "43"
    project.write("src/mypkg/helpers.py", project.read("src/mypkg/helpers.py").replace("3 * x", "x * 4"))
    result = project.run()
    assert result.ran == {"tripled"}, result
    assert "`triple` in src/mypkg/helpers.py" in project.run("--why", "tripled", "-v").stdout


# -- dependencies: Needs, after -------------------------------------------------------------------


def test_needs_passes_a_task_value_under_any_parameter_name(project):
    project.write(
        "task_needs.py",
        """
        from pathlib import Path
        from typing import Annotated

        from cpbuild import Needs, Product, task
        from ranlog import ran

        def task_numbers() -> list[int]:
            ran("numbers")
            return [1, 2, 3]

        for n in (1, 2):

            @task(id=str(n), kwargs={"n": n})
            def task_table(n: int, numbers: list[int]) -> list[int]:
                return [n * x for x in numbers]

        def task_report(
            values: Annotated[list[int], Needs("numbers")],
            second: Annotated[list[int], Needs("table[2]")],
            out: Annotated[Path, Product] = Path("report.txt"),
        ) -> None:
            ran("report")
            out.write_text(f"{values} {second}")
        """,
    )
    result = project.run("report")
    assert result.exit_code == 0, result
    assert result.ran == {"numbers", "report"}
    assert project.read("report.txt") == "[1, 2, 3] [2, 4, 6]"


def test_parameter_named_after_a_parametrized_base_name_is_ambiguous(project):
    project.write(
        "task_ambiguous.py",
        """
        from cpbuild import task

        for n in (1, 2):

            @task(id=str(n), kwargs={"n": n})
            def task_table(n: int) -> int:
                return n

        def task_report(table: int) -> int:
            return table
        """,
    )
    result = project.run()
    assert result.exit_code == 2, result
    assert "task_ambiguous.py::report" in result.stderr
    assert "parameter 'table' matches several tasks" in result.stderr
    assert "table[1]" in result.stderr and "table[2]" in result.stderr


def test_after_orders_tasks_without_passing_data(project):
    project.write(
        "task_after.py",
        """
        from pathlib import Path

        from cpbuild import task
        from ranlog import ran

        @task(after="setup")
        def task_use() -> str:
            ran("use")
            return Path("state.txt").read_text()

        def task_setup() -> None:
            ran("setup")
            Path("state.txt").write_text("ready")
        """,
    )
    result = project.run("use")
    assert result.exit_code == 0, result
    assert result.ran_list == ["setup", "use"]
    assert project.run().ran == set()


# -- markers ------------------------------------------------------------------------------------


def test_skip_marker_skips_the_task_and_its_dependents(project):
    project.write(
        "task_skip.py",
        """
        from cpbuild import mark
        from ranlog import ran

        @mark.skip(reason="not ready yet")
        def task_heavy() -> int:
            ran("heavy")
            return 1

        def task_after_heavy(heavy: int) -> int:
            ran("after_heavy")
            return heavy + 1

        def task_light() -> int:
            ran("light")
            return 2
        """,
    )
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == {"light"}
    assert "skipped     heavy (not ready yet)" in result.stdout
    assert "skipped     after_heavy (upstream heavy was skipped)" in result.stdout
