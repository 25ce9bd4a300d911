"""What belongs to the project: one set of rules for every module that asks.

Code keys, shipping task code to workers, reloading modules in watch mode and loading modules
without stale bytecode all need to know which files are the project's own code, and they must
agree: a helper tracked by the key but not reloaded by the watch would run stale.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: A file modified this recently may be modified again within the file system's timestamp
#: granularity without its stat changing ("racy", as git calls it): what was read from it is
#: used, but not remembered across builds until it is older. Linux file systems stamp files
#: with a clock of at most one scheduler tick (10 ms); twice that is the margin. File systems
#: with coarser timestamps (FAT: 2 s, some network file systems: 1 s) are not covered by it.
RACY_NS = 20_000_000

#: Folders that are never project code or task files.
IGNORED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".tox", ".nox", ".venv", "venv",
     ".mypy_cache", ".pytest_cache", ".ruff_cache", "site-packages", "dist-packages",
     ".ipynb_checkpoints"}
)

#: Prefix of the module names given to loose task files (``cpbuild.collect``).
TASK_MODULE_PREFIX = "cpbuild_tasks_"

_CPBUILD_DIR = str(Path(__file__).resolve().parent)


def is_installation(folder: str) -> bool:
    """A folder inside an installation of packages (a virtual environment's site-packages)."""
    parts = folder.split(os.sep)
    return "site-packages" in parts or "dist-packages" in parts


def is_project_file(file: str, root: str) -> bool:
    """A file under the project root that is the project's own code: not cpbuild itself, not
    inside a virtual environment, a cache or version control folder."""
    if not file.startswith(root + os.sep) or file.startswith(_CPBUILD_DIR + os.sep):
        return False
    parts = file[len(root) + 1 :].split(os.sep)[:-1]
    return not any(p in IGNORED_DIRS for p in parts)


def project_modules(root: str, keep: Iterable[Any] = ()) -> dict[str, str]:
    """Module name -> file of the project's modules in ``sys.modules``, except the module
    objects in ``keep`` (plugins of the running process). Namespace packages map to ""."""
    kept = {id(m) for m in keep}
    found = {}
    for name, module in list(sys.modules.items()):
        if name == "__main__" or id(module) in kept:
            continue
        file = getattr(module, "__file__", None)
        if file:
            if name.startswith(TASK_MODULE_PREFIX) or is_project_file(file, root):
                found[name] = file
        elif name.startswith(TASK_MODULE_PREFIX):
            found[name] = ""
        else:
            paths = list(getattr(module, "__path__", ()) or ())
            if paths and all(is_project_file(os.path.join(p, "x"), root) for p in paths):
                found[name] = ""
    return found


def relative(path: str, root: str) -> str:
    """``path`` relative to the project root as users write it, else unchanged."""
    prefix = root + os.sep
    return path[len(prefix) :] if path.startswith(prefix) else path


def add_import_paths(root: Path) -> None:
    """The project root (and ``src/``) are importable, as DESIGN §3 rule 3 says."""
    for folder in (root / "src", root):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
