"""A tiny name -> object registry used for memory types, retrievers, embedders and figure kinds.

`@MEMORY.register("ffn")` adds a class; `MEMORY.get("ffn")` returns it, and a miss lists the valid names.
The suite's registries are defined here, at the bottom of the import graph, each with the module that fills it
(imported on the first lookup): the config validates against them without importing torch-level modules, and a
plug-in (`$HMEM_PLUGINS`, entry point group `hmem_lit.plugins`) registers into them from outside the package.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

PLUGIN_ENV, PLUGIN_GROUP = "HMEM_PLUGINS", "hmem_lit.plugins"
_plugins_loaded = False


def load_plugins() -> list[str]:
    """Import plug-in modules once: the comma-separated module names in $HMEM_PLUGINS and the entry points of group
    `hmem_lit.plugins` (`[project.entry-points."hmem_lit.plugins"] mine = "mypkg.memory"` in a package's
    pyproject). A plug-in registers its classes on import (`@MEMORY.register("mine")`). -> the modules loaded.
    A module that cannot be imported is a one-line ConfigError naming it."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    import importlib
    import os
    from importlib.metadata import entry_points

    from hmem_lit.errors import ConfigError

    names = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    names += [ep.value.split(":")[0] for ep in entry_points(group=PLUGIN_GROUP)]
    for n in names:
        try:
            importlib.import_module(n)
        except ImportError as e:
            raise ConfigError(f"{PLUGIN_ENV} / entry point {n!r}: cannot import the plug-in module ({e})") from None
    return names


class Registry:
    def __init__(self, kind: str, loader: str | None = None):
        """loader: "package.module" or "package.module:function" that registers the shipped entries."""
        self.kind, self.loader = kind, loader
        self._items: dict[str, Any] = {}
        self._loaded = loader is None

    def _ensure(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before importing: the loader's own lookups must not recurse
        import importlib

        mod, _, fn = str(self.loader).partition(":")
        m = importlib.import_module(mod)
        if fn:
            getattr(m, fn)()

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        self._ensure()
        if name not in self._items:
            near = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._ensure()
        return name in self._items

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self):
        return iter(self.names())


MEMORY = Registry("memory type", "hmem_lit.memory:import_all")  # memory.type (memory/base.py: the contract)
RETRIEVERS = Registry("retriever", "hmem_lit.retriever.routing")  # retriever.type
TREE_ROUTERS = Registry("retriever.router", "hmem_lit.retriever.routing")  # retriever.router
EMBEDDERS = Registry("embedder", "hmem_lit.retriever.embedders")  # retriever.embedder
# `kind:` of a figure in analysis/*.yaml; analysis/kinds.py imports every module that registers shipped kinds
FIGURES = Registry("figure kind", "hmem_lit.analysis.kinds")
