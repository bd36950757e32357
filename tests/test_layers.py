"""The package's import graph has no cycles, counting imports inside functions too (a function-level import that
closes a cycle only hides it), both between modules and between the top-level parts (subpackages / modules) of
hmem_lit; the bottom layers (errors, registry, config, utils) import nothing that imports torch-level modules; the
side studies (hmem_lit/studies) sit on top: they import evaluation and analysis, and only the CLI imports them."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "hmem_lit"
BOTTOM = {
    "hmem_lit.errors": set(),
    "hmem_lit.registry": {"hmem_lit.errors"},
    "hmem_lit.fields": {"hmem_lit.errors"},
    "hmem_lit.anchor_config": {"hmem_lit.errors", "hmem_lit.fields"},
    "hmem_lit.utils": {"hmem_lit.errors", "hmem_lit.config"},
    "hmem_lit.config_text": {"hmem_lit.errors"},
    "hmem_lit.config_sections": {"hmem_lit.errors", "hmem_lit.fields", "hmem_lit.registry"},
    "hmem_lit.config": {
        "hmem_lit.errors",
        "hmem_lit.registry",
        "hmem_lit.utils",
        "hmem_lit.anchor_config",
        "hmem_lit.config_text",
        "hmem_lit.config_sections",
        "hmem_lit.fields",
    },
}

TOP = {  # the top layer -> the only modules outside it that may import it
    "hmem_lit.studies": {"hmem_lit.cli"},
}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(n: str) -> str:
        while n and n not in mods:
            n = n.rsplit(".", 1)[0] if "." in n else ""
        return n

    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hmem_lit"):
                names = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("hmem_lit")]
            g[m] |= {t for t in map(resolve, names) if t and t != m}
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def top(m: str) -> str:
    return ".".join(m.split(".")[:2])


def test_no_module_cycles():
    assert cycles(import_graph()) == []


def test_no_cycles_between_top_level_parts():
    g: dict[str, set[str]] = {}
    for m, ts in import_graph().items():
        g.setdefault(top(m), set()).update(top(t) for t in ts if top(t) != top(m))
    assert cycles(g) == [], "a subpackage imports one that imports it back: move the shared piece down a layer"


def test_bottom_layers_import_only_below():
    g = import_graph()
    for m, allowed in BOTTOM.items():
        assert g[m] <= allowed, f"{m} imports {sorted(g[m] - allowed)}"


def test_top_layers_are_imported_only_by_their_callers():
    """A side study can be deleted without touching the main path: only the CLI's verb table names it."""
    g = import_graph()
    for part, callers in TOP.items():
        importers = {m for m, ts in g.items() if top(m) != part and any(top(t) == part for t in ts)}
        assert importers <= callers, f"{sorted(importers - callers)} import {part}"
        assert importers, f"nothing imports {part}: the CLI lost its verbs"


def test_the_graph_sees_function_level_imports(tmp_path):
    """The check itself: an import inside a function counts (what hid the cycles this test now forbids)."""
    g = import_graph()
    assert "hmem_lit.model" in g["hmem_lit.evaluation.adapter"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
