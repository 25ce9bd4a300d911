"""Finding the project root and reading ``cpbuild.toml`` / ``[tool.cpbuild]`` (DESIGN §4).

Every key is validated here so that a typo fails before anything runs, with the file and the
key named. Command-line options are merged on top by the CLI.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpbuild.errors import ConfigError

CONFIG_FILE = "cpbuild.toml"
PYPROJECT = "pyproject.toml"


@dataclass
class Config:
    """The merged configuration of one invocation."""

    root: Path
    source: Path | None = None  # the file it came from; None when no file was found
    paths: list[str] = field(default_factory=lambda: ["."])
    default: list[str] | None = None
    jobs: int = 1
    executor: str | None = None  # None: inline for -j1, the parallel default otherwise
    storage: str = "local"
    cache_dir: str = ".cpbuild"
    plugins: list[str] = field(default_factory=list)
    queues: dict[str, int] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # plugin-owned keys, validated by them

    @property
    def cache_path(self) -> Path:
        # Not cached: cache_dir may be set after construction. Cheap: no symlink resolution.
        return Path(os.path.normpath(self.root / self.cache_dir))

    def display_source(self) -> str:
        return str(self.source) if self.source else "(no configuration file)"


def _is_list_of_str(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


#: key -> (check, expected type in words)
_SCHEMA: dict[str, tuple[Any, str]] = {
    "paths": (_is_list_of_str, "a list of strings"),
    "default": (_is_list_of_str, "a list of strings"),
    "jobs": (_positive_int, "an integer >= 1"),
    "executor": (lambda v: isinstance(v, str), "a string"),
    "storage": (lambda v: isinstance(v, str), "a string"),
    "cache_dir": (lambda v: isinstance(v, str), "a string"),
    "plugins": (_is_list_of_str, "a list of strings"),
    "queues": (
        lambda v: isinstance(v, dict) and all(_positive_int(n) for n in v.values()),
        "a table of queue = integer >= 1",
    ),
    "prefixes": (
        lambda v: isinstance(v, dict) and all(isinstance(p, str) for p in v.values()),
        "a table of queue = command string",
    ),
}


def find_root(start: Path) -> tuple[Path, Path | None]:
    """Return (root, config file): the nearest folder upward holding a configuration.

    Without any, the start folder is the root, as pytest's rootdir falls back to the invocation
    directory; cpbuild then collects from there with defaults.
    """
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return folder, candidate
        pyproject = folder / PYPROJECT
        if pyproject.is_file() and b"[tool.cpbuild" in pyproject.read_bytes():
            return folder, pyproject
    return start, None


def _read_table(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    if path.name == PYPROJECT:
        return data.get("tool", {}).get("cpbuild", {})
    return data


def read_config(start: Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """Find the configuration for a build started in ``start``: (root, file, raw table).

    Reading and validating are separate steps because plugins named in the file may add keys.
    """
    root, source = find_root(start)
    return root, source, (_read_table(source) if source else {})


def build_config(
    root: Path,
    source: Path | None,
    table: dict[str, Any],
    known_extra_keys: frozenset[str] = frozenset(),
) -> Config:
    """Validate the raw table into a ``Config``; plugin-owned keys go to ``extra``."""
    config = Config(root=root, source=source)
    where = f"{source}" if source is None or source.name == CONFIG_FILE else f"{source} [tool.cpbuild]"
    for key, value in table.items():
        if key in _SCHEMA:
            check, expected = _SCHEMA[key]
            if not check(value):
                raise ConfigError(
                    f"{where}: key '{key}' must be {expected}, got {type(value).__name__} "
                    f"{value!r}"
                )
            setattr(config, key, value)
        elif key == "remote_cache" and key not in known_extra_keys:
            raise ConfigError(
                f"{where}: key 'remote_cache' needs a plugin that provides remote caches; "
                "none is installed (cpbuild itself keeps its cache in cache_dir)"
            )
        elif key in known_extra_keys:
            config.extra[key] = value
        else:
            import difflib

            close = difflib.get_close_matches(key, [*_SCHEMA, *known_extra_keys], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
    return config
