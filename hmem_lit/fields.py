"""What a config field declares beside itself, in the field's metadata: its accepted range (`ranged(default, lo,
hi, ...)` puts a `Range` there; `check_ranges` validates a section from it; the configuration reference and the
property test read it) and what it affects (`effects=`, read by hmem_lit/effects.py). A bottom layer (it imports
only the errors), so every config module may use it.

Effects tokens: a preparation stage (corpus, tokenizer, embeddings, tree, packing, questions: changing the field
redoes that stage and the ones downstream of it); "run": it changes what a run trains, so resuming a checkpoint
with another value is refused; "id": it is part of a run's configuration identity (runs that differ only in fields
without "id", e.g. the seed, are averaged as seeds of one configuration). No token: bookkeeping. A field without
`effects=` has its section's: the class attribute `EFFECTS` (RUN_ID where a section declares none, e.g. a plug-in
memory type's options)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hmem_lit.errors import ConfigError

RUN_ID = ("run", "id")  # changes what a run trains and is part of its configuration identity


def declared(default: Any, *, effects: tuple[str, ...]) -> Any:
    """A dataclass field (no range) whose effects differ from its section's EFFECTS."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"effects": effects})
    return field(default=default, metadata={"effects": effects})


@dataclass(frozen=True)
class Range:
    """The values a numeric config field accepts, declared once beside the field (`ranged`); validation
    (`check_ranges`), the configuration reference and the property test read it."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def text(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"

        lo = "-inf" if self.lo is None else num(self.lo)
        hi = "inf" if self.hi is None else num(self.hi)
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}"


def ranged(
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    each: bool = False,
    effects: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its accepted range (None = unbounded on that side). `each`: a list field whose items
    must each lie in the range. A None value (an optional field left unset) is never range-checked. `effects`:
    what it affects, where that differs from its section's EFFECTS."""
    meta: dict[str, Any] = {"range": Range(lo, hi, lo_open, hi_open), "each": each}
    if effects is not None:
        meta["effects"] = effects
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_ranges(obj: Any, prefix: str) -> None:
    """Every ranged field of a config dataclass instance in its range: one ConfigError naming the key otherwise."""
    for f in fields(obj):
        rng = f.metadata.get("range")
        v = getattr(obj, f.name)
        if rng is None or v is None:
            continue
        for x in v if f.metadata.get("each") else [v]:
            if not rng.contains(x):
                raise ConfigError(f"{prefix}{f.name}: must be in {rng.text()}, got {x}")
