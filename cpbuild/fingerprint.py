"""The code part of a task's key (DESIGN §5.1).

A task's code is the set of *code items* it reaches: its own function and every project
function or class it references (transitively), the module constants it reads with their
values, and the third-party libraries it uses with their versions. Each item has a readable
name (``helpers.py::clean_row``) and a digest or value, so that ``--why`` can say exactly which
one changed, and the code digest is the digest of the sorted items.

What a function's "own" digest covers: its normalized AST, i.e. ``ast.dump`` without field
names or positions, with docstrings and cpbuild's declaration decorators (``@task``,
``@mark.*``) removed. Comments and formatting therefore never change a key.

Limits (documented in docs/rebuild.md): names are resolved statically (a name built at run time
with ``getattr`` or ``importlib`` is not seen); the state of an arbitrary object held in a
global (not a simple constant) is not tracked, only its type.
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cpbuild.canonical import NotSimple, canonical
from cpbuild.model import is_cpbuild_object
from cpbuild.project import RACY_NS, is_installation, is_project_file

#: Item kinds, the prefix of an item's name.
FUNCTION = "function"
CLASS = "class"
MODULE = "module"
CONSTANT = "constant"
LIBRARY = "library"
OBJECT = "object"

_BUILTIN_NAMES = frozenset(dir(builtins))

#: Part of every code-cache key: change it whenever what an analysis computes changes.
ANALYSIS_VERSION = "2"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CodeTracker:
    """Computes code items for the functions of one project, caching per file and per object.

    One tracker lives for one collection (one build, or one watch cycle): it caches parsed
    files and resolved items, which are valid only as long as the modules are not reloaded.
    Analyses of functions and classes (their digest and the names they load) are also kept
    across builds in the state, keyed by file, size and mtime, so a no-op build does not parse
    unchanged files at all (DESIGN §5.1).
    """

    def __init__(
        self,
        root: Path,
        project_packages: frozenset[str] = frozenset(),
        cache: dict[str, Any] | None = None,
        library_version: Callable[[str], str] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.project_packages = project_packages
        #: Persistent analyses: "file\0what" -> (size, mtime_ns, analysis); see _persistent.
        self.cache: dict[str, Any] = cache if cache is not None else {}
        self.new_cache: dict[str, Any] = {}
        if library_version is None:
            from cpbuild.environment import Environment

            library_version = Environment(None).library_version
        self.library_version = library_version
        self._stats: dict[str, tuple[int, int]] = {}
        self._files: dict[str, Any] = {}
        self._analyses: dict[Any, Any] = {}
        self._items: dict[int, dict[str, str]] = {}
        self._task_codes: dict[Any, tuple[dict[str, str], str]] = {}
        self._in_progress: set[int] = set()  # ids of functions and classes being computed
        self._partial = 0  # how many times a computation met one still in progress
        self._project_file: dict[str, str | None] = {}

    # -- public -----------------------------------------------------------------------------

    def task_code(self, function: Callable[..., Any]) -> tuple[dict[str, str], str]:
        """(code items, their digest) of a task function; shared by every function made from
        the same code in the same module without a closure (a loop declaring many tasks).
        The returned dict must not be modified."""
        code = getattr(function, "__code__", None)
        cacheable = code is not None and not function.__closure__
        key = (code, id(function.__globals__)) if cacheable else None
        cached = self._task_codes.get(key) if key else None
        if cached is None:
            items = dict(self._function_items(function))
            cached = (items, code_digest(items))
            if key:
                self._task_codes[key] = cached
        return cached

    # -- project membership ------------------------------------------------------------------

    def relative_project_file(self, filename: str | None, module: str | None = None) -> str | None:
        """The file's path relative to the root when it is project code, else None."""
        if not filename:
            return None
        cached = self._project_file.get(filename, ...)
        if cached is not ...:
            return cached
        result: str | None = None
        path = os.path.realpath(filename)
        root = str(self.root)
        if is_project_file(path, root):
            result = path[len(root) + 1 :].replace(os.sep, "/")
        elif module and module.partition(".")[0] in self.project_packages and is_installation(path):
            # A src-layout package installed without -e lives in site-packages and is still
            # the user's own code.
            result = module.replace(".", "/") + os.path.splitext(path)[1]
        self._project_file[filename] = result
        return result

    # -- analysis -----------------------------------------------------------------------------

    def _source(self, filename: str) -> Any:
        """The parsed file (``cpbuild.source.SourceFile``), parsed at most once per tracker."""
        if filename not in self._files:
            from cpbuild import source

            try:
                self._files[filename] = source.SourceFile(filename)
            except (OSError, SyntaxError, ValueError):
                self._files[filename] = None
        return self._files[filename]

    def _persistent(self, filename: str, what: str, compute: Callable[[], Any]) -> Any:
        """An analysis from the code cache when ``filename`` is unchanged, else computed
        (and remembered unless the file is so new that a same-tick edit could hide)."""
        stat = self._stats.get(filename)
        if stat is None:
            try:
                st = os.stat(filename)
                stat = self._stats[filename] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stat = self._stats[filename] = (-1, -1)
        key = f"{ANALYSIS_VERSION}\0{filename}\0{what}"
        entry = self.cache.get(key)
        if entry is not None and entry[0] == stat[0] and entry[1] == stat[1]:
            return entry[2]
        result = compute()
        if stat[0] >= 0 and time.time_ns() - stat[1] > RACY_NS:
            self.new_cache[key] = (stat[0], stat[1], result)
        return result

    def _analyse_function(self, function: types.FunctionType) -> tuple[str, tuple[tuple[str, ...], ...]] | None:
        code = function.__code__
        if code not in self._analyses:

            def compute() -> Any:
                from cpbuild import source

                parsed = self._source(code.co_filename)
                node = source.function_node(parsed, code, function.__name__) if parsed else None
                return tuple(source.analyse(node, function.__globals__, parsed)) if node is not None else None

            what = f"{code.co_firstlineno}:{code.co_name}"
            self._analyses[code] = self._persistent(code.co_filename, what, compute)
        return self._analyses[code]

    def _analyse_class(self, cls: type, filename: str) -> tuple[str, tuple[tuple[str, ...], ...]] | None:
        key = (filename, cls.__qualname__)
        if key not in self._analyses:

            def compute() -> Any:
                from cpbuild import source

                parsed = self._source(filename)
                node = source.class_node(parsed, cls) if parsed else None
                module = sys.modules.get(cls.__module__)
                if node is None or module is None:
                    return None
                return tuple(source.analyse(node, vars(module), parsed))

            self._analyses[key] = self._persistent(filename, f"class {cls.__qualname__}", compute)
        return self._analyses[key]

    # -- items ------------------------------------------------------------------------------

    def _function_items(self, function: Callable[..., Any]) -> dict[str, str]:
        """The function's own item and, transitively, the items of everything it references.

        A result is shared (cached) only when it is complete. Reaching a function that is
        still being computed (mutual recursion) contributes that function's own item; the
        results computed on the way are partial and are not cached, so what a task's key
        contains never depends on which other tasks were computed first.
        """
        function = inspect_unwrap(function)
        ident = id(function)
        cached = self._items.get(ident)
        if cached is not None:
            return cached
        if not isinstance(function, types.FunctionType):
            return {}
        code = function.__code__
        rel = self.relative_project_file(code.co_filename, function.__module__)
        name = f"{FUNCTION} {rel}::{function.__qualname__}"
        analysis = self._analyse_function(function)
        if analysis is None:
            # No source (e.g. defined in an interactive session): fall back to the bytecode,
            # which changes with formatting but never misses a real change.
            return {name: _digest(repr(_code_fingerprint(code)))}
        items = {name: analysis[0]}
        if ident in self._in_progress:
            self._partial += 1
            return items
        self._in_progress.add(ident)
        partial_before = self._partial
        try:
            closure = _closure_vars(function)
            for chain in analysis[1]:
                if chain[0] in closure:
                    obj = closure[chain[0]]
                elif chain[0] in function.__globals__:
                    obj = function.__globals__[chain[0]]
                else:
                    continue  # a builtin, or a name that does not exist (yet)
                self._add_reference(items, obj, chain, rel, function.__module__)
        finally:
            self._in_progress.discard(ident)
        if self._partial == partial_before:
            self._items[ident] = items
        return items

    def _add_reference(
        self, items: dict[str, str], obj: Any, chain: tuple[str, ...], rel: str | None, module: str
    ) -> None:
        # Follow attributes through modules: ``helpers.scale`` is the function ``scale``.
        depth = 1
        while isinstance(obj, types.ModuleType) and depth < len(chain):
            nxt = getattr(obj, chain[depth], _MISSING)
            if nxt is _MISSING:
                break
            obj, module, depth = nxt, obj.__name__, depth + 1
            rel = self.relative_project_file(getattr(sys.modules.get(module), "__file__", None), module)
        label = ".".join(chain[:depth])
        if depth > 1 and rel is None and not isinstance(obj, types.FunctionType | type):
            # An attribute of a library module (``np.pi``, ``os.environ``): the library's
            # version identifies it.
            items.update(self._library_items(module))
            return
        for name, value in self._object_items(obj, label, rel, module):
            items[name] = value

    def _object_items(
        self, obj: Any, label: str, rel: str | None, module: str
    ) -> Iterator[tuple[str, str]]:
        if isinstance(obj, types.ModuleType):
            yield from self._module_items(obj)
            return
        target = inspect_unwrap(obj)
        if isinstance(target, types.FunctionType):
            if self.relative_project_file(target.__code__.co_filename, target.__module__):
                yield from self._function_items(target).items()
            else:
                yield from self._library_items(target.__module__)
            return
        if isinstance(target, types.MethodType):
            yield from self._object_items(target.__func__, label, rel, module)
            return
        if isinstance(target, type):
            yield from self._class_items(target)
            return
        if isinstance(target, types.BuiltinFunctionType | types.BuiltinMethodType):
            yield from self._library_items(getattr(target, "__module__", None))
            return
        if is_cpbuild_object(obj):
            return  # declarations (Product, Needs, mark): not computation
        try:
            yield f"{CONSTANT} {rel}::{label}", canonical(obj, self.root)
            return
        except NotSimple:
            pass
        # An arbitrary object: identified by its type only (a documented limit).
        yield f"{OBJECT} {rel}::{label}", f"instance of {type(obj).__module__}.{type(obj).__qualname__}"
        yield from self._class_items(type(obj))

    def _module_items(self, module: types.ModuleType) -> Iterator[tuple[str, str]]:
        rel = self.relative_project_file(getattr(module, "__file__", None), module.__name__)
        if rel is None:
            yield from self._library_items(module.__name__)
            return
        def compute() -> str:
            from cpbuild import source

            parsed = self._source(module.__file__)
            return source.module_digest(parsed) if parsed else _digest(rel)

        yield f"{MODULE} {rel}", self._persistent(module.__file__, "module", compute)

    def _class_items(self, cls: type) -> Iterator[tuple[str, str]]:
        """The class body's item, what it references and its project bases (cached as
        functions are: only complete results)."""
        module = sys.modules.get(cls.__module__)
        filename = getattr(module, "__file__", None)
        rel = self.relative_project_file(filename, cls.__module__)
        if rel is None:
            yield from self._library_items(cls.__module__)
            return
        ident = id(cls)
        cached = self._items.get(ident)
        if cached is not None:
            yield from cached.items()
            return
        analysis = self._analyse_class(cls, filename)
        items = {f"{CLASS} {rel}::{cls.__qualname__}": analysis[0] if analysis else _digest(cls.__qualname__)}
        if ident in self._in_progress:
            self._partial += 1
            yield from items.items()
            return
        self._in_progress.add(ident)
        partial_before = self._partial
        try:
            if analysis is not None:
                namespace = vars(module)
                for chain in analysis[1]:
                    if chain[0] in namespace:
                        self._add_reference(items, namespace[chain[0]], chain, rel, cls.__module__)
            for base in cls.__bases__:
                if base is not object:
                    items.update(self._class_items(base))
        finally:
            self._in_progress.discard(ident)
        if self._partial == partial_before:
            self._items[ident] = items
        yield from items.items()

    def _library_items(self, module_name: str | None) -> Iterator[tuple[str, str]]:
        if not module_name:
            return
        top = module_name.partition(".")[0]
        if top in sys.stdlib_module_names or top in ("builtins", "__main__", "cpbuild"):
            return  # the Python version is part of every key already
        yield f"{LIBRARY} {top}", self.library_version(top)


_MISSING = object()


def inspect_unwrap(obj: Any) -> Any:
    """Follow ``__wrapped__`` (functools.wraps, lru_cache) to the user's function; classes and
    modules are what they are."""
    try:
        return inspect.unwrap(obj, stop=lambda f: isinstance(f, type | types.ModuleType))
    except ValueError:  # a cycle of __wrapped__
        return obj


def _closure_vars(function: types.FunctionType) -> dict[str, Any]:
    if not function.__closure__:
        return {}
    result = {}
    for name, cell in zip(function.__code__.co_freevars, function.__closure__, strict=True):
        try:
            result[name] = cell.cell_contents
        except ValueError:  # an empty cell: the variable is not assigned yet
            continue
    return result


def _code_fingerprint(code: types.CodeType) -> tuple[Any, ...]:
    consts = tuple(
        _code_fingerprint(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts
    )
    return (code.co_code, consts, code.co_names, code.co_varnames)


def code_digest(items: dict[str, str]) -> str:
    """The digest of a set of code items, independent of their order."""
    return _digest("\n".join(f"{k}={v}" for k, v in sorted(items.items())))
