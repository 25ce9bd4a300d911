"""The command line (DESIGN §9): parse, configure, collect, select, build, exit.

``main`` is the only place that turns errors into exit codes: ``CpbuildError`` subclasses carry
a message for the user; anything else is cpbuild's own bug (exit 3, with the traceback).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
import threading
from pathlib import Path
from typing import Any

from cpbuild.errors import CollectionError, ConfigError, CpbuildError, ExitCode, UsageError

#: ``--graph`` formats (cpbuild.export renders them; not imported here, to keep startup lean).
GRAPH_FORMATS = ("mermaid", "dot", "json", "html")


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad usage; cpbuild's usage errors exit with 4."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{message} (cpbuild --help lists the options)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cpbuild",
        description="Build the default targets, or the given ones: tasks are functions in "
        "task_*.py files; a task reruns only when its code, arguments, inputs or upstream "
        "values changed.",
    )
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="task name or id, product path, or task file (default: the default targets)")
    add = parser.add_argument
    add("-j", "--jobs", type=int, metavar="N", help="run up to N tasks at once (default: config 'jobs' or 1)")
    add("-n", "--dry-run", action="store_true", help="show what would run and why; run nothing")
    add("-k", dest="keyword", metavar="EXPR", help="select tasks whose id matches EXPR (pytest syntax: and, or, not)")
    add("-m", dest="marker", metavar="MARKEXPR", help="select tasks by markers (e.g. 'slow and not gpu')")
    add("-B", "--force", action="store_true", help="run the selected tasks even if up to date")
    add("--keep-going", action="store_true", help="after a failure, build everything that does not depend on it")
    add("--list", action="store_true", help="list tasks with their status (up to date or stale)")
    add("--why", metavar="TARGET", help="explain why TARGET would run (with -v: every part of its key)")
    add("--clean", action="store_true", help="delete the products of the selected tasks (default: all tasks)")
    add("--executor", metavar="NAME", help="executor for tasks without their own (inline, thread, ...)")
    add("--queue", dest="queues", action="append", default=[], metavar="NAME=N",
        help="run at most N tasks of queue NAME at once (repeatable; overrides [queues])")
    add("--log", metavar="TASK", help="print the output of TASK's last run")
    add("--profile", action="store_true", help="after the build, show where cpbuild's time went and the slowest tasks")
    add("--graph", choices=GRAPH_FORMATS, metavar="FORMAT",
        help="print the selected tasks' graph as mermaid, dot, json (node-link) or html")
    add("--no-wait", action="store_true", help="fail instead of waiting when another cpbuild holds the project")
    add("-s", dest="no_capture", action="store_true", help="do not capture the tasks' output")
    add("-v", "--verbose", action="count", default=0, help="more output (repeatable)")
    add("-q", "--quiet", action="count", default=0, help="less output (repeatable)")
    add("-p", dest="plugins", action="append", default=[], metavar="NAME",
        help="load plugin module NAME; -p no:NAME disables a plugin")
    add("-C", dest="directory", metavar="DIR", help="run as if started in DIR")
    add("--json-report", metavar="PATH", help="write a JSON report of the build to PATH")
    add("-w", "--watch", action="store_true", help="build, then rebuild what each edit affects until Ctrl-C")
    add("--restart", action="store_true", help="with --watch: cancel running tasks when their inputs change")
    add("--clear", action="store_true", help="with --watch: clear the screen before each cycle")
    add("--version", action="store_true", help="show the version and the loaded plugins")
    return parser


def _early(argv: list[str]) -> tuple[list[str], Path]:
    """``-p`` and ``-C`` are needed before the full parser exists (plugins add options)."""
    plugins: list[str] = []
    directory = Path.cwd()
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg == "--":
            break
        for flag, setter in (("-p", plugins.append), ("-C", None)):
            value = None
            if arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
                next(it, None)
            elif arg.startswith(flag) and len(arg) > 2 and not arg.startswith("--"):
                value = arg[2:].lstrip("=")
            if value is not None:
                if setter is None:
                    directory = Path(value)
                else:
                    setter(value)
    return plugins, directory


def run() -> None:
    """The console script and ``python -m cpbuild``: ``main``, then a fast exit.

    When no task ran in this process (a no-op, ``-n``, ``--list``, a build whose tasks all ran
    in worker processes), the interpreter's teardown — freeing every collected task, function
    and module one by one — costs about a tenth of the whole command on a few thousand tasks,
    and buys nothing: the state is closed and the output flushed. Then the atexit handlers run
    and the process exits at once. When a task ran here, its objects may hold unflushed files,
    so the normal exit is kept.
    """
    invocation = Invocation()
    code = main(invocation=invocation)
    if invocation.tasks_ran:
        raise SystemExit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


class Invocation:
    """What one command did that its caller may need: whether task code ran in this process."""

    tasks_ran = False


def main(argv: list[str] | None = None, invocation: Invocation | None = None) -> int:
    """Run one cpbuild command and return its exit code."""
    # Collecting thousands of tasks allocates many long-lived objects and few cycles; the cyclic
    # collector would scan them again and again (about 10% of a no-op). The scheduler turns it
    # back on before the first task runs, with those objects frozen; both are undone on return.
    collecting = gc.isenabled()
    frozen = gc.get_freeze_count()
    gc.disable()
    argv = sys.argv[1:] if argv is None else list(argv)
    invocation = invocation or Invocation()
    _stop_on_termination()
    try:
        return int(_main(argv, invocation))
    finally:
        if not frozen and gc.get_freeze_count():  # frozen by the scheduler: collectable again
            gc.unfreeze()
        if collecting:
            gc.enable()


def _main(argv: list[str], invocation: Invocation) -> ExitCode:
    try:
        return _command(argv, invocation)
    except CollectionError as error:
        _error_lines("collection failed", error.errors)
        return error.exit_code
    except CpbuildError as error:
        print(f"cpbuild: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cpbuild: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (cpbuild --list | head): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.INTERRUPTED
    except OSError as error:  # the file system refused: a cache folder, a report path
        where = f"{error.filename}: " if error.filename else ""
        print(f"cpbuild: error: {where}{error.strerror or error}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except Exception:
        import traceback

        traceback.print_exc()
        print("cpbuild: internal error (a bug in cpbuild or a plugin; please report it with the "
              "traceback above)", file=sys.stderr)
        return ExitCode.INTERNAL_ERROR


def _stop_on_termination() -> None:
    """SIGTERM and SIGHUP (a closed terminal, a CI timeout) stop a build as Ctrl-C does: workers
    are stopped, half-written products deleted, nothing half-done recorded."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, interrupt)


def _error_lines(title: str, errors: list[str]) -> None:
    stream = sys.stderr
    stream.write(f"cpbuild: {title}:\n" if len(errors) > 1 else "cpbuild: error: ")
    for message in errors:
        text = message.replace("\n", "\n    ")
        stream.write(f"  - {text}\n" if len(errors) > 1 else f"{text}\n")
    stream.flush()


def _command(argv: list[str], invocation: Invocation) -> ExitCode:
    from cpbuild.config import build_config, read_config
    from cpbuild.environment import Environment, user_cache_folder
    from cpbuild.plugins import make_plugin_manager
    from cpbuild.project import add_import_paths

    requested, directory = _early(argv)
    directory = directory.resolve()  # before cpbuild changes into the project root
    if not directory.is_dir():
        raise UsageError(f"-C {directory}: no such directory")
    try:
        root, source, table = read_config(directory)
    except ConfigError:
        if "--version" not in argv:
            raise
        root, source, table = directory.resolve(), None, {}
    add_import_paths(root)  # before plugins load: a plugin module may live in the project
    environment = Environment(user_cache_folder(), root)
    config_plugins = table.get("plugins", [])
    pm = make_plugin_manager(
        requested, config_plugins if isinstance(config_plugins, list) else [], environment
    )
    if "--version" in argv:
        return _version(pm, environment)
    parser = build_parser()
    pm.hook.cpbuild_addoption(parser=parser)
    options = parser.parse_args(argv)
    extra_keys = frozenset(k for keys in pm.hook.cpbuild_config_keys() for k in keys)
    config = build_config(root, source, table, extra_keys)
    if options.jobs is not None:
        if options.jobs < 1:
            raise UsageError(f"-j {options.jobs}: the number of jobs must be at least 1")
        config.jobs = options.jobs
    if (options.restart or options.clear) and not options.watch:
        raise UsageError("--restart and --clear apply to --watch only")
    if options.executor:
        config.executor = options.executor
    for item in options.queues:
        name, _, limit = item.partition("=")
        if not name or not limit.isdigit() or int(limit) < 1:
            raise UsageError(f"--queue {item}: expected NAME=N with N >= 1")
        config.queues[name] = int(limit)
    pm.hook.cpbuild_configure.call_historic(kwargs={"config": config, "options": options})
    os.chdir(config.root)  # tasks see the project root as their working directory
    try:
        return _run(config, options, pm, directory, environment, invocation)
    finally:
        environment.save()


def _version(pm: Any, environment: Any) -> ExitCode:
    from cpbuild import __version__
    from cpbuild.plugins import plugin_versions

    print(f"cpbuild {__version__} (Python {sys.version.split()[0]})")
    print("plugins:")
    for name, version in plugin_versions(pm, environment):
        print(f"  {name}: {version}")
    return ExitCode.OK


def _run(
    config: Any,
    options: argparse.Namespace,
    pm: Any,
    cwd: Path,
    environment: Any,
    invocation: Invocation,
) -> ExitCode:
    from cpbuild.commands import run_once
    from cpbuild.lock import BuildLock
    from cpbuild.session import Session

    lock = BuildLock(config.cache_path, mode="watch" if options.watch else "build")
    if options.watch:
        from cpbuild.watch import watch

        lock.acquire(wait=not options.no_wait)
        invocation.tasks_ran = True  # a long-lived process: exit normally
        try:
            return watch(config, options, pm, cwd, environment)
        finally:
            lock.release()
    session = Session(config, options, pm, cwd, environment)
    try:
        code = run_once(session, lock)
        if code in (ExitCode.OK, ExitCode.TASKS_FAILED):
            session.save_graph_cache()
        return code
    finally:
        invocation.tasks_ran = session.tasks_ran
        session.close()  # writes the state snapshot: still under the lock
        lock.release()
