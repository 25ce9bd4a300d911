"""The build lock: one cpbuild process at a time writes a project's state and products.

An advisory ``flock`` on ``<cache_dir>/lock``: the kernel releases it when the process dies, so
a crash never leaves a stale lock behind. The holder writes its pid and mode into the file so
that a waiting process can say who it waits for.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from cpbuild.errors import LockBusyError


class BuildLock:
    def __init__(self, folder: Path, mode: str = "build") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "lock"
        self.mode = mode
        self._fd: int | None = None

    def acquire(self, wait: bool = True) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            if not wait:
                os.close(fd)
                raise LockBusyError(
                    f"another cpbuild ({holder}) is using {self.path.parent}; "
                    "wait for it to finish or stop it"
                ) from None
            print(f"cpbuild: waiting for another cpbuild ({holder}) to release "
                  f"{self.path.parent} (--no-wait to give up instead)", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {self.mode}, since {time.strftime('%H:%M:%S')}".encode(), 0)
        self._fd = fd

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown process"
        except OSError:
            return "unknown process"

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
