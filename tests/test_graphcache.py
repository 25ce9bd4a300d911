"""The graph cache: a no-op does not import task modules, and anything that could change the
collected graph makes cpbuild collect again (cpbuild.graphcache)."""

from __future__ import annotations

import os

TASKS = """
from pathlib import Path
from typing import Annotated
from cpbuild import Product, task
from helpers import greeting
from ranlog import ran

ran("import")

def task_hello(out: Annotated[Path, Product] = Path("hello.txt")) -> None:
    ran("hello")
    out.write_text(greeting())
"""


def age(project, *relpaths, seconds=60):
    for relpath in relpaths:
        path = project.path / relpath
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - seconds * 1_000_000_000))


def make(project):
    project.write("helpers.py", "def greeting():\n    return 'hello'\n")
    project.write("task_hello.py", TASKS)
    age(project, "helpers.py", "task_hello.py", "ranlog.py")


def warm(project, cached: bool = True):
    """Build until the cache is written: the first build creates files in the project folder,
    whose modification time the cache watches (a module added there could be imported), and a
    cache is not written while something it watches changed a moment ago. With ``cached``, the
    next build must then use it: no task module is imported (they log "import")."""
    project.run()
    project.run()
    if cached:
        assert project.run().ran_list == [], "the graph cache was not used"


def test_a_no_op_does_not_import_the_task_modules(project):
    make(project)
    assert project.run().ran_list == ["import", "hello"]
    project.run()
    assert project.run().ran_list == [], "the cached graph answers: nothing imported"
    assert "all 1 task up to date" in project.run().stdout


def test_editing_a_task_module_or_a_helper_collects_again(project):
    make(project)
    project.run()
    (project.path / "helpers.py").write_text("def greeting():\n    return 'hi'\n")
    assert project.run().ran_list == ["import", "hello"]
    assert project.read("hello.txt") == "hi"
    project.write("task_hello.py", TASKS + "\n# a comment\n")
    assert project.run().ran_list == ["import"], "imported again; the comment reruns nothing"


def test_a_stale_task_falls_back_to_a_real_build(project):
    make(project)
    project.run()
    (project.path / "hello.txt").unlink()
    result = project.run()
    assert result.ran_list == ["import", "hello"], result
    assert project.read("hello.txt") == "hello"


def test_tasks_made_from_a_folder_listing_follow_new_files(project):
    project.write("data/a.csv", "1")
    project.write(
        "task_glob.py",
        """
        from pathlib import Path
        from cpbuild import task
        from ranlog import ran

        ran("import")
        for path in sorted(Path(__file__).parent.joinpath("data").glob("*.csv")):
            @task(id=path.stem, kwargs={"source": path})
            def task_load(source: Path) -> str:
                ran("load " + source.stem)
                return source.read_text()
        """,
    )
    age(project, "task_glob.py", "data/a.csv", "data")
    assert project.run().ran == {"import", "load a"}
    warm(project)
    project.write("data/b.csv", "2")
    assert project.run().ran == {"import", "load b"}, "the new file made a new task"


def test_tasks_that_depend_on_an_environment_variable_follow_it(project):
    project.write(
        "task_env.py",
        """
        import os
        from cpbuild import task
        from ranlog import ran

        ran("import")
        for name in os.environ.get("REGIONS", "north").split(","):
            @task(id=name, kwargs={"region": name})
            def task_region(region: str) -> str:
                ran(region)
                return region
        """,
    )
    age(project, "task_env.py")
    assert project.run(REGIONS="north").ran == {"import", "north"}
    assert project.run(REGIONS="north").ran == set(), "the graph cache was not used"
    assert project.run(REGIONS="north,south").ran == {"import", "south"}


def test_tasks_that_depend_on_a_file_existing_or_its_content_follow_it(project):
    project.write("ids.txt", "1\n")
    project.write(
        "task_files.py",
        """
        from pathlib import Path
        from cpbuild import task
        from ranlog import ran

        ran("import")
        here = Path(__file__).parent
        ids = (here / "ids.txt").read_text().split()
        if (here / "extra.flag").exists():
            ids.append("extra")
        for i in ids:
            @task(id=i, kwargs={"i": i})
            def task_item(i: str) -> str:
                ran(i)
                return i
        """,
    )
    age(project, "task_files.py", "ids.txt")
    assert project.run().ran == {"import", "1"}
    warm(project)
    (project.path / "ids.txt").write_text("1\n2\n")
    assert project.run().ran == {"import", "2"}
    warm(project)
    project.write("extra.flag", "")
    assert project.run().ran == {"import", "extra"}


def test_editing_the_configuration_collects_again(project):
    make(project)
    project.write("cpbuild.toml", "")
    age(project, "cpbuild.toml")
    project.run()
    project.write("cpbuild.toml", "jobs = 1\n")
    assert project.run().ran_list == ["import"]


def test_dry_run_and_list_use_the_cached_graph(project):
    make(project)
    warm(project)
    dry = project.run("-n")
    assert dry.ran_list == [] and "up to date  hello" in dry.stdout
    listed = project.run("--list")
    assert listed.ran_list == [] and "up to date" in listed.stdout


def tasks_from(expression):
    """A task module making one task per name in ``expression`` (evaluated at import)."""
    return f"""
import os, sys, json, pkgutil, subprocess
from pathlib import Path
from cpbuild import task
from ranlog import ran

HERE = Path(__file__).parent
ran("import")
for name in {expression}:
    @task(id=name, kwargs={{"name": name}})
    def task_item(name: str) -> str:
        ran(name)
        return name
"""


def test_an_import_that_failed_before_is_tried_again(project):
    project.write("task_opt.py", tasks_from("NAMES").replace(
        'ran("import")', 'ran("import")\ntry:\n    from extra import NAMES\nexcept ImportError:\n    NAMES = ["one"]'))
    warm(project)
    project.write("extra.py", 'NAMES = ["one", "two"]\n')
    assert "two" in project.run().ran


def test_data_read_through_the_import_system_is_watched(project):
    project.write("pkg/__init__.py", "")
    project.write("pkg/names.json", '["one"]')
    project.write("task_data.py", tasks_from('json.loads(pkgutil.get_data("pkg", "names.json"))'))
    warm(project)
    project.write("pkg/names.json", '["one", "two"]')
    assert "two" in project.run().ran


def test_sizes_from_a_folder_listing_and_permissions_are_watched(project):
    project.write("data/f1", "12345")
    project.write("tool.sh", "#!/bin/sh\n")
    project.write("task_meta.py", tasks_from(
        '[e.name + str(e.stat().st_size) for e in os.scandir(HERE / "data")]'
        ' + (["tool"] if os.access(HERE / "tool.sh", os.X_OK) else [])'))
    warm(project)
    project.write("data/f1", "1234567890123")
    assert project.run().ran == {"import", "f113"}
    (project.path / "tool.sh").chmod(0o755)
    assert project.run().ran == {"import", "tool"}


def test_a_file_changed_while_collecting_is_not_trusted(project):
    project.write("names.txt", "one\n")
    project.write("task_race.py", tasks_from(
        '(lambda names: (HERE.joinpath("names.txt").write_text("one\\n"), names)[1])'
        '(HERE.joinpath("names.txt").read_text().split())'))
    warm(project, cached=False)
    assert project.run().ran_list == ["import"], "rewritten during every collection: no cache"


def test_a_helper_outside_the_project_is_watched(project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "exthelper.py").write_text('NAMES = ["one"]\n')
    project.write("task_ext.py", tasks_from("NAMES").replace(
        'ran("import")', f'ran("import")\nsys.path.insert(0, {str(outside)!r})\nfrom exthelper import NAMES'))
    warm(project)
    (outside / "exthelper.py").write_text('NAMES = ["one", "two"]\n')
    assert "two" in project.run().ran


def test_a_subprocess_at_import_turns_the_cache_off(project):
    project.write("task_sub.py", tasks_from(
        'subprocess.check_output(["sh", "-c", "echo ${NAMES:-one}"], text=True).split(",")'))
    warm(project, cached=False)
    assert project.run().ran_list == ["import"]
    assert "two" in {n.strip() for n in project.run(NAMES="one,two").ran}


def test_environb_and_merged_environments_are_seen(project):
    project.write("task_envb.py", tasks_from(
        'os.environb.get(b"NAMES", b"one").decode().split(",")'
        ' + (["home"] if "HOME" in (os.environ | {}) else [])'))
    first = project.run(NAMES="one")
    assert "home" in first.ran, "os.environ | {} sees the real environment while recording"
    project.run(NAMES="one")
    assert "two" in project.run(NAMES="one,two").ran


def test_a_swapped_symlink_is_seen(project):
    project.write("d1/a", "")
    project.write("d2/a", "")
    project.write("d2/b", "")
    (project.path / "data").symlink_to(project.path / "d1")
    project.write("task_link.py", tasks_from("sorted(os.listdir(HERE / 'data'))"))
    warm(project)
    (project.path / "data").unlink()
    (project.path / "data").symlink_to(project.path / "d2")
    assert "b" in project.run().ran
