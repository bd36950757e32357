"""Declared ranges of numeric config fields: `ranged(default, lo, hi, ...)` puts a `Range` in the field's metadata;
`check_ranges` validates a config section from it; the configuration reference and the property test read it.
A bottom layer (it imports only the errors), so every config module may use it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hmem_lit.errors import ConfigError


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
) -> Any:
    """A dataclass field with its accepted range (None = unbounded on that side). `each`: a list field whose items
    must each lie in the range. A None value (an optional field left unset) is never range-checked."""
    meta = {"range": Range(lo, hi, lo_open, hi_open), "each": each}
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
