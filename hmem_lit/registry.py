"""A tiny name -> object registry used for memory types, retrievers, embedders, corpora and figure kinds.

`@MEMORY.register("ffn")` adds a class; `MEMORY.get("ffn")` returns it, and a miss lists the valid names.
The suite's registries are defined here, at the bottom of the import graph, each with the module that fills it
(imported on the first lookup): the config validates against them without importing torch-level modules, and a
plug-in (`$HMEM_PLUGINS`, entry point group `hmem_lit.plugins`) registers into any of them from outside the
package: `load_plugins` runs once, before the first lookup in any registry.
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


def plugins_configured() -> bool:
    """Whether $HMEM_PLUGINS or an entry point names a plug-in (nothing is imported)."""
    import os
    from importlib.metadata import entry_points

    return bool(os.environ.get(PLUGIN_ENV, "").strip()) or bool(list(entry_points(group=PLUGIN_GROUP)))


def _constant_attrs(node: Any) -> dict[str, Any]:
    """Class-level `name = <constant>` assignments of a ClassDef (capabilities such as `routed = False`)."""
    import ast

    out: dict[str, Any] = {}
    for st in node.body:
        target = st.targets[0] if isinstance(st, ast.Assign) and len(st.targets) == 1 else getattr(st, "target", None)
        value = getattr(st, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            out[target.id] = value.value
    return out


class Registry:
    def __init__(self, kind: str, loader: str | None = None, var: str | None = None):
        """loader: "package.module" or "package.module:function" that registers the shipped entries; var: the name
        this registry has in hmem_lit.registry (what `scan` looks for in the loader's source)."""
        self.kind, self.loader, self.var = kind, loader, var
        self._items: dict[str, Any] = {}
        self._loaded = loader is None

    def _ensure(self) -> None:
        load_plugins()  # once per process, before any lookup in any registry: a plug-in may add to each of them
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

    def registered(self) -> dict[str, Any]:
        """The entries registered so far, importing nothing (shipped entries appear once the loader has run)."""
        return dict(self._items)

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._items)

    def _all(self) -> list[tuple[str, Any]]:
        return [(n, self.get(n)) for n in self.names()]

    def known(self) -> list[str]:
        """The names, from the source when nothing is imported yet (config validation stays light: a config of
        an anchor-only run never imports torch); the imported registry once it is loaded."""
        return self.names() if self._loaded else sorted({*self._scanned(), *self._items})  # + registered by hand

    def capability(self, name: str, attr: str, default: Any = None) -> Any:
        """A declared class attribute of entry `name` (e.g. `routed`), without importing it when not loaded yet."""
        if self._loaded or name not in self._scanned():
            return getattr(self.get(name), attr, default)
        return self._scanned()[name].get(attr, default)

    def _scanned(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self, "_scan_cache"):
            self._scan_cache = self.scan()
        return self._scan_cache

    def scan(self) -> dict[str, dict[str, Any]]:
        """The shipped entries without importing them (`hmem list` stays fast: no torch): name -> the class's
        constant attributes (`routed`, ...), or {"value": v} for `REG.register("name")(v)`, read from the loader
        package's source. With plug-ins configured, or no source to read, the registry is imported instead
        (tests/test_cli_fast.py checks that both agree)."""
        import ast
        from pathlib import Path

        mod = str(self.loader).partition(":")[0]
        here = Path(__file__).resolve().parent.joinpath(*mod.split(".")[1:])  # no import of the parent package
        if not (self.loader and self.var and mod.startswith("hmem_lit.")) or plugins_configured():
            files = []
        elif here.is_dir():
            files = sorted(here.glob("*.py"))
        else:
            files = [p for p in [here.with_suffix(".py")] if p.is_file()]
        if not files:  # imported: the declared capabilities from the classes themselves
            return {n: {"value": v, **{k: getattr(v, k) for k in ("routed",) if hasattr(v, k)}} for n, v in self._all()}
        out: dict[str, dict[str, Any]] = {}
        for f in files:
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                calls = [(d, node) for d in getattr(node, "decorator_list", [])]
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Call):  # REG.register("n")(value)
                    calls.append((node.func, node))
                for call, target in calls:
                    fn = getattr(call, "func", None)
                    if not (
                        isinstance(fn, ast.Attribute)
                        and fn.attr == "register"
                        and isinstance(fn.value, ast.Name)
                        and fn.value.id.lstrip("_") == self.var
                        and call.args
                        and isinstance(call.args[0], ast.Constant)
                    ):
                        continue
                    if isinstance(target, ast.ClassDef):
                        attrs = _constant_attrs(target)
                    elif isinstance(target, ast.Call) and target.args and isinstance(target.args[0], ast.Constant):
                        attrs = {"value": target.args[0].value}
                    else:
                        attrs = {}
                    out[str(call.args[0].value)] = attrs
        return dict(sorted(out.items()))

    def __contains__(self, name: str) -> bool:
        self._ensure()
        return name in self._items

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self):
        return iter(self.names())


MEMORY = Registry("memory type", "hmem_lit.memory:import_all", "MEMORY")  # memory.type (memory/base.py: the contract)
RETRIEVERS = Registry("retriever", "hmem_lit.retriever:import_all", "RETRIEVERS")  # retriever.type (base.py)
TREE_ROUTERS = Registry("retriever.tree.router", "hmem_lit.retriever.tree", "TREE_ROUTERS")  # retriever.tree.router
TREE_REFINERS = Registry("retriever.tree.refine", "hmem_lit.retriever.tree", "TREE_REFINERS")  # retriever.tree.refine
EMBEDDERS = Registry("embedder", "hmem_lit.retriever.embedders", "EMBEDDERS")  # retriever.embedder
CORPORA = Registry("corpus", "hmem_lit.data.corpus", "CORPORA")  # data.corpus (data.source=builtin)
# eval.tasks: the lm-eval task families taskgen.py writes per run (<...> stands for a name the data decides) and the
# shipped paper groups; registered with a one-line description each
TASKS = Registry("eval task", "hmem_lit.evaluation.taskgen", "TASKS")
# `kind:` of a figure in analysis/*.yaml; analysis/kinds.py imports every module that registers shipped kinds
FIGURES = Registry("figure kind", "hmem_lit.analysis.kinds")
