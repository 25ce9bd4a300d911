"""The local object store: one file per object, named by its digest.

Layout: ``<cache_dir>/objects/<first two hex digits>/<rest of the digest>``. An object is
written to a temporary file in the same folder and renamed into place, so a reader sees either
nothing or the whole object, and a crash leaves at most a stray ``.tmp`` file. Reads are
verified against the digest: a corrupted object is reported, deleted and treated as a miss,
never returned.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cpbuild.hookspecs import hookimpl


class LocalStorage:
    #: Workers on this machine (or on a shared file system) can read and write it directly.
    shareable = True

    def __init__(self, folder: Path, hasher: Any) -> None:
        self.folder = folder
        self.hasher = hasher
        self._present: set[str] = set()  # written or seen by this process: no need to look again

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return digest in self._present or self._path(digest).is_file()

    def get(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if self.hasher.bytes_digest(data) != digest:
            print(f"cpbuild: warning: object {digest[:12]} in {self.folder} is corrupted; "
                  "it is deleted and will be rebuilt", file=sys.stderr)
            path.unlink(missing_ok=True)
            self._present.discard(digest)
            return None
        return data

    def put(self, digest: str, data: bytes) -> None:
        if digest in self._present:
            return
        path = self._path(digest)
        if path.is_file():
            self._present.add(digest)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._present.add(digest)

    def delete(self, digest: str) -> None:
        self._present.discard(digest)
        self._path(digest).unlink(missing_ok=True)

    def iter_digests(self) -> Iterator[str]:
        if not self.folder.is_dir():
            return
        for sub in sorted(self.folder.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for item in sorted(sub.iterdir()):
                    if not item.name.startswith("."):
                        yield sub.name + item.name


@hookimpl
def cpbuild_storage_names() -> list[str]:
    return ["local"]


@hookimpl
def cpbuild_make_storage(name: str, config: Any, hasher: Any) -> LocalStorage | None:
    if name != "local":
        return None
    return LocalStorage(config.cache_path / "objects", hasher)
