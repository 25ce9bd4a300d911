"""Built-in executors: ``inline``, ``thread``, ``process`` and ``prefix``.

Each is registered as its own plugin (so ``-p no:process`` blocks just that one), but its module
is imported only when a build actually uses it: process pools and subprocess plumbing cost
import time that a no-op build should not pay.
"""

from __future__ import annotations

import importlib
from typing import Any

from cpbuild.hookspecs import hookimpl


class BuiltinExecutor:
    def __init__(self, name: str, module: str) -> None:
        self.name = name
        self.module = module

    @hookimpl
    def cpbuild_executor_names(self) -> list[str]:
        return [self.name]

    @hookimpl
    def cpbuild_make_executor(self, name: str, config: Any, jobs: int) -> Any:
        if name != self.name:
            return None
        return importlib.import_module(self.module).create(config, jobs)


INLINE = BuiltinExecutor("inline", "cpbuild.executors.inline")
THREAD = BuiltinExecutor("thread", "cpbuild.executors.thread")
PROCESS = BuiltinExecutor("process", "cpbuild.executors.process")
PREFIX = BuiltinExecutor("prefix", "cpbuild.executors.prefix")
