"""The size and shape of the package -> benchmarks/results/house.json (issue 32's before/after figures).

Measures, from the source tree of `--code DIR` (default: this checkout), without importing the package:
- package lines and modules (hmem_lit/**/*.py);
- scale-out flag mentions (offload, storage == "disk", async_update, prefetch, write-back, bfloat16) per file
  outside the storage backends (hmem_lit/storage/ when it exists, else the memory/ storage modules);
- the longest functions (ast: end_lineno - lineno + 1);
- intra-package imports at module level vs inside functions;
- CLI verbs, and how many of them the first screen of `hmem --help` lists before any side-study verb;
- README lines;
- config keys at the top level of each RunConfig section (from config.py's dataclasses, by ast).

Usage: python benchmarks/house_metrics.py [--code DIR] [--label after]
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "house.json"
FLAG = re.compile(r'offload|storage ?== ?"disk"|async_update|prefetch|write_?back|bfloat16')
BACKEND_FILES = {"storage.py", "prefetch.py", "writeback.py", "lowp.py"}  # memory/ backends before the seam
SECTIONS = ["AnchorConfig", "MemoryConfig", "RetrieverConfig", "DataConfig", "OptimConfig", "TrainConfig", "EvalConfig"]


def _is_backend(rel: Path) -> bool:
    parts = rel.parts
    return parts[1] == "storage" or (parts[1] == "memory" and rel.name in BACKEND_FILES)


def _functions(tree: ast.AST, rel: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
            out.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))
    return out


def _imports(tree: ast.Module) -> tuple[int, int]:
    """(module level, inside a function) imports of hmem_lit."""
    top = inner = 0

    def own(n: ast.AST) -> bool:
        if isinstance(n, ast.ImportFrom):
            return bool(n.module and n.module.startswith("hmem_lit")) or n.level > 0
        if isinstance(n, ast.Import):
            return any(a.name.startswith("hmem_lit") for a in n.names)
        return False

    def visit(node: ast.AST, in_function: bool) -> None:
        nonlocal inner
        for child in ast.iter_child_nodes(node):
            if in_function and own(child):
                inner += 1
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    for node in tree.body:
        if own(node):
            top += 1
        elif isinstance(node, (ast.If, ast.Try)):  # TYPE_CHECKING / optional imports at module level
            top += sum(own(n) for n in ast.walk(node))
    return top, inner


def _config_keys(pkg: Path) -> dict[str, int]:
    out = {}
    body = [
        n
        for f in ("config.py", "anchor_config.py")
        if (pkg / f).is_file()
        for n in ast.parse((pkg / f).read_text()).body
    ]
    for node in body:
        if isinstance(node, ast.ClassDef) and node.name in SECTIONS:
            out[node.name] = sum(isinstance(n, ast.AnnAssign) for n in node.body)
    return out


def _help(code: Path) -> dict:
    env = {"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin", "HMEM_PLUGINS": ""}
    r = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "import sys; from hmem_lit.cli import main; sys.exit(main(sys.argv[1:]))",
            "--help",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(code),
        timeout=120,
    )
    text = r.stdout
    m = re.search(r"\{([a-z_,-]+)\}", text)  # one argparse choice list: the verbs in one block
    groups: dict[str, list[str]] = {"": m.group(1).split(",")} if m else {}
    if not m:  # verbs under headings (`the main path:`, then the side studies), each at two spaces' indent
        head = None
        for line in text.splitlines():
            if line.endswith(":") and not line.startswith(" "):
                head = None if line == "options:" else line[:-1]
                if head:
                    groups.setdefault(head, [])
            elif head and (v := re.match(r"  ([a-z_-]+) ", line)):
                groups[head].append(v.group(1))
    verbs = [v for vs in groups.values() for v in vs]
    first = next(iter(groups.values()), [])
    return {
        "verbs": len(verbs),
        "verb_list": verbs,
        "listed_first": len(first) if len(groups) > 1 else None,  # the main path's verbs, before any side study
        "help_lines": len(text.splitlines()),
    }


def measure(code: Path) -> dict:
    pkg = code / "hmem_lit"
    lines = 0
    modules = 0
    flags: Counter[str] = Counter()
    funcs: list[tuple[int, str]] = []
    top = inner = 0
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(code)
        text = f.read_text()
        modules += 1
        lines += len(text.splitlines())
        if not _is_backend(rel):
            n = len(FLAG.findall(text))
            if n:
                flags[str(rel)] = n
        tree = ast.parse(text)
        funcs += _functions(tree, str(rel.relative_to("hmem_lit")))
        t, i = _imports(tree)
        top += t
        inner += i
    funcs.sort(reverse=True)
    return {
        "package_lines": lines,
        "modules": modules,
        "flag_mentions_outside_backends": sum(flags.values()),
        "flag_mentions_by_file": dict(flags.most_common()),
        "longest_functions": [{"lines": n, "function": name} for n, name in funcs[:10]],
        "functions_over_80_lines": sum(n > 80 for n, _ in funcs),
        "imports_module_level": top,
        "imports_in_functions": inner,
        "cli": _help(code),
        "readme_lines": len((code / "README.md").read_text().splitlines()),
        "config_keys_per_section": _config_keys(pkg),
        "git_sha": subprocess.run(
            ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=ROOT)
    ap.add_argument("--label", default="current")
    args = ap.parse_args(argv)
    res = json.loads(OUT.read_text()) if OUT.is_file() else {}
    res[args.label] = measure(args.code.resolve())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(OUT)
    r = res[args.label]
    print(
        f"{args.label} ({r['git_sha']}): {r['package_lines']} lines, {r['modules']} modules, "
        f"{r['flag_mentions_outside_backends']} flag mentions outside the backends, "
        f"longest function {r['longest_functions'][0]}, {r['functions_over_80_lines']} functions over 80 lines, "
        f"imports {r['imports_module_level']} module level / {r['imports_in_functions']} in functions, "
        f"{r['cli']['verbs']} verbs, README {r['readme_lines']} lines, keys {r['config_keys_per_section']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
