"""The plugin manager: a thin layer over pluggy, as pytest's.

Built-in plugins are registered by module name like any other, so ``-p no:NAME`` can block
them too. Entry points (group ``cpbuild``) are loaded unless blocked.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import pluggy

from cpbuild import hookspecs
from cpbuild.environment import Environment
from cpbuild.errors import UsageError

#: name -> "module:attribute" of the built-in plugins. The attribute is instantiated if it
#: is a class, registered as is otherwise.
BUILTIN_PLUGINS: dict[str, str] = {
    "python": "cpbuild.collect:PythonCollector",
    "sha256": "cpbuild.hashing",
    "cloudpickle": "cpbuild.serialize",
    "local": "cpbuild.storage.local",
    "memory": "cpbuild.storage.memory",
    "inline": "cpbuild.executors:INLINE",
    "thread": "cpbuild.executors:THREAD",
    "process": "cpbuild.executors:PROCESS",
    "prefix": "cpbuild.executors:PREFIX",
    "terminal": "cpbuild.report:TerminalReporter",
    "json-report": "cpbuild.jsonreport",
}


def _load(spec: str) -> object:
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    if not attribute:
        return module
    obj = getattr(module, attribute)
    return obj() if isinstance(obj, type) else obj


def make_plugin_manager(
    requested: Iterable[str] = (),
    config_plugins: Iterable[str] = (),
    environment: Environment | None = None,
) -> pluggy.PluginManager:
    """Create the manager with built-ins, entry points, config plugins and ``-p`` plugins.

    Entry points are listed by ``environment`` (cached between runs) rather than by pluggy's
    ``load_setuptools_entrypoints``, which scans every installed distribution on every run.
    """
    pm = pluggy.PluginManager("cpbuild")
    pm.add_hookspecs(hookspecs)
    requested = list(requested)
    for name in requested:
        if name.startswith("no:"):
            pm.set_blocked(name[3:])
    for name, spec in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(_load(spec), name=name)
    environment = environment or Environment(None)
    for name, value, dist, version in environment.plugin_entry_points("cpbuild"):
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        try:
            plugin = _load(value) if ":" in value else importlib.import_module(value)
        except Exception as error:  # a broken third-party package must not look like our bug
            raise UsageError(
                f"plugin '{name}' (entry point of {dist} {version}) failed to load: {error!r}"
            ) from None
        pm.register(plugin, name=name)
    for name in [*config_plugins, *(n for n in requested if not n.startswith("no:"))]:
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        try:
            module = importlib.import_module(name)
        except Exception as error:  # not only ImportError: the plugin's own code may fail
            raise UsageError(f"plugin '{name}' cannot be imported: {type(error).__name__}: {error}") from None
        if not pm.is_registered(module):  # e.g. already loaded through its entry point
            pm.register(module, name=name)
    return pm


def plugin_versions(pm: pluggy.PluginManager, environment: Environment) -> list[tuple[str, str]]:
    """(name, version) of every registered plugin, for ``--version``."""
    from cpbuild import __version__

    distributions = {
        name: f"{dist} {version}" for name, _, dist, version in environment.plugin_entry_points()
    }
    result = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        if name in distributions:
            version = distributions[name]
        elif name in BUILTIN_PLUGINS:
            version = f"built-in {__version__}"
        else:
            version = str(getattr(plugin, "__version__", "unknown version"))
        result.append((name, version))
    return sorted(result)
