"""Importing the project's own modules without ever running stale bytecode.

CPython trusts a ``.pyc`` file when the source's size and modification time *in whole
seconds* match what the ``.pyc`` recorded. An edit that keeps the size, saved within the same
second as an earlier import (an editor's auto-save, a script, a quick fix-and-rerun), then
runs the old code. A build tool would record the old code's result under the new code's key.

Project modules (task modules and the helpers they import, i.e. files under the project root)
are therefore loaded by ``ProjectLoader``, which keeps bytecode in checked-hash ``.pyc`` files
(PEP 552): the cached code is used only when a hash of the current source matches. Reading
and hashing a source file costs far less than compiling it. Modules outside the project load
as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import os
import sys
from typing import Any

from cpbuild.project import is_installation

_CHECKED_HASH = (0b11).to_bytes(4, "little")  # PEP 552 flags: hash-based, check the source


class ProjectLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> Any:
        source_path = self.get_filename(fullname)
        source = self.get_data(source_path)
        source_hash = importlib.util.source_hash(source)
        cache = importlib.util.cache_from_source(source_path)
        try:
            with open(cache, "rb") as stream:
                data = stream.read()
        except OSError:
            data = b""
        if (
            data[:4] == importlib.util.MAGIC_NUMBER
            and data[4:8] == _CHECKED_HASH
            and data[8:16] == source_hash
        ):
            try:
                return marshal.loads(data[16:])
            except (EOFError, ValueError, TypeError):
                pass  # a damaged cache file: compile again
        code = self.source_to_code(source, source_path)
        if not sys.dont_write_bytecode:
            payload = importlib.util.MAGIC_NUMBER + _CHECKED_HASH + source_hash + marshal.dumps(code)
            try:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                tmp = f"{cache}.{os.getpid()}.tmp"
                with open(tmp, "wb") as stream:
                    stream.write(payload)
                os.replace(tmp, cache)
            except OSError:
                pass  # a read-only tree: compile every time, still correct
        return code


def install(root: str) -> None:
    """Load modules found in folders under ``root`` with ``ProjectLoader`` from now on."""
    prefix = root.rstrip(os.sep) + os.sep
    for hook in sys.path_hooks:
        if getattr(hook, "cpbuild_root", None) == prefix:
            return
    project_hook = importlib.machinery.FileFinder.path_hook(
        (ProjectLoader, importlib.machinery.SOURCE_SUFFIXES)
    )

    def hook(path: str) -> Any:
        folder = os.path.abspath(path or os.getcwd())
        if not (folder + os.sep).startswith(prefix) or is_installation(folder):
            raise ImportError("not a project folder")  # the next hook handles it
        return project_hook(folder)

    hook.cpbuild_root = prefix  # type: ignore[attr-defined]
    sys.path_hooks.insert(0, hook)
    for path in list(sys.path_importer_cache):
        if (os.path.abspath(path or os.getcwd()) + os.sep).startswith(prefix):
            del sys.path_importer_cache[path]


def spec_for_file(name: str, path: str) -> Any:
    """A module spec for a task file, loaded by ``ProjectLoader``."""
    return importlib.util.spec_from_file_location(name, path, loader=ProjectLoader(name, path))

