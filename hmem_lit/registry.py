"""A tiny name -> object registry used for memory types, retrievers, embedders and figure kinds.

`@MEMORY.register("ffn")` adds a class; `MEMORY.get("ffn")` returns it, and a miss lists the valid names.
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

    from hmem_lit.config import ConfigError

    names = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    names += [ep.value.split(":")[0] for ep in entry_points(group=PLUGIN_GROUP)]
    for n in names:
        try:
            importlib.import_module(n)
        except ImportError as e:
            raise ConfigError(f"{PLUGIN_ENV} / entry point {n!r}: cannot import the plug-in module ({e})") from None
    return names


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        if name not in self._items:
            near = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
