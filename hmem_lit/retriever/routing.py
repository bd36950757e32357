"""The control retrievers: paths that carry no information (`random`) or perfect information (`oracle`).

- `random`: a seeded hash of the text picks a leaf (the same text always gets the same path): routing carries
  no information, a control for "does routing matter".
- `oracle`: a seeded hash of a metadata field (`retriever.oracle_field`, e.g. `entity` or `kind`) picks the leaf,
  so every document and prompt with the same value shares a path: perfect routing by construction. Plain text has
  no metadata, so `route(texts)` falls back to hashing the text; use `route_records` with the question items.

Neither fits anything (the contract's default fit routes every document's record: base.py); the k-means tree is
tree.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.registry import RETRIEVERS
from hmem_lit.retriever.base import Retriever


@RETRIEVERS.register("random")
class RandomRouter(Retriever):
    type = "random"


@RETRIEVERS.register("oracle")
class OracleRouter(Retriever):
    type = "oracle"

    def __init__(self, branching: int, depth: int, seed: int = 0, field: str = "kind"):
        super().__init__(branching, depth, seed)
        self.field = field

    @classmethod
    def from_config(cls, r: Any) -> Retriever:
        return cls(r.branching, r.depth, r.seed, r.oracle_field)

    def save(self, out: Path) -> dict[str, Any]:
        return {"oracle_field": self.field}

    @classmethod
    def load(cls, out: Path, meta: dict[str, Any], data_dir: Path) -> Retriever:
        return cls(meta["branching"], meta["depth"], meta.get("seed", 0), meta.get("oracle_field", "kind"))

    def key(self, record: dict[str, Any]) -> str:
        v = record.get(self.field)
        if v is None:  # documents without the field: fall back to the text (a random-like path)
            return "text:" + str(record.get("route_text", record.get("text", "")))
        return f"{self.field}:{v}"

    def route_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        return self._hash_paths([self.key(r) for r in records])
