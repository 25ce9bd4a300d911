"""The build state: which keys were built with which results, and the stat cache.

One SQLite database (WAL mode) in the cache folder, ``state.db``, with these tables:

``records``  one row per built key (constructive traces): the task id, the digest of its value,
             the digests of its products, the parts of its key (for ``--why``) and its duration.
             Rows are never updated, only added: returning to earlier inputs or code finds the
             earlier row.
``latest``   task id -> the key of its most recent successful build.
``files``    the stat cache: path -> (device, inode, size, mtime_ns, digest). A file whose stat is
             unchanged is not read again.
``code``     the code cache: analyses of functions and classes by file, size and mtime
             (``cpbuild.fingerprint.CodeTracker``), so unchanged files are not parsed again.
``meta``     one row: the generation, a counter of writers.
``snapshot`` one row: ``latest`` joined with ``records`` (without the bulky key parts) and
             ``files`` and ``code``, marshalled into one blob, with the ``generation`` it reflects.

A process's first write transaction bumps the generation, which marks the snapshot stale should
the process die; ``close()`` writes a fresh snapshot when the process changed anything. A build
loads the snapshot in one read when its generation is current (the usual case), and falls back
to reading the tables when it is not (after a crash). Finished tasks are recorded in batches,
one transaction each (the scheduler flushes at least every 0.1 s and at the end of a build,
interrupted or not); nothing is recorded for a task before it fully succeeded. Row data is
``marshal``-encoded: the fastest codec in the standard library, stable across the Python
versions whose keys it stores.
"""

from __future__ import annotations

import marshal
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cpbuild.errors import StateError
from cpbuild.model import Record, StatEntry

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    value TEXT,
    products BLOB NOT NULL,
    parts BLOB NOT NULL,
    duration REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS latest (task TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, digest TEXT
);
CREATE TABLE IF NOT EXISTS code (key TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES (0, 0);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER NOT NULL, data BLOB NOT NULL
);
"""


class State:
    """The state database of one project; used by the main process only."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "state.db"
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            raise StateError(
                f"{self.path} cannot be used ({error}); delete it to start afresh "
                "(every task then runs once more; products and values are kept)"
            ) from None

    def _open(self) -> None:
        new = not self.path.exists()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if new:
            # Created without waiting for the disk (switching to WAL and making the tables took
            # seven fsyncs, 2-5 ms): a power loss now could only lose the new, empty database.
            # Everything recorded is written with synchronous=NORMAL, set below.
            self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA journal_mode=WAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            self._db.executescript(
                "DROP TABLE IF EXISTS records; DROP TABLE IF EXISTS latest; DROP TABLE IF EXISTS files;"
                "DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS snapshot; DROP TABLE IF EXISTS code;"
            )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.latest: dict[str, Record] = {}
        self.files: dict[str, StatEntry] = {}
        self.code: dict[str, Any] = {}
        self._snapshot_generation = -1
        self._bumped = False
        self._keys: set[str] | None = None  # every recorded key (see find)
        self._finds = 0
        self._load()

    def _load(self) -> None:
        row = self._db.execute(
            "SELECT m.generation, s.generation, s.data FROM meta m LEFT JOIN snapshot s"
        ).fetchone()
        if row[1] == row[0]:
            latest, self.files, self.code = marshal.loads(row[2])
            self.latest = {task: Record(*fields) for task, fields in latest.items()}
            self._snapshot_generation = row[1]
            return
        rows = self._db.execute(
            "SELECT r.key, r.task, r.value, r.products, r.duration "
            "FROM latest l JOIN records r ON r.key = l.key"
        ).fetchall()
        loads = marshal.loads
        self.latest = {
            task: Record(key, task, value, loads(products), duration)
            for key, task, value, products, duration in rows
        }
        self.files = {row[0]: tuple(row[1:]) for row in self._db.execute("SELECT * FROM files")}
        self.code = {key: loads(data) for key, data in self._db.execute("SELECT * FROM code")}

    def find(self, key: str) -> Record | None:
        """The record of ``key`` if it was ever built (for keys that are not the latest).

        After a few lookups the keys of all records are read in one query, so that a build in
        which every task is new (the first build, a changed helper) makes no query per task,
        while an edit that reruns one task does not read the whole history."""
        self._finds += 1
        if self._keys is None and self._finds > 32:
            self._keys = {row[0] for row in self._db.execute("SELECT key FROM records")}
        if self._keys is not None and key not in self._keys:
            return None
        row = self._db.execute(
            "SELECT key, task, value, products, duration FROM records WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return Record(row[0], row[1], row[2], marshal.loads(row[3]), row[4])

    def parts(self, key: str) -> dict[str, Any] | None:
        """The key parts of a record, for explanations."""
        row = self._db.execute("SELECT parts FROM records WHERE key = ?", (key,)).fetchone()
        return marshal.loads(row[0]) if row else None

    def record(
        self,
        finished: list[tuple[Record, dict[str, Any], list[tuple[str, StatEntry]]]],
        created: float,
    ) -> None:
        """Write finished tasks (record, key parts, the stat entries each produced) in one
        transaction."""
        if not finished:
            return
        files = [entry for _, _, entries in finished for entry in entries]
        dumps = marshal.dumps
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.key, r.task, r.value, dumps(r.products), dumps(parts), r.duration, created)
                 for r, parts, _ in finished],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO latest VALUES (?, ?)", [(r.task, r.key) for r, _, _ in finished]
            )
            self._write_files(files)
        for record, _, _ in finished:
            self.latest[record.task] = record
            if self._keys is not None:
                self._keys.add(record.key)
        self.files.update(files)

    def set_latest(self, record: Record) -> None:
        """Point a task at an earlier record (going back to earlier inputs or code)."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO latest VALUES (?, ?)", (record.task, record.key))
        self.latest[record.task] = record

    def update_files(self, files: Iterable[tuple[str, StatEntry]]) -> None:
        files = list(files)
        if not files:
            return
        with self._transaction():
            self._write_files(files)
        self.files.update(files)

    def update_code(self, entries: dict[str, Any]) -> None:
        """Remember new analyses for the code cache (see ``CodeTracker``)."""
        if not entries:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO code VALUES (?, ?)",
                ((key, marshal.dumps(value)) for key, value in entries.items()),
            )
        self.code.update(entries)

    def forget(self, tasks: Iterable[str]) -> None:
        """Drop the latest pointers of ``tasks`` (``--clean``); their records stay as history."""
        tasks = list(tasks)
        with self._transaction():
            self._db.executemany("DELETE FROM latest WHERE task = ?", ((t,) for t in tasks))
        for task in tasks:
            self.latest.pop(task, None)

    def _write_files(self, files: list[tuple[str, StatEntry]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
            ((path, *entry) for path, entry in files),
        )

    def _transaction(self) -> _Transaction:
        # The generation is bumped by this process's first write only: that is enough to mark
        # the snapshot stale (if the process dies) until close() writes a fresh one.
        bump, self._bumped = not self._bumped, True
        return _Transaction(self._db, bump)

    def close(self) -> None:
        """Write the snapshot if this process changed anything, then close."""
        if not self._bumped and self._snapshot_generation >= 0:  # read a current one, wrote nothing
            self._db.close()
            return
        with _Transaction(self._db, bump=False):
            generation = self._db.execute("SELECT generation FROM meta").fetchone()[0]
            if generation != self._snapshot_generation:
                latest = {task: tuple(r) for task, r in self.latest.items()}
                data = marshal.dumps((latest, self.files, self.code))
                self._db.execute("INSERT OR REPLACE INTO snapshot VALUES (0, ?, ?)", (generation, data))
        self._db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection, bump: bool) -> None:
        self.db = db
        self.bump = bump

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        if self.bump:
            self.db.execute("UPDATE meta SET generation = generation + 1")

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        try:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            if self.db.in_transaction:  # Ctrl-C arrived before COMMIT ran: nothing half-done
                self.db.execute("ROLLBACK")
