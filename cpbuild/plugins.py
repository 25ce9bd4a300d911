"""The plugin manager: a thin layer over pluggy, as pytest's.

Built-in plugins are registered by module name like any other, so ``-p no:NAME`` can block
them too. Entry points (group ``cpbuild``) are loaded unless blocked.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import pluggy

from cpbuild import hookspecs
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
}


def _load(spec: str) -> object:
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    if not attribute:
        return module
    obj = getattr(module, attribute)
    return obj() if isinstance(obj, type) else obj


def make_plugin_manager(
    requested: Iterable[str] = (), config_plugins: Iterable[str] = ()
) -> pluggy.PluginManager:
    """Create the manager with built-ins, entry points, config plugins and ``-p`` plugins."""
    pm = pluggy.PluginManager("cpbuild")
    pm.add_hookspecs(hookspecs)
    requested = list(requested)
    for name in requested:
        if name.startswith("no:"):
            pm.set_blocked(name[3:])
    for name, spec in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(_load(spec), name=name)
    try:
        pm.load_setuptools_entrypoints("cpbuild")
    except Exception as error:  # a broken third-party package must not look like our bug
        raise UsageError(f"a plugin from the 'cpbuild' entry point group failed to load: {error!r}") from None
    for name in [*config_plugins, *(n for n in requested if not n.startswith("no:"))]:
        if pm.is_blocked(name) or pm.has_plugin(name) or pm.get_plugin(name):
            continue
        try:
            pm.register(importlib.import_module(name), name=name)
        except ImportError as error:
            raise UsageError(f"plugin '{name}' cannot be imported: {error}") from None
    return pm


def plugin_versions(pm: pluggy.PluginManager) -> list[tuple[str, str]]:
    """(name, version) of every registered plugin, for ``--version``."""
    from cpbuild import __version__

    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    result = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        if dist is not None:
            version = f"{dist.project_name} {dist.version}"
        elif name in BUILTIN_PLUGINS:
            version = f"built-in {__version__}"
        else:
            version = str(getattr(plugin, "__version__", "unknown version"))
        result.append((name, version))
    return sorted(result)
