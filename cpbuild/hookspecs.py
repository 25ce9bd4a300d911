"""Every hook cpbuild calls: the whole extension surface in one file (DESIGN §7).

Built-in features are plugins over these same hooks (collection of ``task_*.py``, the local and
memory storages, sha256 hashing, cloudpickle serialization, the inline and thread executors,
the terminal reporter), so a third-party plugin can replace any of them. Plugins come from the
entry point group ``cpbuild``, ``plugins = [...]`` in the configuration and ``-p NAME``;
``-p no:NAME`` blocks one, built-in or not.

Hook arguments are passed by keyword; an implementation may accept any subset of them.

Backend objects are duck-typed; the protocols they follow are documented here:

``Storage`` (content-addressed; digests are hex strings)::

    has(digest) -> bool
    get(digest) -> bytes | None      # verified against the digest; a mismatch is a miss
    put(digest, data: bytes) -> None # atomic: a crash never leaves a partial object
    delete(digest) -> None
    iter_digests() -> Iterator[str]
    get_many(digests: set[str]) -> dict[str, bytes | None]  # optional: many reads at once
    put_many(objects: dict[str, bytes]) -> None              # optional: many writes at once
    before_fork() -> None  # optional: drop what a forked worker must not inherit; reopen on use

``Hasher``::

    name: str
    bytes_digest(data: bytes) -> str
    file_digest(path: Path) -> str

``Serializer``::

    name: str
    dumps(value) -> bytes            # raises for unpicklable values
    loads(data: bytes) -> object

``Executor``::

    submit(job: cpbuild.runner.Job) -> concurrent.futures.Future[cpbuild.runner.Outcome]
    shutdown(cancel: bool) -> None
    queue_ahead: int = 0      # optional: jobs it wants beyond -j, to keep its workers busy
    in_process: bool = True   # optional: False if task code never runs in cpbuild's process
    poll(timeout: float | None) -> None  # optional: resolve finished jobs' futures, waiting
                                         # up to timeout; the scheduler then waits in it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cpbuild")
hookimpl = pluggy.HookimplMarker("cpbuild")


# -- options and configuration ----------------------------------------------------------------


@hookspec
def cpbuild_addoption(parser: Any) -> None:
    """Add command-line options to the ``argparse.ArgumentParser`` before arguments are parsed.

    Called once per invocation, for every plugin registered by then (entry points, ``-p``).
    """


@hookspec
def cpbuild_config_keys() -> list[str]:
    """Return configuration keys this plugin owns.

    cpbuild rejects unknown keys in ``cpbuild.toml``; a plugin's own keys are accepted and
    stored in ``config.extra`` for the plugin to validate in ``cpbuild_configure``.
    """


@hookspec(historic=True)
def cpbuild_configure(config: Any, options: Any) -> None:
    """Called after the configuration and command line are read, before collection.

    ``config`` is ``cpbuild.config.Config``; ``options`` the parsed ``argparse.Namespace``.
    Raise ``cpbuild.errors.ConfigError`` for bad plugin-owned keys. Historic: a plugin
    registered later still gets the call.
    """


# -- collection -----------------------------------------------------------------------------


@hookspec
def cpbuild_collect_patterns() -> list[str]:
    """Return file-name patterns (``fnmatch``) of files this plugin collects tasks from.

    Only files matching some plugin's pattern are offered to ``cpbuild_collect_file``, so that
    large data folders are not walked through plugins file by file.
    """


@hookspec
def cpbuild_collect_file(session: Any, path: Path) -> list[Any] | None:
    """Return the tasks (``cpbuild.model.Task``) defined in ``path``, or None if not yours.

    Raise ``cpbuild.errors.CollectionError`` with a message naming the file for a bad file.
    The results of all plugins are concatenated.
    """


@hookspec
def cpbuild_collection_finish(session: Any, tasks: list[Any]) -> None:
    """Called with every collected task before the graph is built."""


# -- the key ------------------------------------------------------------------------------


@hookspec
def cpbuild_key_extras(task: Any) -> dict[str, str] | None:
    """Return extra parts of ``task``'s key (e.g. an environment variable, a tool version).

    Names should be prefixed by the plugin (``"env:CC"``). When a value changes, the task
    reruns and ``--why`` names the part. Called on every build for every task: keep it cheap.
    """


# -- backends (the first non-None result wins) ---------------------------------------------


@hookspec(firstresult=True)
def cpbuild_make_storage(name: str, config: Any, hasher: Any) -> Any:
    """Return a Storage for ``storage = name``, or None if the name is not yours.

    ``hasher`` is the build's Hasher: verify reads with it, since digests are made with it.
    """


@hookspec(firstresult=True)
def cpbuild_make_hasher(config: Any) -> Any:
    """Return the Hasher for file and value digests (built-in: sha256)."""


@hookspec(firstresult=True)
def cpbuild_make_serializer(config: Any) -> Any:
    """Return the Serializer for task values (built-in: cloudpickle)."""


@hookspec(firstresult=True)
def cpbuild_make_executor(name: str, config: Any, jobs: int) -> Any:
    """Return an Executor for ``executor = name`` that runs up to ``jobs`` tasks at once,
    or None if the name is not yours."""


@hookspec
def cpbuild_executor_names() -> list[str]:
    """Return the executor names this plugin provides (listed in error messages)."""


@hookspec
def cpbuild_storage_names() -> list[str]:
    """Return the storage names this plugin provides (listed in error messages)."""


# -- reporting (execution never prints; the terminal reporter is one of these plugins) -----


@hookspec
def cpbuild_build_start(session: Any, tasks: list[Any]) -> None:
    """A build of the selected ``tasks`` (in topological order) starts."""


@hookspec
def cpbuild_task_start(session: Any, task: Any) -> None:
    """``task`` was handed to its executor."""


@hookspec
def cpbuild_task_finish(session: Any, task: Any, report: Any) -> None:
    """``task`` is settled; ``report`` is a ``cpbuild.scheduler.TaskReport`` whose outcome
    is one of ``ran``, ``up-to-date``, ``failed``, ``skipped``, ``would-run``."""


@hookspec
def cpbuild_build_finish(session: Any, summary: Any) -> None:
    """The build ended; ``summary`` is a ``cpbuild.scheduler.BuildSummary``."""


@hookspec
def cpbuild_report_message(session: Any, message: str, level: str) -> None:
    """Show a message that is not about one task (``level``: info, warning, error)."""
