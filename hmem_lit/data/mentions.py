"""Entity mention counting (names and aliases, whole words, case-insensitive) and frequency buckets.

Text is split into lower-case word tokens (`\\w+`); at each position the longest name (up to 6 words) that
starts there is counted and skipped over, so "Papua New Guinea" counts once for Papua New Guinea and not for
Guinea. An alias shared by two entities is ambiguous and dropped (an entity's own name always wins).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class MentionCounter:
    def __init__(self, entities: list[dict[str, Any]]):
        self.n = len(entities)
        primary = {tuple(words(e["name"])): i for i, e in enumerate(entities)}
        alias_owner: dict[tuple[str, ...], set[int]] = {}
        for i, e in enumerate(entities):
            for a in e.get("aliases", []):
                alias_owner.setdefault(tuple(words(a)), set()).add(i)
        self.table: dict[tuple[str, ...], int] = {}
        for key, owners in alias_owner.items():
            if key and key not in primary and len(owners) == 1:
                self.table[key] = next(iter(owners))
        self.table.update({k: v for k, v in primary.items() if k})
        self.first = {k[0] for k in self.table}
        self.max_len = min(6, max((len(k) for k in self.table), default=1))
        self.counts = [0] * self.n

    def add(self, text: str) -> None:
        w = words(text)
        i, n = 0, len(w)
        table, first, counts = self.table, self.first, self.counts
        while i < n:
            if w[i] in first:
                for L in range(min(self.max_len, n - i), 0, -1):
                    e = table.get(tuple(w[i : i + L]))
                    if e is not None:
                        counts[e] += 1
                        i += L
                        break
                else:
                    i += 1
            else:
                i += 1

    def add_all(self, texts: Iterable[str]) -> list[int]:
        for t in texts:
            self.add(t)
        return self.counts


def buckets(counts: list[int], names: list[str], n_buckets: int = 5) -> list[int]:
    """Equal-size frequency buckets (0 = rarest) by rank of (count, name); ties are split by name."""
    order = sorted(range(len(counts)), key=lambda i: (counts[i], names[i]))
    out = [0] * len(counts)
    for rank, i in enumerate(order):
        out[i] = min(n_buckets - 1, rank * n_buckets // max(1, len(counts)))
    return out
