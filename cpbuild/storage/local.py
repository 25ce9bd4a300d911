"""The local object store: small objects in one SQLite pack, larger ones one file each.

Layout: ``<cache_dir>/objects/pack.db`` holds objects up to ``PACK_LIMIT`` bytes (table
``objects``: digest, data); larger objects are files ``<cache_dir>/objects/<first two hex
digits>/<rest of the digest>``. Most task values are small (a number, a short list, a config
dict), and creating a file costs far more than the value: ~0.2 ms per file on ext4 against
~0.02 ms per row in a WAL-mode SQLite database; a thousand small values would otherwise spend
most of a build creating files. Large values stay files, where the file system is at its best
and a value can be read without copying it through SQLite.

Both forms are written atomically: a row in its own transaction, a file written to a
temporary file in the same folder and renamed into place, so a reader sees either nothing or
the whole object, and a crash leaves at most a stray ``.tmp`` file. Reads are verified against
the digest: a corrupted object is reported, deleted and treated as a miss, never returned.

Worker processes and threads write to the store directly (``shareable``): each process and
thread opens its own connection to the pack, and SQLite serializes the writers.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cpbuild.hookspecs import hookimpl

#: Objects up to this size go to the pack; SQLite reads and writes blobs of this size faster
#: than the file system creates files.
PACK_LIMIT = 64 * 1024
#: After this many lookups in one process, the digests in the pack are read in one query (a
#: no-op build checks that every consumed value is still there: a query per task otherwise).
#: Only hits are trusted from that list; a miss is asked again (workers keep adding objects).
_LOOKUPS_BEFORE_LISTING = 32


class LocalStorage:
    #: Workers on this machine (or on a shared file system) can read and write it directly.
    shareable = True

    def __init__(self, folder: Path, hasher: Any) -> None:
        self.folder = folder
        self.hasher = hasher
        self._present: set[str] = set()  # written or seen by this process: no need to look again
        self._packed: set[str] | None = None  # every digest in the pack, once listed
        self._lookups = 0
        self._local = threading.local()  # a connection to the pack per thread

    def __getstate__(self) -> dict[str, Any]:  # sent to worker processes without connections
        return {"folder": self.folder, "hasher": self.hasher}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["hasher"])  # type: ignore[misc]

    def _pack(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._local.db = self._open_pack()
            except sqlite3.DatabaseError as error:
                from cpbuild.errors import StateError

                raise StateError(
                    f"{self.folder / 'pack.db'} cannot be used ({error}); delete it to start "
                    "afresh (the tasks whose values it held run once more)"
                ) from None
        return db

    def _open_pack(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "pack.db"
        new = not path.exists()
        db = sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)
        if new:  # made without waiting for the disk, as the state database (State._open)
            db.execute("PRAGMA synchronous=OFF")
        for attempt in range(200):  # workers starting at once may create it together
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS objects "
                           "(digest TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 199:
                    raise
                time.sleep(0.01)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def before_fork(self) -> None:
        """Close this thread's connection to the pack (reopened on next use). The process
        executor forks its workers after calling this: SQLite keeps per-process state about
        every open database file, and a forked worker that inherited it for the pack could
        not use the pack at all (SQLITE_PROTOCOL after ten seconds of retries)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.close()

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / digest[2:]

    def _in_pack(self, digest: str) -> bool:
        self._lookups += 1
        if self._packed is None and self._lookups > _LOOKUPS_BEFORE_LISTING:
            self._packed = {row[0] for row in self._pack().execute("SELECT digest FROM objects")}
        if self._packed is not None and digest in self._packed:
            return True  # a miss is asked again below: a worker may have added it since
        return self._pack().execute("SELECT 1 FROM objects WHERE digest = ?", (digest,)).fetchone() is not None

    def has(self, digest: str) -> bool:
        if digest in self._present or self._in_pack(digest) or self._path(digest).is_file():
            self._present.add(digest)
            return True
        return False

    def get(self, digest: str) -> bytes | None:
        row = self._pack().execute("SELECT data FROM objects WHERE digest = ?", (digest,)).fetchone()
        if row is not None:
            data = row[0]
        else:
            try:
                data = self._path(digest).read_bytes()
            except FileNotFoundError:
                return None
        return self._verified(digest, data)

    def _verified(self, digest: str, data: bytes) -> bytes | None:
        """``data`` if it matches ``digest``; else the object is reported and deleted."""
        if self.hasher.bytes_digest(data) != digest:
            print(f"cpbuild: warning: object {digest[:12]} in {self.folder} is corrupted; "
                  "it is deleted and will be rebuilt", file=sys.stderr)
            self.delete(digest)
            return None
        return data

    def get_many(self, digests: set[str]) -> dict[str, bytes | None]:
        """``get`` for many objects, those in the pack read in one query per 500."""
        found: dict[str, bytes | None] = {}
        wanted = sorted(digests)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            query = f"SELECT digest, data FROM objects WHERE digest IN ({','.join('?' * len(chunk))})"
            for digest, data in self._pack().execute(query, chunk):
                found[digest] = self._verified(digest, data)
        for digest in digests - found.keys():  # not in the pack: a file, or missing
            try:
                found[digest] = self._verified(digest, self._path(digest).read_bytes())
            except FileNotFoundError:
                found[digest] = None
        return found

    def put(self, digest: str, data: bytes) -> None:
        if digest in self._present:
            return
        if len(data) <= PACK_LIMIT:
            # REPLACE rather than IGNORE: writing an object again repairs a corrupted copy.
            self._pack().execute("INSERT OR REPLACE INTO objects VALUES (?, ?)", (digest, data))
            if self._packed is not None:
                self._packed.add(digest)
            self._present.add(digest)
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

    def put_many(self, objects: dict[str, bytes]) -> None:
        """``put`` for many objects, those for the pack in one transaction."""
        small = [(d, data) for d, data in objects.items() if len(data) <= PACK_LIMIT and d not in self._present]
        if small:
            db = self._pack()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?)", small)
                db.execute("COMMIT")
            finally:
                if db.in_transaction:  # an error, or Ctrl-C before COMMIT: nothing half-done
                    db.execute("ROLLBACK")
            self._present.update(d for d, _ in small)
            if self._packed is not None:
                self._packed.update(d for d, _ in small)
        for digest, data in objects.items():
            if len(data) > PACK_LIMIT:
                self.put(digest, data)

    def delete(self, digest: str) -> None:
        self._present.discard(digest)
        if self._packed is not None:
            self._packed.discard(digest)
        self._pack().execute("DELETE FROM objects WHERE digest = ?", (digest,))
        self._path(digest).unlink(missing_ok=True)

    def iter_digests(self) -> Iterator[str]:
        if not self.folder.is_dir():
            return
        yield from (row[0] for row in self._pack().execute("SELECT digest FROM objects ORDER BY digest"))
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
