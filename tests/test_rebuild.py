"""What reruns and what does not (DESIGN §5): code, constants, inputs, products, values."""

from __future__ import annotations

import os
import shutil

import pytest

PIPELINE = """
from pathlib import Path
from typing import Annotated

from cpbuild import Product, task
from helpers import clean_row, scale
from ranlog import ran

FACTOR = 3
UNUSED = 10


def task_raw(data: Path = Path("data.txt")) -> list[int]:
    ran("raw")
    return [clean_row(line) for line in data.read_text().split()]


def task_scaled(raw: list[int]) -> list[int]:
    ran("scaled")
    return [scale(x) for x in raw]


def task_total(scaled: list[int]) -> int:
    ran("total")
    return sum(scaled) * FACTOR


def task_report(total: int, out: Annotated[Path, Product] = Path("build/report.txt")) -> None:
    ran("report")
    out.write_text(f"total={total}\\n")


for n in (10, 100):

    @task(id=str(n), kwargs={"n": n})
    def task_table(n: int, scaled: list[int]) -> str:
        ran(f"table[{n}]")
        return f"{n}: {scaled[:n]}"
"""

HELPERS = """
def clean_row(text):
    return int(text.strip())


def scale(x):
    return x * 2
"""

ALL = {"raw", "scaled", "total", "report", "table[10]", "table[100]"}


def make_pipeline(project):
    project.write("task_pipeline.py", PIPELINE)
    project.write("helpers.py", HELPERS)
    project.write("data.txt", "1 2 3\n")
    return project


def edit(project, relpath, old, new):
    text = project.read(relpath)
    assert old in text, f"{old!r} not in {relpath}"
    project.write(relpath, text.replace(old, new))


def test_first_build_runs_everything_second_nothing(project):
    make_pipeline(project)
    first = project.run()
    assert first.exit_code == 0, first
    assert first.ran == ALL
    assert len(first.ran_list) == len(ALL)
    assert project.read("build/report.txt") == "total=36\n"
    second = project.run()
    assert second.exit_code == 0, second
    assert second.ran == set()
    assert "all 6 tasks up to date" in second.stdout


def test_comment_docstring_and_formatting_edits_run_nothing(project):
    make_pipeline(project)
    assert project.run().ran == ALL
    edit(project, "task_pipeline.py", "def task_scaled(raw: list[int]) -> list[int]:\n",
         "def task_scaled(raw: list[int])   ->   list[int]:  # doubles\n"
         '    """Scale every value; a docstring is documentation, not code."""\n')
    edit(project, "helpers.py", "return x * 2", "return (x\n            * 2)  # twice")
    edit(project, "task_pipeline.py", "FACTOR = 3", "# the factor\nFACTOR = 3  # keep")
    result = project.run()
    assert result.exit_code == 0, result
    assert result.ran == set()


def test_helper_edit_reruns_its_caller_and_only_changed_values_downstream(project):
    make_pipeline(project)
    project.run()
    edit(project, "helpers.py", "return x * 2", "return x * 3")
    result = project.run()
    assert result.ran == ALL - {"raw"}
    # clean_row is called by raw only; an edit that keeps its value reruns raw, nothing else
    edit(project, "helpers.py", "return int(text.strip())", "return int(text)")
    result = project.run()
    assert result.ran == {"raw"}, result


def test_early_cutoff_when_a_rerun_task_returns_an_equal_value(project):
    make_pipeline(project)
    project.run()
    edit(project, "task_pipeline.py", "return sum(scaled) * FACTOR", "return FACTOR * sum(scaled)")
    result = project.run()
    assert result.ran == {"total"}


def test_module_constants_are_tracked_by_value(project):
    make_pipeline(project)
    project.run()
    edit(project, "task_pipeline.py", "UNUSED = 10", "UNUSED = 11")
    assert project.run().ran == set()
    edit(project, "task_pipeline.py", "FACTOR = 3", "FACTOR = 4")
    result = project.run()
    assert result.ran == {"total", "report"}
    assert project.read("build/report.txt") == "total=48\n"


def test_touch_runs_nothing_content_change_reruns_and_going_back_reruns_nothing(project):
    make_pipeline(project)
    project.run()
    data = project.path / "data.txt"
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert project.run().ran == set()
    data.write_text("1 2 3 4\n")
    assert project.run().ran == ALL
    data.write_text("1 2 3\n")
    result = project.run()
    assert result.ran == {"report"}, "value tasks find their earlier records; the file product is rewritten"
    assert project.read("build/report.txt") == "total=36\n"
    assert project.run().ran == set()


@pytest.mark.parametrize("jobs", ["-j1", "-j2"])
def test_deleted_or_edited_product_reruns_only_its_producer(project, jobs):
    """With -j2 the workers hash the products they wrote; the records must match the files."""
    make_pipeline(project)
    project.run(jobs)
    assert project.run(jobs).ran == set()
    (project.path / "build/report.txt").unlink()
    assert "product build/report.txt is missing" in project.run("--why", "report").stdout
    result = project.run(jobs)
    assert result.ran == {"report"}
    report = project.path / "build/report.txt"
    stat = report.stat()
    report.write_text("total=99\n")  # same size, same time stamp: only the content tells
    os.utime(report, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    why = project.run("--why", "report")
    assert "product build/report.txt was modified" in why.stdout
    assert why.ran == set()
    assert project.run(jobs).ran == {"report"}
    assert project.read("build/report.txt") == "total=36\n"


def test_product_path_target_builds_its_task_and_upstream_only(project):
    make_pipeline(project)
    result = project.run("build/report.txt")
    assert result.exit_code == 0, result
    assert result.ran == {"raw", "scaled", "total", "report"}


def test_parametrized_instance_as_target(project):
    make_pipeline(project)
    result = project.run("table[10]")
    assert result.exit_code == 0, result
    assert result.ran == {"raw", "scaled", "table[10]"}
    assert project.run("table").ran == {"table[100]"}


def test_argument_change_reruns_only_that_instance_and_why_names_it(project):
    make_pipeline(project)
    project.run()
    edit(project, "task_pipeline.py", "for n in (10, 100):", "for n in (10, 200):")
    result = project.run()
    assert result.ran == {"table[200]"}


def test_dry_run_names_every_task_and_runs_nothing(project):
    make_pipeline(project)
    project.run()
    edit(project, "helpers.py", "return x * 2", "return x * 5")
    result = project.run("-n")
    assert result.exit_code == 0, result
    assert result.ran == set()
    lines = result.stdout.splitlines()
    assert "up to date  raw" in lines
    assert "would run   scaled: code of `scale` in helpers.py changed" in lines
    assert "would run   total: upstream scaled would run" in lines
    assert any(line.startswith("would run   table[10]") for line in lines)
    assert project.run().ran == ALL - {"raw"}


def test_why_names_the_changed_part(project):
    make_pipeline(project)
    project.run()
    edit(project, "helpers.py", "return x * 2", "return x * 7")
    assert "code of `scale` in helpers.py changed" in project.run("--why", "scaled").stdout
    project.run()
    (project.path / "data.txt").write_text("4 5 6\n")
    assert "input data.txt changed" in project.run("--why", "raw").stdout
    project.run()
    edit(project, "task_pipeline.py", "FACTOR = 3", "FACTOR = 9")
    assert "constant `FACTOR` in task_pipeline.py: 3 -> 9" in project.run("--why", "total").stdout


def test_why_names_argument_with_old_and_new_value(project):
    project.write(
        "task_args.py",
        """
        from cpbuild import task
        from ranlog import ran

        @task(kwargs={"n": 10})
        def task_table(n: int) -> int:
            ran("table")
            return n
        """,
    )
    project.run()
    edit(project, "task_args.py", '"n": 10', '"n": 20')
    why = project.run("--why", "table")
    assert "argument n: 10 -> 20" in why.stdout, why
    why_v = project.run("--why", "table", "-v")
    assert "argument  n = 20" in why_v.stdout


def test_class_bodies_methods_and_bases_are_tracked(project):
    project.write(
        "models.py",
        """
        class Base:
            offset = 1

        class Model(Base):
            def __init__(self, k):
                self.k = k

            def predict(self, x):
                return self.k * x + self.offset
        """,
    )
    project.write(
        "task_model.py",
        """
        from models import Model
        from ranlog import ran

        def task_fit() -> int:
            ran("fit")
            return Model(2).predict(3)

        def task_other() -> int:
            ran("other")
            return 1
        """,
    )
    assert project.run().ran == {"fit", "other"}
    edit(project, "models.py", "offset = 1", "offset = 2")
    assert project.run().ran == {"fit"}
    edit(project, "models.py", "self.k = k", "self.k = k + 0")
    assert project.run().ran == {"fit"}


def test_editing_one_task_of_a_module_reruns_only_that_task(project):
    tasks = "\n".join(
        f"def task_t{i}() -> int:\n    ran('t{i}')\n    return {i}\n" for i in range(10)
    )
    project.write("task_many.py", "from ranlog import ran\n\n" + tasks)
    assert len(project.run().ran) == 10
    edit(project, "task_many.py", "return 3\n", "return 3 + 0\n")
    assert project.run().ran == {"t3"}


def test_force_reruns_selected_tasks(project):
    make_pipeline(project)
    project.run()
    assert project.run("-B", "raw").ran == {"raw"}


def test_cache_false_always_runs(project):
    project.write(
        "task_nocache.py",
        """
        from cpbuild import task
        from ranlog import ran

        @task(cache=False)
        def task_stamp() -> None:
            ran("stamp")

        def task_fixed() -> int:
            ran("fixed")
            return 1
        """,
    )
    assert project.run().ran == {"stamp", "fixed"}
    assert project.run().ran == {"stamp"}


def test_third_party_library_is_tracked_by_version(project, tmp_path):
    # An installed library is identified by its distribution's version, not by its code.
    site = tmp_path / "site"
    site.mkdir()
    (site / "mylib.py").write_text("def greet():\n    return 'hello'\n")

    def install(version: str) -> None:
        for old in site.glob("*.dist-info"):
            shutil.rmtree(old)
        dist_info = site / f"mylib-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mylib\nVersion: {version}\n")
        (dist_info / "top_level.txt").write_text("mylib\n")
        (dist_info / "RECORD").write_text(f"mylib.py,,\nmylib-{version}.dist-info/METADATA,,\n")

    project.write(
        "task_lib.py",
        """
        import mylib
        from ranlog import ran

        def task_uses_lib() -> str:
            ran("uses_lib")
            return mylib.greet()
        """,
    )
    install("1.0")
    assert project.run(PYTHONPATH=str(site)).ran == {"uses_lib"}
    assert project.run(PYTHONPATH=str(site)).ran == set()
    why = project.run("--why", "uses_lib", "-v", PYTHONPATH=str(site))
    assert "library   mylib: 1.0" in why.stdout, why
    install("1.1")
    assert project.run(PYTHONPATH=str(site)).ran == {"uses_lib"}, "a new version reruns its users"
    assert project.run(PYTHONPATH=str(site)).ran == set()


def test_return_to_earlier_code_reruns_nothing_for_value_tasks(project):
    make_pipeline(project)
    project.run()
    edit(project, "helpers.py", "return x * 2", "return x * 4")
    assert project.run().ran == ALL - {"raw"}
    edit(project, "helpers.py", "return x * 4", "return x * 2")
    assert project.run().ran == {"report"}
    assert project.read("build/report.txt") == "total=36\n"


def age(project, *relpaths, seconds=60):
    """Make files look old, so that cpbuild remembers what it read from them (it does not
    remember files modified within the last 100 ms, which could change again unseen)."""
    for relpath in relpaths:
        path = project.path / relpath
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - seconds * 1_000_000_000))


def test_remembered_code_analyses_are_dropped_when_a_file_changes(project):
    make_pipeline(project)
    age(project, "task_pipeline.py", "helpers.py", "data.txt")
    assert project.run().ran == ALL
    assert project.run().ran == set(), "second build: analyses come from the code cache"
    edit(project, "helpers.py", "return x * 2", "return x * 3")
    assert project.run().ran == ALL - {"raw"}
    age(project, "helpers.py")
    edit(project, "task_pipeline.py", "return sum(scaled) * FACTOR", "return sum(scaled) * FACTOR + 1")
    age(project, "task_pipeline.py")
    assert project.run().ran == {"total", "report"}
    assert project.run().ran == set()


def test_memory_storage_reruns_producers_whose_values_are_needed_again(project):
    project.write("cpbuild.toml", 'storage = "memory"\n')
    make_pipeline(project)
    assert project.run().ran == ALL
    # Records survive in the state database, values do not survive the process: a task
    # whose value another selected task consumes reruns to provide it; the others do not.
    second = project.run("-v")
    assert second.exit_code == 0, second
    assert second.ran == {"raw", "scaled", "total"}
    assert "its value is missing from the store" in second.stdout


def test_same_size_edits_within_one_second_never_run_stale_bytecode(project):
    """CPython trusts a .pyc whose source has the same size and mtime second; cpbuild must not
    run the old code of a helper edited and rebuilt within the same second."""
    project.write("helpers.py", "def value():\n    return 1\n")
    project.write(
        "task_v.py",
        """
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product
        from helpers import value

        def task_v(out: Annotated[Path, Product] = Path("out.txt")) -> None:
            out.write_text(str(value()))
        """,
    )
    for n in (1, 2, 3, 4):
        if n > 1:
            edit(project, "helpers.py", f"return {n - 1}", f"return {n}")
        result = project.run(PYTHONDONTWRITEBYTECODE="")  # let Python write .pyc files
        assert result.exit_code == 0, result
        assert project.read("out.txt") == str(n)


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_helper_edited_while_the_build_runs_is_seen_by_the_next_build(project, executor):
    """The key describes the code that was imported and ran, not the file as it is later."""
    gate = project.path / "gate"
    project.write("helpers.py", 'def value():\n    return "old"\n')
    project.write(
        "task_slow.py",
        f"""
        import time
        from pathlib import Path
        from typing import Annotated
        from cpbuild import Product
        from helpers import value
        from ranlog import ran

        def task_slow() -> int:
            ran("slow")
            Path({str(project.path / "started")!r}).write_text("yes")
            while not Path({str(gate)!r}).exists():
                time.sleep(0.01)
            return 1

        def task_use(slow: int, out: Annotated[Path, Product] = Path("out.txt")) -> None:
            ran("use")
            out.write_text(value())
        """,
    )
    import subprocess

    process = subprocess.Popen(project.command("-j2", "--executor", executor), cwd=project.path, env=project.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = project.path / "started"
    import time

    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    edit(project, "helpers.py", '"old"', '"new"')  # while slow runs; use has not run yet
    gate.write_text("open")
    assert process.wait(timeout=60) == 0, process.communicate()
    assert project.read("out.txt") == "old", "the build ran the code it imported"
    again = project.run()
    assert again.ran == {"use"}, "the edit made after the import must rerun its user"
    assert project.read("out.txt") == "new"


def test_mutual_recursion_gives_the_same_key_whatever_is_selected(project):
    project.write(
        "helpers.py",
        """
        def d():
            return 1

        def a(n):
            return b(n - 1) + d() if n else 0

        def b(n):
            return a(n - 1) if n else 0
        """,
    )
    project.write(
        "task_rec.py",
        """
        from helpers import a, b
        from ranlog import ran

        def task_first() -> int:
            ran("first")
            return a(3)

        def task_second() -> int:
            ran("second")
            return b(3)
        """,
    )
    assert project.run().ran == {"first", "second"}
    edit(project, "helpers.py", "return 1", "return 2")
    assert "would run   second" in project.run("second", "-n").stdout
    assert "would run   second" in project.run("-n").stdout
    assert project.run().ran == {"first", "second"}


def test_names_bound_in_nested_scopes_do_not_hide_globals(project):
    project.write("helpers.py", "def scale(x):\n    return 2 * x\n")
    project.write(
        "task_scopes.py",
        """
        from helpers import scale
        from ranlog import ran

        class Model:
            def setup(self):
                scale = 3  # a local of another method
                return scale

            def fit(self, x):
                return scale(x)

        def task_fit() -> int:
            ran("fit")
            return Model().fit(2)

        def task_inner() -> int:
            ran("inner")

            def local():
                scale = 1
                return scale

            return scale(5) + local()
        """,
    )
    assert project.run().ran == {"fit", "inner"}
    edit(project, "helpers.py", "2 * x", "3 * x")
    assert project.run().ran == {"fit", "inner"}


def test_classes_defined_in_functions_are_told_apart(project):
    project.write(
        "runners.py",
        """
        def make_a():
            class Impl:
                def run(self):
                    return "a"
            return Impl()

        def make_b():
            class Impl:
                def run(self):
                    return "b"
            return Impl()

        RUNNER = make_b()
        """,
    )
    project.write(
        "task_runner.py",
        """
        from runners import RUNNER
        from ranlog import ran

        def task_use() -> str:
            ran("use")
            return RUNNER.run()
        """,
    )
    assert project.run().ran == {"use"}
    edit(project, "runners.py", 'return "b"', 'return "B"')
    assert project.run().ran == {"use"}
    edit(project, "runners.py", 'return "a"', 'return "A"')
    assert project.run().ran == set(), "make_a's class is another class than the one in use"


def test_named_tuple_enum_and_dataclass_constants_are_tracked_by_value(project):
    project.write(
        "settings.py",
        """
        import enum
        from dataclasses import dataclass
        from typing import NamedTuple

        class Point(NamedTuple):
            x: int
            y: int

        class Mode(enum.Enum):
            FAST = 1
            SLOW = 2

        @dataclass(frozen=True)
        class Config:
            rate: float

        ORIGIN = Point(0, 0)
        MODE = Mode.FAST
        CONFIG = Config(0.5)
        """,
    )
    project.write(
        "task_settings.py",
        """
        from settings import CONFIG, MODE, ORIGIN
        from ranlog import ran

        def task_origin() -> int:
            ran("origin")
            return ORIGIN.x

        def task_mode() -> str:
            ran("mode")
            return MODE.name

        def task_config() -> float:
            ran("config")
            return CONFIG.rate
        """,
    )
    assert project.run().ran == {"origin", "mode", "config"}
    edit(project, "settings.py", "ORIGIN = Point(0, 0)", "ORIGIN = Point(1, 0)")
    assert project.run().ran == {"origin"}
    edit(project, "settings.py", "MODE = Mode.FAST", "MODE = Mode.SLOW")
    assert project.run().ran == {"mode"}
    edit(project, "settings.py", "CONFIG = Config(0.5)", "CONFIG = Config(0.7)")
    assert project.run().ran == {"config"}
