"""Routing quality, for any corpus whose documents carry a key field (`data.key_field`, e.g. `entity`).

Two numbers say whether memory can help a key's facts (LOG 2026-12-01 "retrieval"):
- **concentration**: the share of a key's training documents that sit in its *main leaf* (the leaf holding most
  of them). The main leaf's block is the one trained on the key's facts; documents elsewhere train other blocks.
- **hit rate**: the share of a key's prompts routed to its main leaf.
Both are reported per frequency bucket: keys ranked by their number of training documents, cut into
`n_buckets` equal-size buckets (0 = rarest; ties broken by key), the same rule as the probes' mention buckets.

`key_table` runs at data preparation (`tree/keys.json`, `stats.json["routing"]`); `hit_rates` at evaluation and in
the routing benchmark. Pure functions of arrays: the tests check them against hand-computed cases.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def key_table(keys: Sequence[Any], paths: np.ndarray, n_buckets: int = 5) -> dict[str, dict[str, Any]]:
    """keys (N,) per training document (None = no key), paths (N, depth) -> {key: {docs, main_path, share, bucket}}."""
    by: dict[str, list[tuple[int, ...]]] = collections.defaultdict(list)
    for k, p in zip(keys, paths):
        if k is not None:
            by[str(k)].append(tuple(int(v) for v in p))
    names = sorted(by)
    counts = [len(by[k]) for k in names]
    order = sorted(range(len(names)), key=lambda i: (counts[i], names[i]))
    bucket = [0] * len(names)
    for rank, i in enumerate(order):
        bucket[i] = min(n_buckets - 1, rank * n_buckets // max(1, len(names)))
    out = {}
    for k, c, b in zip(names, counts, bucket):
        main, n = collections.Counter(by[k]).most_common(1)[0]  # ties: the path seen first
        out[k] = {"docs": c, "main_path": list(main), "share": n / c, "bucket": b}
    return out


def concentration(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean main-leaf share over keys, overall and per bucket (with the bucket's document-count range)."""
    if not table:
        return {"keys": 0}
    per: dict[int, list[dict]] = collections.defaultdict(list)
    for v in table.values():
        per[v["bucket"]].append(v)
    return {
        "keys": len(table),
        "mean_share": round(float(np.mean([v["share"] for v in table.values()])), 4),
        "buckets": {
            str(b): {
                "keys": len(vs),
                "docs_min": min(v["docs"] for v in vs),
                "docs_max": max(v["docs"] for v in vs),
                "mean_share": round(float(np.mean([v["share"] for v in vs])), 4),
            }
            for b, vs in sorted(per.items())
        },
    }


def hit_rates(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """records: {group, bucket, hit (bool, or None when the text was not routed), correct (float | None)} -> per
    group and bucket: prompts, hit rate (over routed prompts; None if none was routed), accuracy, and the
    accuracy when routed right and when routed wrong (None when there were none)."""
    acc: dict[tuple[str, int], dict[Any, list[float]]] = collections.defaultdict(
        lambda: {True: [], False: [], None: []}
    )
    n: dict[tuple[str, int], dict[Any, int]] = collections.defaultdict(lambda: {True: 0, False: 0, None: 0})
    for r in records:
        key, hit = (str(r["group"]), int(r["bucket"])), (None if r.get("hit") is None else bool(r["hit"]))
        n[key][hit] += 1
        if r.get("correct") is not None:
            acc[key][hit].append(float(r["correct"]))
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    out: dict[str, Any] = {}
    for (g, b), c in sorted(n.items()):
        a = acc[(g, b)]
        routed = c[True] + c[False]
        out.setdefault(g, {})[str(b)] = {
            "prompts": routed + c[None],
            "hit_rate": round(c[True] / routed, 4) if routed else None,
            "acc": mean(a[True] + a[False] + a[None]),
            "acc_routed_right": mean(a[True]),
            "acc_routed_wrong": mean(a[False]),
        }
    return out


def format_concentration(c: dict[str, Any], field: str) -> str:
    if not c.get("keys"):
        return f"routing     no training document carries data.key_field={field!r}"
    per = "  ".join(
        f"b{b}: {v['mean_share']:.0%} ({v['docs_min']}-{v['docs_max']} docs)" for b, v in c["buckets"].items()
    )
    return (
        f"routing     {c['keys']:,} keys ({field}); main leaf holds {c['mean_share']:.1%} of a key's training "
        f"documents on average; by bucket {per}"
    )
