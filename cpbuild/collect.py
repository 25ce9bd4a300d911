"""Collecting tasks: find ``task_*.py`` files, import them, turn declarations into ``Task``s.

The built-in Python collector is a plugin (``PythonCollector``) behind ``cpbuild_collect_file``,
so a plugin can collect other kinds of files the same way.

Module naming: a task file inside a package (its folder has ``__init__.py``) is imported under
its package name, so relative imports work and a src-layout project's task modules are the
package's own modules. A loose task file gets a unique synthetic name derived from its path, so
two ``task_data.py`` in different folders never collide in ``sys.modules``.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cpbuild import loader
from cpbuild.api import DECLARATIONS, MARKERS, Declaration, Mark, Needs, Product, TaskOptions
from cpbuild.errors import CollectionError
from cpbuild.hookspecs import hookimpl
from cpbuild.model import Param, ParamKind, Task, is_path_structure, leaves, map_paths
from cpbuild.project import IGNORED_DIRS, TASK_MODULE_PREFIX

TASK_FILE_PATTERN = "task_*.py"


def find_files(root: Path, paths: Iterable[str], patterns: list[str], skip: Iterable[Path]) -> list[Path]:
    """Files under the configured paths whose names match one of ``patterns``, sorted.

    Data folders can hold thousands of files: names are matched with one compiled expression
    and folders are listed with ``os.scandir`` (no extra ``stat`` per entry).
    """
    skipped = {str(p) for p in skip}
    matches = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match
    found: set[Path] = set()
    for entry in paths:
        start = os.path.normpath(root / entry)
        if os.path.isfile(start):
            found.add(Path(start))
            continue
        stack = [start]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            names = {e.name for e in entries}
            if folder != start and "pyvenv.cfg" in names:
                continue  # a virtual environment
            for item in entries:
                name = item.name
                if item.is_dir():
                    if name not in IGNORED_DIRS and name[0] != "." and item.path not in skipped:
                        stack.append(item.path)
                elif matches(name):
                    found.add(Path(item.path))
    return sorted(found)


def _package_root(folder: Path) -> Path | None:
    """The topmost folder of the package chain holding ``folder``, if it is a package."""
    top = None
    while (folder / "__init__.py").is_file():
        top = folder
        folder = folder.parent
    return top


def synthetic_module_name(rel: str) -> str:
    stem = re.sub(r"\W", "_", rel.removesuffix(".py").replace("/", "__"))
    return f"{TASK_MODULE_PREFIX}{stem}"


def import_task_module(path: Path, root: Path) -> types.ModuleType:
    """Import one task file; the folder is put on ``sys.path`` so sibling helpers import."""
    package_top = _package_root(path.parent)
    if package_top is not None:
        base = str(package_top.parent)
        if base not in sys.path:
            sys.path.insert(0, base)
        dotted = ".".join(path.relative_to(package_top.parent).with_suffix("").parts)
        return importlib.import_module(dotted)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    name = synthetic_module_name(rel)
    spec = loader.spec_for_file(name, str(path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def describe_import_error(path: Path, root: Path, error: BaseException) -> str:
    """A short message for a task file that fails to import: file and line first."""
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    if isinstance(error, SyntaxError):
        source = Path(error.filename) if error.filename else path
        shown_file = source.relative_to(root) if source.is_relative_to(root) else source
        where = f"{shown_file}:{error.lineno}" if error.lineno else str(shown_file)
        if source != path:
            where += f" (imported by {rel})"
        line = (error.text or "").rstrip("\n")
        caret = ""
        if line and error.offset:
            caret = "\n    " + " " * (error.offset - 1 - (len(line) - len(line.lstrip()))) + "^"
        shown = f"\n    {line.strip()}{caret}" if line else ""
        return f"{where}: SyntaxError: {error.msg}{shown}"
    from cpbuild.tracebacks import format_user_traceback

    return f"{rel}: error while importing the task file:\n{format_user_traceback(error)}".rstrip()


class PythonCollector:
    """Built-in plugin: collects tasks from ``task_*.py`` modules (DESIGN §3)."""

    @hookimpl
    def cpbuild_collect_patterns(self) -> list[str]:
        return [TASK_FILE_PATTERN]

    @hookimpl
    def cpbuild_collect_file(self, session: Any, path: Path) -> list[Task] | None:
        if not fnmatch.fnmatchcase(path.name, TASK_FILE_PATTERN):
            return None
        root = session.config.root
        try:
            module = import_task_module(path, root)
        except (Exception, SystemExit) as error:  # sys.exit() or argparse at import time
            raise CollectionError(describe_import_error(path, root, error)) from None
        return tasks_from_module(module, path, root)


def _module_declarations(module: types.ModuleType) -> list[Declaration]:
    """``@task`` applications in the order they ran, and undecorated ``task_*`` functions,
    merged by source line (a stable sort keeps the order of a loop's declarations)."""
    declared: list[Declaration] = list(vars(module).get(DECLARATIONS, ()))
    seen = {id(d.function) for d in declared}
    undecorated = [
        Declaration(obj, TaskOptions())
        for name, obj in list(vars(module).items())
        if name.startswith("task_")
        and isinstance(obj, types.FunctionType)
        and obj.__module__ == module.__name__
        and id(obj) not in seen
    ]
    if undecorated:
        declared = sorted(declared + undecorated, key=lambda d: _first_line(d.function))
    return declared


def _first_line(function: Callable[..., Any]) -> int:
    code = getattr(function, "__code__", None)
    return code.co_firstlineno if code else 0


def tasks_from_module(module: types.ModuleType, path: Path, root: Path) -> list[Task]:
    """Turn a module's declarations into tasks; every bad declaration is one error."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    declarations = _module_declarations(module)
    bases = [_base_name(declaration) for declaration in declarations]
    counts: dict[str, int] = {}
    for base in bases:
        counts[base] = counts.get(base, 0) + 1
    tasks: list[Task] = []
    errors: list[str] = []
    used_ids: dict[str, int] = {}
    signatures: dict[Any, Any] = {}
    folder = str(path.parent) + os.sep
    for declaration, base in zip(declarations, bases, strict=True):
        options = declaration.options
        param_id = options.id
        if param_id is None and counts[base] > 1:
            param_id = _auto_id(options.kwargs, used_ids.get(base, 0))
        used_ids[base] = used_ids.get(base, 0) + 1
        name = f"{base}[{param_id}]" if param_id is not None else base
        task_id = f"{rel}::{name}"
        try:
            tasks.append(_make_task(declaration, task_id, name, base, path, folder, signatures))
        except CollectionError as error:
            errors.extend(error.errors)
    if errors:
        raise CollectionError(errors[0], errors)
    return tasks


def _base_name(declaration: Declaration) -> str:
    if declaration.options.name:
        return declaration.options.name
    return declaration.function.__name__.removeprefix("task_")


def _auto_id(kwargs: Any, index: int) -> str:
    """pytest-style ids from simple argument values, falling back to the position."""
    parts = []
    for value in kwargs.values():
        if isinstance(value, str | int | float | bool) or value is None:
            parts.append(str(value))
        elif isinstance(value, Path):
            parts.append(value.stem)
        else:
            return str(index)
    return "-".join(parts) if parts else str(index)


def _annotation_metadata(function: Callable[..., Any], name: str) -> tuple[Any, ...]:
    annotation = getattr(function, "__annotations__", {}).get(name)
    if annotation is None:
        return ()
    if isinstance(annotation, str):  # from __future__ import annotations
        try:
            annotation = eval(annotation, function.__globals__)  # noqa: S307 - the user's own code
        except Exception:
            return ()
    if typing.get_origin(annotation) is typing.Annotated:
        return tuple(annotation.__metadata__)
    return ()


#: Per code object: (name, is product, Needs target or None, default index or None) for each
#: parameter. A loop that declares 2,000 tasks defines one code object, analysed once.
_Signature = tuple[tuple[str, bool, str | None, int | None, bool], ...]


def _signature(
    function: types.FunctionType, cache: dict[Any, tuple[_Signature, frozenset[str]]]
) -> tuple[_Signature, frozenset[str]]:
    """Parameters read from the code object, because ``inspect.signature`` costs more than the
    rest of collecting a task. Defaults are looked up per function object by the caller."""
    code = function.__code__
    cached = cache.get(code)
    if cached is not None:
        return cached
    positional = code.co_varnames[: code.co_argcount]
    keyword_only = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    offset = len(positional) - len(function.__defaults__ or ())
    result = []
    for i, name in enumerate((*positional, *keyword_only)):
        metadata = _annotation_metadata(function, name)
        is_product = name == "produces" or any(m is Product for m in metadata)
        needs = next((m.target for m in metadata if isinstance(m, Needs)), None)
        positional_default = i - offset if offset <= i < len(positional) else None
        result.append((name, is_product, needs, positional_default, i >= len(positional)))
    cache[code] = entry = (tuple(result), frozenset((*positional, *keyword_only)))
    return entry


def _make_task(
    declaration: Declaration,
    task_id: str,
    name: str,
    base: str,
    path: Path,
    folder: str,
    cache: dict[Any, Any],
) -> Task:
    """Bind each parameter (DESIGN §3 rule 2). Runs once per task on every build: kept lean."""
    function = declaration.function
    options = declaration.options
    if not isinstance(function, types.FunctionType):
        raise CollectionError(f"{task_id}: a task must be a plain function, not {type(function).__name__}")
    normpath, fspath, sep = os.path.normpath, os.fspath, os.sep

    def absolute(p: Path) -> str:
        text = fspath(p)
        if text[:1] == sep:
            return normpath(text)
        if text[:1] == "." or "/." in text or "//" in text or text[-1:] == sep:
            return normpath(folder + text)
        return folder + text  # already normal: skip normpath, the common case

    signature, names = _signature(function, cache)
    kwargs = options.kwargs
    if kwargs and not kwargs.keys() <= names:
        unknown = sorted(set(kwargs) - names)
        raise CollectionError(
            f"{task_id}: @task(kwargs=...) names {', '.join(map(repr, unknown))}, which "
            f"{'is not a parameter' if len(unknown) == 1 else 'are not parameters'} of "
            f"{function.__name__}({', '.join(sorted(names))})"
        )
    defaults = function.__defaults__ or ()
    kwdefaults = function.__kwdefaults__ or {}
    params: list[Param] = []
    inputs: list[str] = []
    products: list[str] = []
    for pname, is_product, needs, default_index, keyword_only in signature:
        if pname in kwargs:
            value, has_default, given = kwargs[pname], True, True
        elif keyword_only:
            value, has_default, given = kwdefaults.get(pname), pname in kwdefaults, False
        elif default_index is not None:
            value, has_default, given = defaults[default_index], True, False
        else:
            value, has_default, given = None, False, False
        if isinstance(value, Path):  # the common case, without the general walk
            value, paths = absolute(value), True
            files = (value,)
        elif has_default and type(value) is not str and is_path_structure(value):
            value, paths = map_paths(value, absolute), True
            files = tuple(leaves(value))
        else:
            paths = False
        if is_product:
            if not paths:
                where = "in @task(kwargs=...)" if given else "as its default"
                raise CollectionError(
                    f"{task_id}: product parameter '{pname}' needs a Path or a list/dict of "
                    f"Paths {where}, got {value!r}"
                )
            products.extend(files)
            params.append(Param(pname, ParamKind.PRODUCT, value))
        elif paths:
            inputs.extend(files)
            params.append(Param(pname, ParamKind.INPUT, value))
        elif given:
            params.append(Param(pname, ParamKind.ARG, value, True))
        elif needs is not None:
            params.append(Param(pname, ParamKind.VALUE, needs))
        else:
            params.append(Param(pname, ParamKind.NAME, value, has_default))
    markers: list[Mark] = list(getattr(function, MARKERS, ()))
    if options.markers:
        markers.extend(Mark(m) for m in options.markers)
    return Task(
        id=task_id,
        name=name,
        base_name=base,
        path=path,
        function=function,
        params=tuple(params),
        options=options,
        markers=frozenset(m.name for m in markers) if markers else frozenset(),
        skip_reason=_skip_reason(markers) if markers else None,
        input_files=tuple(inputs),
        product_files=tuple(products),
    )


def _skip_reason(markers: list[Mark]) -> str | None:
    for marker in markers:
        if marker.name == "skip":
            return str(marker.kwargs.get("reason") or (marker.args[0] if marker.args else "marked skip"))
        if marker.name == "skipif" and marker.args and marker.args[0]:
            return str(marker.kwargs.get("reason", "skipif condition is true"))
    return None
