"""What the installed Python environment provides: plugin entry points, library versions.

Both come from ``importlib.metadata``, which scans every installed distribution: importing it and
scanning cost more than a whole no-op build of a small project. The answers change only when
packages are installed or removed, which changes the modification time of the folder they are
installed into. So they are kept together with the modification times of the ``sys.path``
folders outside the project, and reused while those are unchanged.

They describe the Python environment rather than the build, so they live in the user's cache
folder (``user_cache_folder``), one file per interpreter, import path and project folder: a
deleted ``.cpbuild/`` does not cost the scan again.

Limit: a distribution's metadata edited in place (not reinstalled) is not noticed until some
install touches its folder; ``rm -r ~/.cache/cpbuild`` forgets the cache.
"""

from __future__ import annotations

import marshal
import os
import sys
import time
from pathlib import Path
from typing import Any

from cpbuild.project import RACY_NS, is_installation

_FORMAT = 1


def user_cache_folder() -> Path | None:
    """cpbuild's folder in the user's cache: ``$XDG_CACHE_HOME/cpbuild``, else
    ``~/.cache/cpbuild`` (``%LOCALAPPDATA%\\cpbuild`` on Windows); None for a user without a
    home folder (a container run under a bare user id): nothing is cached then."""
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else None
    )
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):
            return None
    return Path(base) / "cpbuild"


class Environment:
    def __init__(self, cache_folder: Path | None, root: Path | None = None) -> None:
        """``cache_folder``: where to keep the answers (None: nowhere), in a file named after
        the interpreter, the import path outside the project and the project: the project's
        own folders are on the import path too (``src/``, where a package's metadata may lie),
        and the signature leaves them out."""
        self.signature = self._signature(root)
        self.cache_file: Path | None = None
        if cache_folder is not None:
            import hashlib

            folders = [folder for folder, _ in self.signature]
            key = repr((sys.executable, str(root), folders))
            self.cache_file = cache_folder / f"environment-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
        self.entry_points: list[tuple[str, str, str, str]] | None = None
        self.versions: dict[str, str] = {}
        self._changed = False
        self._load()

    @staticmethod
    def _signature(root: Path | None) -> tuple[tuple[str, int], ...]:
        """(folder, mtime_ns) of the import path outside the project."""
        project = f"{root}{os.sep}" if root else None
        result = []
        for entry in sys.path:
            folder = entry or os.getcwd()
            if project and (folder + os.sep).startswith(project) and not is_installation(folder):
                continue  # the project's own folders change with every edit (not its .venv)
            try:
                result.append((folder, os.stat(folder).st_mtime_ns))
            except OSError:
                result.append((folder, -1))
        return tuple(result)

    def _load(self) -> None:
        if self.cache_file is None:
            return
        try:
            data = marshal.loads(self.cache_file.read_bytes())
        except (OSError, EOFError, ValueError, TypeError):
            return
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return
        if data.get("python") != sys.version or data.get("signature") != self.signature:
            return
        self.entry_points = data["entry_points"]
        self.versions = data["versions"]

    def save(self) -> None:
        """Write the cache if anything new was learnt and the environment is not in flux."""
        if not self._changed or self.cache_file is None:
            return
        now = time.time_ns()
        if any(now - mtime < RACY_NS for _, mtime in self.signature):
            return
        data = {
            "format": _FORMAT,
            "python": sys.version,
            "signature": self.signature,
            "entry_points": self.entry_points,
            "versions": self.versions,
        }
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(self.cache_file.name + ".tmp")
            tmp.write_bytes(marshal.dumps(data))
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # a cache: not being able to write it only costs time
        self._changed = False

    def plugin_entry_points(self, group: str = "cpbuild") -> list[tuple[str, str, str, str]]:
        """(name, "module:attr", distribution, version) of every entry point in ``group``."""
        if self.entry_points is None:
            import importlib.metadata as metadata

            found = []
            for entry_point in metadata.entry_points(group=group):
                dist = entry_point.dist
                found.append(
                    (entry_point.name, entry_point.value,
                     dist.metadata["Name"] if dist else "", dist.version if dist else "")
                )
            self.entry_points = sorted(found)
            self._changed = True
        return self.entry_points

    def library_version(self, top: str) -> str:
        """The installed distribution(s) providing the top-level module ``top``, with versions."""
        version = self.versions.get(top)
        if version is None:
            version = self.versions[top] = _distribution_version(top)
            self._changed = True
        return version


def _distribution_version(top: str) -> str:
    import importlib.metadata as metadata

    try:
        return metadata.version(top)
    except metadata.PackageNotFoundError:
        pass
    versions = []
    for distribution in metadata.packages_distributions().get(top, ()):
        try:
            versions.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    if versions:
        return ", ".join(sorted(versions))
    module: Any = sys.modules.get(top)
    return str(getattr(module, "__version__", "unknown version"))


