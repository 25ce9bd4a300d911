"""Watch mode (DESIGN §8, docs/watch.md): build, then rebuild what each edit affects.

One process, three threads:

* watchdog's threads report file-system events; ``_on_event`` keeps the paths that are not
  ignored outright (the cache folder, ``__pycache__``, version control, virtual environments) in
  a set of raw candidates. Reads never arrive: the observer asks only for writes, creations,
  deletions and moves (inotify sends ``Opened``/``ClosedNoWrite`` for every read otherwise).
* the coordinator thread debounces the raw paths (``DEBOUNCE`` after the last event, at most
  ``MAX_DELAY`` after the first), sorts them against the current *view* (the task modules, the
  project modules they imported, the inputs of the selected tasks, and the products, which are
  ignored) and confirms each by content: a path is a change only when its digest differs from
  the one the last cycle used, so a ``touch`` or a rewrite with the same bytes starts nothing.
  While a cycle builds, it waits (so that events are judged against the new graph), unless
  ``--restart`` asks it to stop the build as soon as a change is confirmed.
* the main thread runs the cycles: it drops the project's modules from ``sys.modules``, makes a
  new ``Session`` (a new code tracker, so edited modules are re-imported and re-parsed) and calls
  ``commands.run_once``: only tasks whose key changed run. A collection error is shown and the watch
  goes on with the last good view until the file is fixed.

Ctrl-C (or SIGTERM) exits with code 0; the scheduler deletes what an interrupted task wrote.
``--restart`` interrupts the build through the same path (a ``KeyboardInterrupt`` subclass in the
main thread), so a restarted cycle records nothing half-done either.

When inotify cannot add a watch because of the operating system's limits (errno 28, 24), the
watch falls back to polling with a message saying which limit to raise.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import gc
import importlib
import linecache
import os
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from cpbuild.errors import CollectionError, CpbuildError, ExitCode, UsageError
from cpbuild.hookspecs import hookimpl
from cpbuild.project import IGNORED_DIRS, RACY_NS, project_modules, relative

#: Seconds of quiet after the last event before a cycle starts (watchexec's default).
DEBOUNCE = 0.05
#: A stream of events never delays a cycle by more than this many seconds.
MAX_DELAY = 0.5
#: Seconds between two scans of a folder when polling (no inotify, or its limits are reached).
POLL_INTERVAL = 0.5
#: A file modified this shortly before a cycle started (or later) may have been read by the
#: cycle with other contents than it has now: it counts as changed at its next event. (Linux
#: stamps files with a clock that may lag by a scheduler tick, up to 10 ms.)
RECENT_NS = 20_000_000
#: Setting this environment variable to 1 makes the watch poll instead of using inotify (for
#: file systems without change notifications: NFS, some container bind mounts).
POLL_ENVIRONMENT = "CPBUILD_WATCH_POLL"

#: Only content changes and structure changes: no Opened/ClosedNoWrite (reads), no Attrib
#: (touch, chmod), no DirModified (a folder's mtime).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]

_CLEAR = "\033[2J\033[H"


class _Restart(KeyboardInterrupt):
    """Raised in the main thread to stop a build whose inputs changed (``--restart``). The
    scheduler treats it like Ctrl-C: running tasks are stopped, their products deleted."""


class Seen(NamedTuple):
    """What the watch knows about a file: its stat, its digest and when the digest was taken."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    digest: str
    taken_ns: int

    def same_stat(self, st: os.stat_result) -> bool:
        return (self.mtime_ns, self.size, self.ino, self.dev) == (
            st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev
        )

    @property
    def racy(self) -> bool:
        return self.taken_ns - self.mtime_ns < RACY_NS


#: Baseline of a file that may have changed since the cycle read it: any event is a change.
UNKNOWN = "unknown"
#: No baseline: a file the last cycle did not know (a new task file, say).
ABSENT = "absent"
Baseline = Seen | None | str  # None: the file did not exist; else UNKNOWN or ABSENT


@dataclass(frozen=True)
class View:
    """What the watch compares events with; rebuilt after each cycle (and before each build)."""

    root: str
    cache: str
    starts: tuple[str, ...]  # the configured task paths (searched recursively)
    patterns: tuple[str, ...]  # task file name patterns (task_*.py and plugins')
    config: str | None  # the configuration file
    inputs: frozenset[str] = frozenset()  # inputs of the selected tasks that no task produces
    products: frozenset[str] = frozenset()  # every product of the graph
    python: frozenset[str] = frozenset()  # task modules and the project modules they import
    failed: bool = False  # the last cycle could not collect: any .py file may be the fix

    def kind(self, path: str) -> str | None:
        """Why ``path`` matters ("input", "module", "task file", "config"), or None."""
        if path in self.products:
            return None
        if path in self.inputs:
            return "input"
        if path in self.python:
            return "module"
        if path == self.config:
            return "config"
        name = os.path.basename(path)
        if any(fnmatch.fnmatchcase(name, p) for p in self.patterns) and self.in_starts(path):
            return "task file"
        if self.failed and name.endswith(".py"):
            return "module"
        return None

    def in_starts(self, path: str) -> bool:
        for start in self.starts:
            if path == start or path.startswith(start + os.sep):
                return not _in_ignored_dir(path, start)
        return False


def _in_ignored_dir(path: str, base: str) -> bool:
    """True when a folder between ``base`` and ``path`` is never watched (``.git``, ...)."""
    if not path.startswith(base + os.sep):
        return False
    parts = path[len(base) + 1 :].split(os.sep)[:-1]
    return any(p in IGNORED_DIRS or p.startswith(".") for p in parts)


def purge_project_modules(root: str, keep: Iterable[Any] = ()) -> int:
    """Remove the project's modules from ``sys.modules`` so the next import reads the files
    again; returns how many were removed."""
    names = project_modules(root, keep)
    for name in names:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()  # new files in known folders must be importable
    linecache.clearcache()  # tracebacks must show the current source
    return len(names)


# -- the observer ------------------------------------------------------------------------------


def _limit_message(error: OSError) -> str:
    """The message for an inotify limit, naming the setting to raise."""
    if error.errno == errno.ENOSPC:
        setting, what = "fs.inotify.max_user_watches", "the number of folders a user can watch"
        advice = "524288"
    elif error.errno == errno.EMFILE:
        setting, what = "fs.inotify.max_user_instances", "the number of inotify instances"
        advice = "512"
    else:
        return (f"watching folders for changes failed ({error}); falling back to polling every "
                f"{POLL_INTERVAL:g}s")
    current = ""
    try:
        value = Path("/proc/sys", *setting.split(".")).read_text().strip()
        current = f" (now {value})"
    except OSError:
        pass
    return (
        f"the operating system's limit on {what} is reached: {setting}{current}. "
        f"Falling back to polling every {POLL_INTERVAL:g}s, which reacts later and costs more CPU. "
        f"To raise the limit: sudo sysctl {setting}={advice} (and add it to /etc/sysctl.conf "
        "to keep it)"
    )


class Watches:
    """The observed folders: one non-recursive watch per folder, so that ignored folders
    (``.git``, virtual environments, the cache, product folders) cost no inotify watch and a
    limit error names the folder it happened on. Falls back to polling on inotify limits."""

    def __init__(
        self,
        handler: FileSystemEventHandler,
        report: Callable[[str], None],
        observer_class: Any = None,
        polling: bool = False,
    ) -> None:
        from watchdog.observers import Observer

        self.handler = handler
        self.report = report
        self.polling = polling
        self._lock = threading.RLock()
        self._watches: dict[str, Any] = {}
        self._observer_class = observer_class or Observer
        self.observer = self._polling_observer() if polling else self._native_observer()

    def _native_observer(self) -> Any:
        try:
            observer = self._observer_class()
            observer.start()
        except OSError as error:
            self.report(_limit_message(error))
            self.polling = True
            return self._polling_observer()
        return observer

    def _polling_observer(self) -> Any:
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=POLL_INTERVAL)
        observer.start()
        return observer

    @property
    def folders(self) -> set[str]:
        return set(self._watches)

    def update(self, folders: set[str]) -> set[str]:
        """Watch exactly ``folders``; returns the ones newly watched."""
        with self._lock:
            for folder in set(self._watches) - folders:
                watch = self._watches.pop(folder)
                try:
                    self.observer.unschedule(watch)
                except (KeyError, OSError):
                    pass
            added = set()
            for folder in sorted(folders - set(self._watches)):
                if self._schedule(folder):
                    added.add(folder)
            return added

    def _schedule(self, folder: str) -> bool:
        try:
            self._watches[folder] = self.observer.schedule(
                self.handler, folder, recursive=False, event_filter=EVENT_FILTER
            )
            return True
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return False  # gone or unreadable: nothing to watch there
        except OSError as error:
            if self.polling:
                raise
            self.report(_limit_message(error))
            self._switch_to_polling()
            return self._schedule(folder)

    def _switch_to_polling(self) -> None:
        folders = sorted(self._watches)
        try:
            self.observer.stop()
            self.observer.join(timeout=5)
        except Exception:
            pass
        self.polling = True
        self.observer = self._polling_observer()
        self._watches = {}
        for folder in folders:
            self._schedule(folder)

    def stop(self) -> None:
        with self._lock:
            try:
                self.observer.stop()
                self.observer.join(timeout=5)
            except RuntimeError:
                pass
            self._watches = {}


class _Handler(FileSystemEventHandler):
    def __init__(self, on_event: Callable[[FileSystemEvent], None]) -> None:
        self.on_event = on_event

    def dispatch(self, event: FileSystemEvent) -> None:
        self.on_event(event)


# -- the watch ---------------------------------------------------------------------------------


@dataclass
class _Cycle:
    number: int
    changes: list[str]
    start_ns: int = 0
    restarted: bool = False
    failed: bool = False
    ran: list[str] = field(default_factory=list)


class _Plugin:
    """Hook implementations that let the watch follow the build it started."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    @hookimpl
    def cpbuild_build_start(self, session: Any, tasks: list[Any]) -> None:
        self.watcher._build_started(session, tasks)

    @hookimpl
    def cpbuild_build_finish(self, session: Any, summary: Any) -> None:
        self.watcher._build_finished()


class Watcher:
    """One ``cpbuild --watch``: the cycles (main thread), the coordinator (debounce, content
    checks, ``--restart``) and the observer. ``run`` returns when Ctrl-C or SIGTERM arrives."""

    def __init__(
        self,
        config: Any,
        options: argparse.Namespace,
        pm: Any,
        cwd: Path,
        environment: Any = None,
    ) -> None:
        self.config = config
        self.environment = environment
        self.options = options
        self.pm = pm
        self.cwd = cwd
        self.out = sys.stdout
        self.root = str(config.root)
        self.cache = str(config.cache_path)
        self.restart_mode = bool(getattr(options, "restart", False))
        self.hasher = pm.hook.cpbuild_make_hasher(config=config)
        patterns = sorted({p for ps in pm.hook.cpbuild_collect_patterns() for p in ps})
        starts = tuple(os.path.normpath(config.root / entry) for entry in config.paths)
        source = str(config.source) if config.source else None
        self.view = View(self.root, self.cache, starts, tuple(patterns), source)
        self.baselines: dict[str, Baseline] = {}
        self._lock = threading.Lock()
        self._raw_cv = threading.Condition(self._lock)
        self._pending_cv = threading.Condition(self._lock)
        self._raw: dict[str, bool] = {}  # path -> is a folder
        self._first_event = 0.0
        self._last_event = 0.0
        self._pending: dict[str, None] = {}
        self._building = False
        self._stopped = False
        self._in_build = False
        self._restart_requested = False
        self._restart_sent = False
        self._restarted = False
        self._stop_requested = False
        self._refresh_lock = threading.Lock()
        self._walked: tuple[frozenset[str], set[str]] | None = None  # (product folders, walk)
        self._tree_changed = False  # a folder was created, deleted or moved since the walk
        self._state: Any = None
        self._main_thread = threading.main_thread().ident
        self.watches: Watches | None = None
        self.cycles = 0

    # -- output ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        stream = getattr(self.out, "original", self.out)
        stream.write(text + "\n")
        stream.flush()

    def warn(self, text: str) -> None:
        stream = getattr(sys.stderr, "original", sys.stderr)
        stream.write(f"cpbuild: warning: {text}\n")
        stream.flush()

    def rel(self, path: str) -> str:
        return relative(path, self.root)

    # -- events (watchdog's thread) ---------------------------------------------------------------

    def _on_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path]
        if event.dest_path:
            paths.append(event.dest_path)
        is_dir = event.is_directory
        with self._lock:
            was_empty = not self._raw
            added = False
            for raw in paths:
                path = os.fsdecode(raw)
                if path and not self._ignored(path, is_dir):
                    self._raw[path] = self._raw.get(path, False) or is_dir
                    added = True
            if added:
                now = time.monotonic()
                if was_empty:
                    self._first_event = now
                self._last_event = now
                self._raw_cv.notify_all()

    def _ignored(self, path: str, is_dir: bool) -> bool:
        cache = self.cache
        if path == cache or path.startswith(cache + os.sep):
            return True
        if path.endswith((".pyc", ".pyo")):
            return True
        if path.startswith(self.root + os.sep):
            parts = path[len(self.root) + 1 :].split(os.sep)
            if not is_dir:
                parts = parts[:-1]
            return any(p in IGNORED_DIRS for p in parts)
        return False

    # -- the coordinator thread -----------------------------------------------------------------

    def _coordinate(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stopped:
                        return
                    if self._raw and not (self._building and not self.restart_mode):
                        wait = min(self._last_event + DEBOUNCE, self._first_event + MAX_DELAY)
                        wait -= time.monotonic()
                        if wait <= 0:
                            break
                        self._raw_cv.wait(wait)
                    else:
                        self._raw_cv.wait()
                batch, self._raw = self._raw, {}
            try:
                changes = self._examine(batch)
            except Exception:  # never let the watch die silently
                traceback.print_exc()
                self.warn("internal error while examining file events (a bug in cpbuild); "
                          "the watch goes on")
                continue
            if not changes:
                continue
            with self._lock:
                for path in changes:
                    self._pending[path] = None
                self._pending_cv.notify_all()
                interrupt = (
                    self.restart_mode and self._in_build and not self._restart_sent
                )
                if interrupt:
                    self._restart_sent = True
                    self._restart_requested = True
            if interrupt and self._main_thread is not None:
                signal.pthread_kill(self._main_thread, signal.SIGINT)

    def _examine(self, batch: dict[str, bool]) -> list[str]:
        """The confirmed changes among a batch of event paths."""
        folders = [p for p, is_dir in batch.items() if is_dir]
        files = [p for p, is_dir in batch.items() if not is_dir]
        if folders:
            with self._lock:
                self._tree_changed = True
            view = self.view
            known = view.python | view.inputs
            for folder in folders:
                # Files under a folder that was deleted or moved away.
                prefix = folder + os.sep
                files.extend(p for p in known if p.startswith(prefix))
            for folder in self.refresh_watches():
                files.extend(_files_in(folder))  # created before its watch existed
        view = self.view
        changes = []
        for path in dict.fromkeys(files):
            kind = view.kind(path)
            if kind is None:
                continue
            if self._confirm(path):
                if kind == "config":
                    self.warn(f"{self.rel(path)} changed; restart cpbuild --watch to use the new "
                              "configuration")
                    continue
                changes.append(path)
        return changes

    def _current(self, path: str, base: Baseline) -> Seen | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if isinstance(base, Seen) and base.same_stat(st) and not base.racy:
            return base
        try:
            digest = self.hasher.file_digest(path)
        except OSError:
            return None
        return Seen(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest, time.time_ns())

    def _confirm(self, path: str) -> bool:
        """True when ``path``'s content differs from what the last cycle used."""
        base = self.baselines.get(path, ABSENT)
        current = self._current(path, base)
        if base == ABSENT or base is None:
            changed = current is not None
        elif base == UNKNOWN:
            changed = True
        else:
            assert isinstance(base, Seen)
            changed = current is None or current.digest != base.digest
        if changed or base != ABSENT:
            self.baselines[path] = current
        return changed

    # -- watched folders ---------------------------------------------------------------------------

    def desired_folders(self) -> set[str]:
        """Every folder under the task paths (but ignored ones and those holding only
        products), and the folders of the modules, inputs and configuration file. The walk of
        the task paths is redone only when folders were created or deleted, or the product
        folders changed."""
        view = self.view
        needed = set(view.python) | set(view.inputs)
        if view.config:
            needed.add(view.config)
        needed_dirs = {os.path.dirname(p) for p in needed}
        keep: set[str] = set()
        for folder in needed_dirs:
            while folder not in keep:
                keep.add(folder)
                parent = os.path.dirname(folder)
                if parent == folder:
                    break
                folder = parent
        product_dirs = frozenset({os.path.dirname(p) for p in view.products} - keep)
        with self._lock:
            stale = self._tree_changed or self._walked is None or self._walked[0] != product_dirs
            self._tree_changed = False
        if stale:
            self._walked = (product_dirs, self._walk(view.starts, product_dirs))
        assert self._walked is not None
        folders = set(self._walked[1])
        for folder in needed_dirs:
            while folder and not os.path.isdir(folder):  # a missing input: watch for its folder
                parent = os.path.dirname(folder)
                if parent == folder:
                    break
                folder = parent
            if folder and not (folder == self.cache or folder.startswith(self.cache + os.sep)):
                folders.add(folder)
        return folders

    def _walk(self, starts: Iterable[str], product_dirs: frozenset[str]) -> set[str]:
        folders: set[str] = set()
        for start in starts:
            if os.path.isfile(start):
                folders.add(os.path.dirname(start))
                continue
            for folder, subdirs, _ in os.walk(start):
                if folder == self.cache:
                    subdirs[:] = []
                    continue
                folders.add(folder)
                subdirs[:] = [
                    d for d in subdirs
                    if d not in IGNORED_DIRS and not d.startswith(".")
                    and os.path.join(folder, d) not in product_dirs
                    and os.path.join(folder, d) != self.cache
                    and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
                ]
        return folders

    def refresh_watches(self) -> set[str]:
        """Bring the observer in line with ``desired_folders``; returns the new folders."""
        if self.watches is None:
            return set()
        with self._refresh_lock:
            return self.watches.update(self.desired_folders())

    # -- the view and the baselines ----------------------------------------------------------------

    def _module_files(self) -> set[str]:
        keep = [p for p in self.pm.get_plugins() if hasattr(p, "__file__")]
        return {
            f for f in project_modules(self.root, keep).values() if f.endswith(".py")
        }

    def _graph_view(self, graph: Any, selected: Iterable[Any] | None, failed: bool) -> View:
        products = frozenset(p for t in graph.tasks.values() for p in t.product_files)
        tasks = list(selected) if selected is not None else list(graph.tasks.values())
        inputs = frozenset(p for t in tasks for p in t.input_files) - products
        python = {str(t.path) for t in graph.tasks.values()} | self._module_files()
        return View(
            self.root, self.cache, self.view.starts, self.view.patterns, self.view.config,
            inputs, products, frozenset(python), failed,
        )

    def _selected_tasks(self, session: Any) -> list[Any] | None:
        """The selected tasks and their upstream, when the targets still resolve."""
        graph = session.graph
        try:
            targets = session.targets(self.options.targets, self.options.keyword, self.options.marker)
            return [graph.tasks[i] for i in graph.with_upstream(targets)]
        except Exception:
            return None

    def _build_started(self, session: Any, tasks: list[Any]) -> None:
        if session.graph is not None:  # judge events during the build against the new graph
            self.view = self._graph_view(session.graph, tasks, False)
        with self._lock:
            self._in_build = True

    def _build_finished(self) -> None:
        with self._lock:
            self._in_build = False

    def _take_baselines(self, session: Any, cycle: _Cycle) -> None:
        """What the cycle used: the digests the build computed for the inputs, the digests of
        the modules (unknown when a module changed after the cycle started)."""
        view = self.view
        entries = {}
        rebuilder = getattr(session, "rebuilder", None) if session is not None else None
        if rebuilder is not None:
            entries = rebuilder.files.entries
        now = time.time_ns()
        recent = cycle.start_ns - RECENT_NS
        baselines: dict[str, Baseline] = {}
        old = self.baselines
        for path in view.inputs | view.python | ({view.config} if view.config else set()):
            entry = entries.get(path) if path in view.inputs else None
            if entry is not None:  # the digest this build's keys used
                current: Seen | None = Seen(*entry, now)
            else:
                current = self._current(path, old.get(path))
            if current is not None and current.mtime_ns >= recent:
                # Written during the cycle: a module perhaps after its import, an input perhaps
                # between the keys of two tasks that read it. Its next event is a change.
                baselines[path] = UNKNOWN
            else:
                baselines[path] = current
        if view.failed:
            # Keep what is known about files of the last good graph: fixing a file compares
            # against the broken version the failed cycle saw.
            for path, value in list(old.items()):
                baselines.setdefault(path, value)
        self.baselines = baselines

    # -- the main thread ---------------------------------------------------------------------------

    def run(self) -> ExitCode:
        self._check_options()
        # The CLI turns the cyclic garbage collector off for one-shot builds; a watch must not
        # run without it: every cycle drops a generation of modules and functions (cycles).
        gc.enable()
        plugin = _Plugin(self)
        self.pm.register(plugin, name="cpbuild-watch")
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        coordinator = threading.Thread(target=self._coordinate, name="cpbuild-watch", daemon=True)
        try:
            polling = os.environ.get(POLL_ENVIRONMENT, "") not in ("", "0")
            self.watches = Watches(_Handler(self._on_event), self.warn, polling=polling)
            self.refresh_watches()
            if self.view.config:
                self.baselines[self.view.config] = self._current(self.view.config, None)
            coordinator.start()
            changes: list[str] = []
            while True:
                self._cycle(changes)
                changes = self._wait_for_changes()
        except KeyboardInterrupt:
            self.say("cpbuild: watch stopped")
            return ExitCode.OK
        finally:
            with self._lock:
                self._stopped = True
                self._raw_cv.notify_all()
            if self.watches is not None:
                self.watches.stop()
            if coordinator.is_alive():
                coordinator.join(timeout=5)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.pm.unregister(plugin)
            if self._state is not None:
                self._state.close()
                self._state = None

    def _check_options(self) -> None:
        for flag, name in (("clean", "--clean"), ("log", "--log"), ("list", "--list"), ("why", "--why")):
            if getattr(self.options, flag, None):
                raise UsageError(f"--watch cannot be combined with {name}")

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self._restart_requested:
            self._restart_requested = False
            if self._in_build:
                self._restarted = True
                raise _Restart()
            return  # the build ended meanwhile; the pending change starts the next cycle
        self._stop_requested = True
        raise KeyboardInterrupt()

    def _wait_for_changes(self) -> list[str]:
        with self._lock:
            idle = not self._pending
        if idle:
            folders = len(self.watches.folders) if self.watches else 0
            polling = self.watches is not None and self.watches.polling
            mode = f", polling every {POLL_INTERVAL:g}s" if polling else ""
            self.say(f"cpbuild: watching {folders} folder{'s' if folders != 1 else ''} for "
                     f"changes{mode} (Ctrl-C to stop)")
        with self._lock:
            while not self._pending:
                self._pending_cv.wait()
            changes = list(self._pending)
            self._pending = {}
        return changes

    def _cycle(self, changes: list[str]) -> None:
        from cpbuild.commands import run_once
        from cpbuild.session import Session

        self.cycles += 1
        cycle = _Cycle(self.cycles, changes)
        if getattr(self.options, "clear", False):
            self.out.write(_CLEAR)
        self.say(self._header(cycle))
        started = time.perf_counter()
        with self._lock:
            self._building = True
            self._restart_sent = False
            self._restarted = False
        cycle.start_ns = time.time_ns()
        purge_project_modules(self.root, [p for p in self.pm.get_plugins() if hasattr(p, "__file__")])
        session = Session(self.config, self.options, self.pm, self.cwd, self.environment)
        if self._state is not None:
            session.state = self._state
        graph_ok = False
        try:
            try:
                code = run_once(session, use_cache=False)
                graph_ok = True
                if code == ExitCode.NO_TASKS_COLLECTED:
                    cycle.failed = True
            except CollectionError as error:
                graph_ok = session.graph is not None
                cycle.failed = not graph_ok
                self._show_errors(error.errors)
            except UsageError as error:
                if self.cycles == 1:
                    raise
                graph_ok = session.graph is not None
                cycle.failed = True
                self._show_errors([str(error)])
            except CpbuildError as error:
                cycle.failed = True
                self._show_errors([str(error)])
            except _Restart:
                graph_ok = session.graph is not None
            except KeyboardInterrupt:
                raise
            except (Exception, SystemExit):
                traceback.print_exc()
                self.warn("internal error in this cycle (a bug in cpbuild or a plugin; please "
                          "report it with the traceback above); the watch goes on")
                cycle.failed = True
            if self._stop_requested:
                raise KeyboardInterrupt()
            cycle.restarted = self._restarted
            summary = session.last_summary
            if summary is not None:
                cycle.ran = [r.task.name for r in summary.reports if r.outcome == "ran"]
            self._finish(session, cycle, graph_ok)
        finally:
            self._state = session.state or self._state
            session.state = None  # kept open for the next cycle
            session.close()
            with self._lock:
                self._building = False
                self._in_build = False
                self._raw_cv.notify_all()
        took = time.perf_counter() - started
        if cycle.restarted:
            self.say(f"cpbuild: cycle {cycle.number} stopped after {took:.3f}s: inputs changed "
                     "while it ran (--restart); starting again")
            return
        ran = ""
        if cycle.ran:
            names = ", ".join(cycle.ran[:5]) + (f" and {len(cycle.ran) - 5} more" if len(cycle.ran) > 5 else "")
            ran = f"; ran {names}"
        status = " with errors" if cycle.failed else ""
        self.say(f"cpbuild: cycle {cycle.number} done{status} in {took:.3f}s{ran}")

    def _finish(self, session: Any, cycle: _Cycle, graph_ok: bool) -> None:
        """Update the view, the baselines and the watched folders after a cycle."""
        if graph_ok and session.graph is not None:
            selected = self._selected_tasks(session)
            self.view = self._graph_view(session.graph, selected, cycle.failed)
        else:
            view = self.view
            self.view = View(
                view.root, view.cache, view.starts, view.patterns, view.config, view.inputs,
                view.products, view.python | self._module_files(), True,
            )
        self._take_baselines(session, cycle)
        for folder in self.refresh_watches():
            # A folder watched only from now on: what changed there during the cycle was not
            # seen as an event.
            with self._lock:
                for path in _files_in(folder):
                    self._raw[path] = False
                if self._raw:
                    self._first_event = self._last_event = time.monotonic()

    def _header(self, cycle: _Cycle) -> str:
        if cycle.number == 1:
            return "cpbuild: watch mode: first build"
        shown = [self.rel(p) for p in cycle.changes[:10]]
        more = f" and {len(cycle.changes) - 10} more" if len(cycle.changes) > 10 else ""
        noun = "change" if len(cycle.changes) == 1 else "changes"
        return f"cpbuild: {noun}: {', '.join(shown)}{more}"

    def _show_errors(self, errors: list[str]) -> None:
        stream = getattr(sys.stderr, "original", sys.stderr)
        if len(errors) == 1:
            stream.write("cpbuild: error: " + errors[0].replace("\n", "\n    ") + "\n")
        else:
            stream.write("cpbuild: errors:\n")
            for message in errors:
                stream.write("  - " + message.replace("\n", "\n    ") + "\n")
        stream.write("cpbuild: the watch goes on; the next change that fixes this rebuilds\n")
        stream.flush()


def _files_in(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.path for e in entries if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def watch(
    config: Any, options: argparse.Namespace, pm: Any, cwd: Path, environment: Any = None
) -> ExitCode:
    """``cpbuild --watch``: build, then rebuild on every change until Ctrl-C (exit code 0)."""
    return Watcher(config, options, pm, cwd, environment=environment).run()
