"""The configuration reference (docs/config.md), generated from the schema: every key of every section, its default,
the comment written beside its declaration, and what it affects (effects.FIELD_EFFECTS: the preparation stages it
redoes, whether it changes what a run trains, whether it is part of a run's identity).

    python -m hmem_lit.config_reference > docs/config.md      # tests/test_config_reference.py keeps it current
"""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from hmem_lit.config import RunConfig
from hmem_lit.effects import FIELD_EFFECTS

_FIELD = re.compile(r"^\s+(\w+):[^=#]*(?:=[^#]*)?(?:#\s?(.*))?$")


def _comments(cls: type) -> dict[str, str]:
    """field name -> its inline comment, else the comment block right above it (a block above several fields
    without their own comment describes each of them)."""
    out: dict[str, str] = {}
    block: list[str] = []
    used = False  # the block above has been given to a field: a new comment line starts a new block
    src = inspect.getsource(cls).splitlines()
    start = next(i for i, x in enumerate(src) if x.lstrip().startswith("class ")) + 1
    for line in src[start:]:
        text = line.strip()
        if text.startswith("def ") or text.startswith("@"):
            break
        if text.startswith("#"):
            if used:
                block, used = [], False
            block.append(text.lstrip("#").strip())
            continue
        m = _FIELD.match(line)
        if not m:
            block, used = [], False
            continue
        own = (m.group(2) or "").strip()
        out[m.group(1)] = own or " ".join(block)
        block, used = ([] if own else block), True  # a field's own comment ends the block above it
    return out


def _default(f: Any) -> str:
    if f.default is not MISSING:
        v = f.default
    elif f.default_factory is not MISSING:
        v = f.default_factory()
    else:
        return "(required)"
    if is_dataclass(v):
        return "(section)"
    return "null" if v is None else repr(v).replace("'", "") if isinstance(v, (list, tuple)) else str(v)


def _effects(key: str) -> str:
    eff = FIELD_EFFECTS.get(key, ())
    stages = [e for e in eff if e not in ("run", "id")]
    words = []
    if stages:
        words.append("redoes " + ", ".join(stages))
    if "run" in eff:
        words.append("changes the run")
    if "id" in eff:
        words.append("identity")
    return "; ".join(words) or "-"


def rows(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, default, what it is, what it affects) for every leaf field, sections in declaration order; a field's
    declared range (config_text.ranged) opens its description."""
    out = []
    notes = _comments(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not MISSING else None
        if is_dataclass(default):
            out += rows(type(default), f"{key}.")
            continue
        rng = f.metadata.get("range")
        what = notes.get(f.name, "")
        if rng is not None:
            what = f"{'each in' if f.metadata.get('each') else 'in'} {rng.text()}; {what}".rstrip("; ")
        out.append((key, _default(f), what, _effects(key)))
    return out


def markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema by `python -m hmem_lit.config_reference > docs/config.md` (do not edit by hand).",
        "Configs merge defaults < anchor preset < experiment YAML (`base:` chains) < command-line `key=value`. "
        "*Affects*: the data-preparation stages a change redoes (and the ones after them), whether it changes what "
        "a run trains (resuming a checkpoint with another value is refused), and whether it is part of a run's "
        "identity (runs differing only in other keys, e.g. the seed, are pooled as seeds of one configuration).",
        "",
    ]
    section = None
    for key, default, what, eff in rows():
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != section:
            section = top
            lines += ["", f"## {section}", "", "| key | default | what it is | affects |", "|---|---|---|---|"]
        what = what.replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {what} | {eff} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
