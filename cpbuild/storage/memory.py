"""The memory storage: values live as long as the process (tests, ``--watch`` experiments).

State records still go to SQLite, so a later build with ``storage = "local"`` finds records
whose values it does not have; such tasks are rerun when a downstream task needs the value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cpbuild.hookspecs import hookimpl


class MemoryStorage:
    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    def has(self, digest: str) -> bool:
        return digest in self._objects

    def get(self, digest: str) -> bytes | None:
        return self._objects.get(digest)

    def put(self, digest: str, data: bytes) -> None:
        self._objects[digest] = data

    def delete(self, digest: str) -> None:
        self._objects.pop(digest, None)

    def iter_digests(self) -> Iterator[str]:
        return iter(sorted(self._objects))


@hookimpl
def cpbuild_storage_names() -> list[str]:
    return ["memory"]


@hookimpl
def cpbuild_make_storage(name: str, config: Any) -> MemoryStorage | None:
    return MemoryStorage() if name == "memory" else None
