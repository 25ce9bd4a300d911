"""cpbuild-dask: the ``dask`` executor, which runs tasks on a dask.distributed cluster.

``cpbuild --executor dask -j 8`` starts a local cluster of 8 worker processes for the build;
``--dask-address tcp://HOST:PORT`` (or ``dask_address`` in ``cpbuild.toml``) uses a running
scheduler instead, e.g. one started by dask-jobqueue on Slurm/PBS or on Kubernetes.

cpbuild loads this module on every invocation (entry point group ``cpbuild``), so it imports
nothing heavy: dask is imported by the executor's constructor, when a task first needs it.
Settings travel between hooks on the ``config`` object (``config.extra``), not in globals.
"""

from __future__ import annotations

import re
from typing import Any

from cpbuild.hookspecs import hookimpl

__version__ = "0.1.0"

#: Configuration keys this plugin owns (``cpbuild.toml`` or ``[tool.cpbuild]``).
ADDRESS_KEY = "dask_address"
WORKERS_KEY = "dask_workers"

#: ``SCHEME://HOST:PORT`` (tcp, tls, ucx, ws, ...) or a bare ``HOST:PORT`` (tcp).
_ADDRESS = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?\S+$")


def _valid_address(value: Any) -> bool:
    return isinstance(value, str) and bool(_ADDRESS.match(value))


def _where(config: Any) -> str:
    """The configuration file as cpbuild names it in its own errors."""
    source = getattr(config, "source", None)
    if source is None:
        return "(no configuration file)"
    return str(source) if source.name != "pyproject.toml" else f"{source} [tool.cpbuild]"


@hookimpl
def cpbuild_executor_names() -> list[str]:
    return ["dask"]


@hookimpl
def cpbuild_addoption(parser: Any) -> None:
    parser.add_argument(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        default=None,
        help="run tasks of the dask executor on the dask scheduler at this address "
        "(default: start a local cluster with -j workers for the build); overrides "
        "dask_address in the configuration",
    )


@hookimpl
def cpbuild_config_keys() -> list[str]:
    return [ADDRESS_KEY, WORKERS_KEY]


@hookimpl
def cpbuild_configure(config: Any, options: Any) -> None:
    from cpbuild.errors import ConfigError, UsageError

    extra = config.extra
    address = extra.get(ADDRESS_KEY)
    if address is not None and not _valid_address(address):
        raise ConfigError(
            f"{_where(config)}: key '{ADDRESS_KEY}' must be a scheduler address such as "
            f"\"tcp://HOST:PORT\", got {type(address).__name__} {address!r}"
        )
    workers = extra.get(WORKERS_KEY)
    if workers is not None and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        raise ConfigError(
            f"{_where(config)}: key '{WORKERS_KEY}' must be an integer >= 1, got "
            f"{type(workers).__name__} {workers!r}"
        )
    option = getattr(options, "dask_address", None)
    if option is not None:
        if not _valid_address(option):
            raise UsageError(f"--dask-address {option!r}: expected an address such as tcp://HOST:PORT")
        extra[ADDRESS_KEY] = option  # the command line overrides the configuration


@hookimpl
def cpbuild_make_executor(name: str, config: Any, jobs: int) -> Any:
    if name != "dask":
        return None
    from cpbuild_dask.executor import DaskExecutor

    return DaskExecutor(
        jobs,
        config.root,
        address=config.extra.get(ADDRESS_KEY),
        workers=config.extra.get(WORKERS_KEY),
    )
