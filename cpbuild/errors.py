"""Errors that carry a user-facing message, and the exit codes they map to.

As in pytest, code deep inside cpbuild raises one of these with a message written for the user;
only ``cli.main`` turns them into an exit code. Anything else that escapes is an internal error
(exit 3) and is shown with a traceback, because then the bug is ours.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes, as pytest's."""

    OK = 0
    TASKS_FAILED = 1
    INTERRUPTED = 2  # also: collection errors
    INTERNAL_ERROR = 3
    USAGE_ERROR = 4
    NO_TASKS_COLLECTED = 5


class CpbuildError(Exception):
    """Base of errors with a message for the user."""

    exit_code = ExitCode.INTERNAL_ERROR


class UsageError(CpbuildError):
    """Bad command line, unknown target or option."""

    exit_code = ExitCode.USAGE_ERROR


class ConfigError(UsageError):
    """A configuration file has an unknown key, a wrong type or bad TOML."""


class CollectionError(CpbuildError):
    """Task files or the graph they describe cannot be used; nothing was built."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class LockBusyError(CpbuildError):
    """Another cpbuild process holds the project's build lock."""

    exit_code = ExitCode.INTERRUPTED


class StateError(CpbuildError):
    """The state database cannot be read (damaged, or written by something else)."""

    exit_code = ExitCode.INTERNAL_ERROR
