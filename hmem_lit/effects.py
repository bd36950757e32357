"""What each config field affects, read from the declarations beside the fields (`effects=` in their metadata,
else their section's `EFFECTS`; the tokens are described in hmem_lit/fields.py). Data caching (prepare's stage
keys), the resume check (train._diff) and the run collector (analysis.collect.config_id) read FIELD_EFFECTS;
tests/test_config_effects.py checks every declaration against what those actually do."""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from hmem_lit.config import RunConfig
from hmem_lit.fields import RUN_ID


def declared_effects(cls: type = RunConfig, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Dotted leaf field -> its declared effects, for config dataclass `cls` and its sections."""
    out: dict[str, tuple[str, ...]] = {}
    for f in fields(cls):
        sub = f.default_factory if f.default_factory is not MISSING else None
        if isinstance(sub, type) and is_dataclass(sub):
            out.update(declared_effects(sub, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tuple(f.metadata.get("effects", getattr(cls, "EFFECTS", RUN_ID)))
    return out


FIELD_EFFECTS: dict[str, tuple[str, ...]] = declared_effects()


def fields_with(token: str) -> list[str]:
    """Config fields (dotted) whose declared effects include `token` (a stage name, "run" or "id")."""
    return [k for k, eff in FIELD_EFFECTS.items() if token in eff]


def field_value(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def leaf_fields(node: Any = None, prefix: str = "") -> list[str]:
    """Every leaf field of RunConfig, dotted, read from an instance (what FIELD_EFFECTS must declare)."""
    node = RunConfig() if node is None else node
    out = []
    for f in fields(node):
        v = getattr(node, f.name)
        out += leaf_fields(v, f"{prefix}{f.name}.") if is_dataclass(v) else [f"{prefix}{f.name}"]
    return out
