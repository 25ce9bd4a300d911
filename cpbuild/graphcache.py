"""The collected graph, cached: a no-op build need not import the task modules (DESIGN §6).

Importing task modules is most of a no-op: a research project's modules import pandas or torch,
and thousands of tasks cost thousands of objects. After a full collection, the graph's plain
data (ids, paths, canonical arguments, code keys, options) is written to
``<cache_dir>/graph``. A later build uses it to decide whether everything selected is up to
date; if anything would run, cpbuild collects the modules for real and builds as usual. So the
cache can only make a no-op fast; it never runs or skips a task by itself.

The cache is used only while everything that could change the collected graph is unchanged:

* cpbuild's and Python's versions, the configuration file, the plugins, the installed packages
  (the environment signature, see ``cpbuild.environment``);
* the set of task files and the contents of every project module imported while collecting
  (size and modification time);
* everything the task modules looked at while they were imported: files opened, folders
  listed or globbed, paths whose existence or type they checked, environment variables read.
  These are recorded during collection (Python's audit hooks for opening and listing, and
  stand-ins for ``os.stat`` and ``os.environ``) and checked again before the cache is used.

Not covered (documented limits): a task module whose tasks depend on the clock or on random
numbers at import time; a plugin that collects other files or adds key extras (the cache is
then not used at all); reads through C extensions that bypass Python's file functions.
"""

from __future__ import annotations

import marshal
import os
import sys
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cpbuild.api import TaskOptions
from cpbuild.model import CachedArgument, Param, ParamKind, Task
from cpbuild.project import RACY_NS, is_installation, is_project_file

FORMAT = 1
_BUILTIN_PLUGINS_ONLY_HOOKS = (
    "cpbuild_collect_file",
    "cpbuild_collect_patterns",
    "cpbuild_collection_finish",
    "cpbuild_key_extras",
)


# -- recording what collection looks at ----------------------------------------------------


class Recorder:
    """What task modules read while they are imported; active only inside ``recording()``.

    Each path is stat'ed when it is first seen, before it is read, so that a file edited while
    collection runs makes the saved cache invalid at once (the stat saved is the one from before
    the read). Anything the recorder cannot follow (a subprocess, ``os.environb``) marks the
    collection unsafe: no cache is saved.
    """

    active: Recorder | None = None  # the recorder of the collection in progress, if any
    _hooked = False

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}  # path -> its stat when first seen
        self.folders: set[str] = set()  # listed: their entries are watched too
        self.environment: dict[str, str | None] = {}
        self.unsafe: str | None = None  # why no cache may be saved
        self.modules_before: set[str] = set()

    def note(self, path: Any) -> None:
        if isinstance(path, int) or not isinstance(path, str | bytes | os.PathLike):
            return  # a file descriptor
        text = os.path.abspath(os.fsdecode(path))
        if text not in self.seen:
            self.seen[text] = _stat_of(text)

    @classmethod
    def _audit(cls, event: str, args: tuple[Any, ...]) -> None:
        recorder = cls.active
        if recorder is None:
            return
        if event == "open":
            path, mode = args[0], args[1]
            if (mode is None or "r" in str(mode) or "+" in str(mode)) and _by_user(path):
                recorder.note(path)
        elif event in ("os.listdir", "os.scandir"):
            path = args[0] if args and args[0] is not None else "."
            if _by_user(None) and not isinstance(path, int):
                recorder.note(path)
                recorder.folders.add(os.path.abspath(os.fsdecode(path)))
        elif event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.system", "os.spawn", "os.fork"):
            if _by_user(None):
                recorder.unsafe = f"a task module started a process ({event}) while it was imported"

    @contextmanager
    def recording(self) -> Iterator[Recorder]:
        if not Recorder._hooked:
            sys.addaudithook(Recorder._audit)  # process-wide and permanent; idle when inactive
            Recorder._hooked = True
        real = (os.stat, os.lstat, os.access, os.environ, os.environb)
        recorder = self

        def noting(function: Any) -> Any:
            """``function`` (os.stat and kin), noting the paths the user's code asks about."""

            def noted(path: Any, *args: Any, **kwargs: Any) -> Any:
                if _by_user(None):
                    recorder.note(path)
                return function(path, *args, **kwargs)

            return noted

        stat, lstat, access = (noting(function) for function in real[:3])

        self.modules_before = set(sys.modules)
        Recorder.active = self
        os.stat, os.lstat, os.access = stat, lstat, access
        os.environ = _RecordingEnviron(real[3], self)  # type: ignore[assignment]  # noqa: B003 - restored below
        os.environb = _OpaqueEnviron(real[4], self)  # type: ignore[assignment]
        try:
            yield self
        finally:
            Recorder.active = None
            os.stat, os.lstat, os.access, os.environ, os.environb = real  # type: ignore[misc]


_STDLIB = os.path.dirname(os.__file__) + os.sep
_CPBUILD = os.path.dirname(os.path.abspath(__file__)) + os.sep
_MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")


def _by_user(opened: Any) -> bool:
    """Whether the file operation in progress comes from the project's code (or a library it
    calls) rather than from cpbuild or from the import system loading a module (module files
    are tracked by their own stats): the first caller outside the standard library decides.
    Data read through the import system (``pkgutil.get_data``) counts as the user's."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib"):
            if opened is None or isinstance(opened, int):
                return False  # the import system looking for modules
            return not os.fsdecode(opened).endswith(_MODULE_SUFFIXES)
        if not filename.startswith((_STDLIB, "<frozen ")):  # e.g. <frozen posixpath>
            return not filename.startswith(_CPBUILD)
        frame = frame.f_back  # type: ignore[assignment]
    return True


class _RecordingEnviron(MutableMapping):  # type: ignore[type-arg]
    """Stands in for ``os.environ`` during collection and notes which variables are read.
    A module that kept a reference to it still sees the real environment afterwards."""

    def __init__(self, real: Any, recorder: Recorder) -> None:
        self._real = real
        self._recorder = recorder

    def __getitem__(self, key: Any) -> Any:
        if Recorder.active is self._recorder and isinstance(key, str):
            self._recorder.environment[key] = self._real.get(key)
        return self._real[key]

    def __iter__(self) -> Iterator[Any]:
        if Recorder.active is self._recorder:
            self._recorder.environment["*"] = _whole(self._real)
        return iter(self._real)

    def __len__(self) -> int:
        if Recorder.active is self._recorder:
            self._recorder.environment["*"] = _whole(self._real)
        return len(self._real)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._real[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._real[key]

    def copy(self) -> dict[str, str]:
        return dict(self)

    def __or__(self, other: Any) -> dict[str, str]:
        return dict(self) | dict(other)

    def __ror__(self, other: Any) -> dict[str, str]:
        return dict(other) | dict(self)

    def __repr__(self) -> str:
        return repr(self._real)

    def __reduce__(self) -> tuple[Any, ...]:
        # A task module that kept this stand-in (``from os import environ``) may be shipped to
        # a worker: there it is that process's own environment.
        return (_process_environ, (isinstance(self, _OpaqueEnviron),))


def _process_environ(binary: bool) -> Any:
    return os.environb if binary else os.environ


class _OpaqueEnviron(_RecordingEnviron):
    """Stands in for ``os.environb``: any use of it is a dependency on the whole environment."""

    def __getitem__(self, key: Any) -> Any:
        if Recorder.active is self._recorder:
            self._recorder.environment["*"] = _whole(os.environ)
        return self._real[key]


def _whole(environ: Any) -> str:
    return repr(sorted(dict(environ).items()))


# -- eligibility and signatures ----------------------------------------------------------------


def eligible(pm: Any) -> bool:
    """Only the built-in collector and no key extras: what a plugin would compute is unknown."""
    from cpbuild.plugins import BUILTIN_PLUGINS

    builtin = {id(pm.get_plugin(name)) for name in BUILTIN_PLUGINS if pm.get_plugin(name)}
    for hook_name in _BUILTIN_PLUGINS_ONLY_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if id(impl.plugin) not in builtin:
                return False
    return True


_real_stat = os.stat  # the recorder replaces os.stat during collection


def _stat_of(path: str) -> tuple[int, ...] | None:
    """Everything that changes when a file or folder is written, replaced or chmod-ed."""
    try:
        st = _real_stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_ino, st.st_dev)


def _context(session: Any, task_files: list[Path]) -> tuple[Any, ...]:
    """What the graph depends on besides what collection recorded."""
    from cpbuild import __version__

    config = session.config
    source = str(config.source) if config.source else ""
    plugins = sorted(name for name, plugin in session.pm.list_name_plugin() if plugin is not None)
    return (
        FORMAT,
        __version__,
        sys.version,
        source,
        _stat_of(source) if source else None,
        tuple(plugins),
        session.environment.signature,
        tuple(str(p) for p in task_files),
    )


# -- saving and loading ------------------------------------------------------------------


class Pending:
    """What a full collection depended on, noted right after it; written by ``save`` once the
    build is over, when the project folder holds what the build created (``.cpbuild``,
    product folders) and the next build will find it so."""

    def __init__(self, task_files: list[Path], watched: dict[str, Any], folders: set[str],
                 environment: dict[str, str | None]) -> None:
        self.task_files = task_files
        self.watched = watched
        self.folders = folders  # where imports look: taken as they are after the build
        self.environment = environment


def pending(session: Any, task_files: list[Path], recorder: Recorder) -> Pending | None:
    """Note what the collection depended on, or None when no cache may be written: something
    changed while it was read, changed a moment ago, or cannot be followed."""
    if recorder.unsafe is not None:
        return None
    root = str(session.config.root)
    cache = str(session.config.cache_path)

    def ours(path: str) -> bool:  # cpbuild's own files, the standard library, packages
        return path == cache or path.startswith((cache + os.sep, _STDLIB)) or is_installation(path)

    for path, before in recorder.seen.items():
        if not ours(path) and _stat_of(path) != before:
            return None  # read while it was being changed: the graph may be stale already
    watched: dict[str, Any] = {p: s for p, s in recorder.seen.items() if not ours(p)}
    for folder in recorder.folders:
        if ours(folder):
            continue
        try:
            entries = [entry.path for entry in os.scandir(folder)]
        except OSError:
            continue
        for path in entries:  # a listed folder's files: their sizes or types may have mattered
            watched.setdefault(path, _stat_of(path))
    new_modules = set(sys.modules) - recorder.modules_before
    for path in (*map(str, task_files), *_module_files(root, new_modules)):
        if not ours(path):
            watched.setdefault(path, _stat_of(path))
    now = time.time_ns()
    if any(entry is not None and now - max(entry[1], entry[2]) < RACY_NS for entry in watched.values()):
        return None  # something was modified a moment ago: it could change again unseen
    folders = {f for f in _import_folders(root) if not ours(f)}
    return Pending(task_files, watched, folders, dict(recorder.environment))


def save(session: Any, noted: Pending) -> None:
    """Write the cache of the collected graph, if nothing it depends on changed since the
    collection (the build may have written into a folder a task module listed)."""
    graph = session.graph
    for path, entry in noted.watched.items():
        if _stat_of(path) != entry:
            return
    watched = dict(noted.watched)
    for folder in noted.folders:  # as the build left them: a module added there is noticed
        watched[folder] = _stat_of(folder)
    task_files = noted.task_files
    code = session.code_tracker()
    rebuilder_argument = session.argument_text
    tasks = []
    value_kind, arg_kind = ParamKind.VALUE.value, ParamKind.ARG.value
    kwargs_at = TaskOptions._fields.index("kwargs")
    for task in graph.tasks.values():
        if task.function is None:
            return  # already a cached graph: nothing new to save
        params = []
        deps = graph.value_deps[task.id]
        args = graph.args[task.id]
        for param in task.params:
            if param.name in deps:
                params.append((param.name, value_kind, deps[param.name], False))
            elif param.name in args:
                text, shown = rebuilder_argument(args[param.name])
                params.append((param.name, arg_kind, (text, shown), True))
            else:
                params.append((param.name, param.kind.value, param.value, param.has_default))
        options = (*task.options[:kwargs_at], None, *task.options[kwargs_at + 1:])  # kwargs: used at collection only
        items, digest = code.task_code(task.function)
        tasks.append((
            task.id, task.name, task.base_name, str(task.path), tuple(params), options,
            tuple(sorted(task.markers)), task.skip_reason, task.input_files, task.product_files,
            (items, digest),
        ))
    data = {
        "context": _context(session, task_files),
        "watched": watched,
        "environment": noted.environment,
        "tasks": tasks,
    }
    try:
        payload = marshal.dumps(data)
    except ValueError:
        return  # something unmarshallable slipped in (a plugin's option): no cache
    target = session.config.cache_path / "graph"
    tmp = target.with_name("graph.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, target)


def load(session: Any, task_files: list[Path]) -> list[Task] | None:
    """The cached tasks when nothing they depend on changed, else None."""
    try:
        data = marshal.loads((session.config.cache_path / "graph").read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("context") != _context(session, task_files):
        return None
    environ = os.environ
    for name, value in data["environment"].items():
        current = _whole(environ) if name == "*" else environ.get(name)
        if current != value:
            return None
    for path, entry in data["watched"].items():
        if _stat_of(path) != entry:
            return None
    tasks = []
    paths: dict[str, Path] = {}
    options_seen: dict[tuple[Any, ...], TaskOptions] = {}
    kinds = {kind.value: kind for kind in ParamKind}
    for (task_id, name, base, path, params, options, markers, skip, inputs, products, code) in data["tasks"]:
        module = paths.get(path)
        if module is None:
            module = paths[path] = Path(path)
        task_options = options_seen.get(options)
        if task_options is None:
            task_options = options_seen[options] = TaskOptions(*options)._replace(kwargs={})
        tasks.append(Task(
            id=task_id,
            name=name,
            base_name=base,
            path=module,
            function=None,  # type: ignore[arg-type]
            params=tuple(
                Param(p, kinds[kind], CachedArgument(*value) if kind == "arg" else value, has_default)
                for p, kind, value, has_default in params
            ),
            options=task_options,
            markers=frozenset(markers),
            skip_reason=skip,
            input_files=inputs,
            product_files=products,
            code=code,
        ))
    return tasks


def _module_files(root: str, new_modules: set[str]) -> Iterator[str]:
    """The project's module files, and those of modules imported from outside the project and
    outside any installation while collecting (a helper on a path the task module added)."""
    from cpbuild.project import project_modules

    for file in project_modules(root).values():
        if file and is_project_file(file, root):
            yield file
    for name in new_modules:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and not file.startswith(_STDLIB) and not is_installation(file):
            yield os.path.abspath(file)


def _import_folders(root: str) -> Iterator[str]:
    """Folders of the project where imports look for modules: a module added there (which an
    ``import`` inside ``try`` may have missed before) changes their modification time."""
    prefix = root + os.sep
    for entry in sys.path:
        folder = os.path.abspath(entry or ".")
        if folder == root or folder.startswith(prefix):
            yield folder
    for module in list(sys.modules.values()):
        for folder in getattr(module, "__path__", None) or ():
            if isinstance(folder, str) and folder.startswith(prefix):
                yield folder


