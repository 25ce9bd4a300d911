"""What one invocation does once the configuration is read: build, or list, explain, clean,
show a log or the graph. The CLI calls ``run_once`` once; watch mode calls it per cycle.

Output that is a command's answer (``--list``, ``--why``, ``--log``) is printed here; build
progress and results go through the reporting hooks (``cpbuild.report``, ``cpbuild.jsonreport``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from cpbuild.errors import ExitCode
from cpbuild.model import CachedArgument


def run_once(session: Any, lock: Any = None, use_cache: bool = True) -> ExitCode:
    """Collect, select and build (or list, explain, clean) once; watch mode calls this per
    cycle with ``lock=None`` because it holds the lock for its whole life, and without the
    graph cache because it needs the modules imported."""
    import dataclasses

    from cpbuild.scheduler import BuildOptions, WouldRun, replay

    options, config = session.options, session.config
    reads_state = not (options.graph or options.log)
    if lock is not None and reads_state:  # another build may be writing the state
        lock.acquire(wait=not options.no_wait)
    started = time.perf_counter()
    cached = use_cache and not (options.graph or options.log or options.clean or options.force)
    session.start_workers = not (
        options.graph or options.log or options.clean or options.list or options.why or options.dry_run
    )
    session.collect(analyse=reads_state, use_cache=cached)
    collected = time.perf_counter()
    assert session.graph is not None
    if not session.graph.tasks:
        print(f"cpbuild: no tasks collected under {config.root} (paths: "
              f"{', '.join(config.paths)}; task files are named task_*.py)", file=sys.stderr)
        return ExitCode.NO_TASKS_COLLECTED
    if options.log:
        return _print_log(session, options.log)
    targets = _targets(session)
    if not targets:
        print("cpbuild: no tasks selected", file=sys.stderr)
        return ExitCode.NO_TASKS_COLLECTED
    if options.graph:
        from cpbuild.export import render

        print(render(session.graph, session.graph.with_upstream(targets), options.graph))
        return ExitCode.OK
    if options.clean:
        return _clean(session, targets)
    ids = session.selection(targets)
    session.check_executor(ids)
    build_options = BuildOptions(
        jobs=config.jobs,
        keep_going=options.keep_going,
        dry_run=bool(options.dry_run or options.list or options.why),
        force=options.force,
        capture=not options.no_capture,
    )
    if options.list:
        session.mode = "list"
    elif options.why:
        session.mode = "why"
    elif options.dry_run:
        session.mode = "dry-run"
    selected = time.perf_counter()
    summary = None
    if session.from_cache and session.mode == "build":
        # The cached graph can show that nothing must run; anything else needs the modules.
        try:
            summary = session.build(ids, dataclasses.replace(build_options, probe=True))
        except WouldRun:
            session.collect(analyse=True, use_cache=False)
            targets = _targets(session)
            ids = session.selection(targets)
            session.check_executor(ids)
        else:
            replay(session, summary)
    if summary is None:
        summary = session.build(ids, build_options)
    if options.profile:
        _print_profile(summary, collected - started, selected - collected)
    if options.list:
        _print_list(summary)
    elif options.why:
        _print_why(session, summary, targets, options.verbose)
    session.last_summary = summary
    return summary.exit_code


def _targets(session: Any) -> list[str]:
    options = session.options
    if options.why:
        return session.graph.resolve_target(options.why, session.cwd)
    if (options.list or options.clean) and not (options.targets or options.keyword or options.marker):
        return list(session.graph.tasks)  # --list and --clean cover every task by default
    return session.targets(options.targets, options.keyword, options.marker)


def _print_profile(summary: Any, collecting: float, selecting: float) -> None:
    """``--profile``: cpbuild's own phases, then the tasks that took longest."""
    ran = sum(r.duration for r in summary.reports)
    print(f"cpbuild profile: collect {collecting * 1000:.0f} ms, select {selecting * 1000:.0f} ms, "
          f"build {summary.duration * 1000:.0f} ms ({ran:.2f} s inside tasks, "
          f"{len(summary.reports)} tasks, {sum(1 for r in summary.reports if r.duration)} ran)")
    slowest = sorted((r for r in summary.reports if r.duration), key=lambda r: -r.duration)[:10]
    for report in slowest:
        print(f"  {report.duration:8.3f} s  {report.task.id}")


def _print_list(summary: Any) -> None:
    from cpbuild.scheduler import UP_TO_DATE

    width = max((len(r.task.id) for r in summary.reports), default=0)
    for report in summary.reports:
        status = "up to date" if report.outcome == UP_TO_DATE else f"stale: {'; '.join(report.reasons)}"
        markers = f"  [{', '.join(sorted(report.task.markers))}]" if report.task.markers else ""
        print(f"{report.task.id:<{width}}  {status}{markers}")


def _print_why(session: Any, summary: Any, targets: list[str], verbose: int) -> None:
    from cpbuild.scheduler import UP_TO_DATE

    reports = {r.task.id: r for r in summary.reports}
    for task_id in targets:
        report = reports[task_id]
        if report.outcome == UP_TO_DATE:
            print(f"{task_id}: up to date")
        else:
            print(f"{task_id}: would run")
            for reason in report.reasons:
                print(f"  - {reason}")
        if verbose:
            _print_key_parts(session, report.task)


def _print_key_parts(session: Any, task: Any) -> None:
    """``--why -v``: every part of the key, so users see what is and is not tracked."""
    from cpbuild.rebuilder import PYTHON_VERSION, describe_item

    code = dict(session.rebuilder.task_code(task)[0])
    print(f"  key parts of {task.name} (Python {PYTHON_VERSION}):")
    for item, value in sorted(code.items()):
        kind, _, name = item.partition(" ")
        shown = value if kind in ("constant", "library", "object") else value[:12]
        label = name if kind in ("library", "module") else describe_item(kind, name)
        print(f"    {kind:<9} {label}: {shown}")
    for name, value in sorted(session.graph.args[task.id].items()):
        shown = value[1] if isinstance(value, CachedArgument) else repr(value)
        print(f"    argument  {name} = {shown}")
    for path in task.input_files:
        print(f"    input     {session.graph.rel(path)}")
    for name, up in sorted(session.graph.value_deps[task.id].items()):
        print(f"    value     {name} <- {up}")
    for path in task.product_files:
        print(f"    product   {session.graph.rel(path)}")
    if any(k.startswith("object ") for k in code):
        print("  (objects are tracked by type only: their state is not part of the key)")


def _print_log(session: Any, target: str) -> ExitCode:
    for task_id in session.graph.resolve_target(target, session.cwd):
        path = session.log_path(session.graph.tasks[task_id])
        if not path.is_file():
            print(f"cpbuild: {task_id} has no log: it has not run yet, or its last run printed "
                  "nothing and succeeded", file=sys.stderr)
            return ExitCode.USAGE_ERROR
        print(f"=== log of {task_id} ({path}) ===")
        print(path.read_text(), end="")
    return ExitCode.OK


def _clean(session: Any, targets: list[str]) -> ExitCode:
    removed = 0
    graph = session.graph
    for task_id in targets:
        for path in graph.tasks[task_id].product_files:
            if os.path.isfile(path):
                os.unlink(path)
                removed += 1
                print(f"removed {graph.rel(path)}")
    session.open_state().forget(targets)
    print(f"cpbuild: removed {removed} product file{'s' if removed != 1 else ''} of "
          f"{len(targets)} task{'s' if len(targets) != 1 else ''}")
    return ExitCode.OK
