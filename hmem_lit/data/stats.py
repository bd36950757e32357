"""The summary of a prepared `data.dir` (stats.json, and the lines `hmem data prepare` prints after it): documents,
tokens, cluster sizes and routing, frequency buckets, probes and stage times, read from manifest.json."""

from __future__ import annotations

from collections.abc import Sequence

from hmem_lit.retriever.diagnostics import format_concentration


def corpus_stats(manifest: dict, stages: Sequence[str]) -> dict:
    """The summary of a prepared data.dir from its manifest (stats.json; `stages`: their order)."""
    st = manifest["stages"]
    c, p, q = st["corpus"]["info"], st["packing"]["info"], st["questions"]["info"]
    return {
        "documents": c["documents"],
        "train_docs": c["train_docs"],
        "val_docs": c["val_docs"],
        "skipped_lines": c["skipped"],
        "skipped_by_reason": c["skipped_by_reason"],
        "train_tokens": p["train"]["doc_tokens"],
        "val_tokens": p["val"]["doc_tokens"],
        "train_rows": p["train"]["rows"],
        "val_rows": p["val"]["rows"],
        "padding": p["train"]["padding"],
        "vocab_size": st["tokenizer"]["info"]["vocab_size"],
        "clusters": {k: v for k, v in st["tree"]["info"]["stats"].items() if k != "routing"},
        "routing": st["tree"]["info"]["stats"].get("routing", {}),
        "entities": c.get("entities", {}),
        "buckets": q["buckets"],
        "probes": q["probes"],
        "stage_seconds": {s: st[s].get("time_s", 0.0) for s in stages},
    }


def format_stats(s: dict) -> str:
    """The summary as the lines `hmem data prepare` prints."""
    lines = [
        f"documents   {s['documents']:,} ({s['train_docs']:,} train, {s['val_docs']:,} held out); "
        f"skipped lines {s['skipped_lines']:,} {s['skipped_by_reason'] or ''}",
        f"tokens      {s['train_tokens']:,} train, {s['val_tokens']:,} val; vocab {s['vocab_size']:,}; "
        f"{s['train_rows']:,} train rows, {s['padding']:.1%} padding",
    ]
    for lvl, c in s["clusters"].items():
        if lvl.startswith("level"):
            lines.append(
                f"clusters    {lvl}: {c['non_empty']}/{c['nodes']} non-empty, docs per node min {c['min']} "
                f"median {c['median']:.0f} max {c['max']}, largest share of parent {c['max_share_of_parent']:.3f}"
            )
    if "route_agreement" in s["clusters"]:
        lines.append(
            f"clusters    balancing splits {s['clusters']['balance_splits']}, training docs whose greedy "
            f"route equals their assignment {s['clusters']['route_agreement']:.1%}"
        )
    if s.get("routing"):
        lines.append(format_concentration(s["routing"], s["routing"]["key_field"]))
    for kind, bs in s["buckets"].items():
        lines.append(
            f"buckets     {kind:<9} " + "  ".join(f"b{i}: {lo}-{hi} mentions ({n})" for i, (lo, hi, n) in enumerate(bs))
        )
    lines.append("probes      " + ", ".join(f"{k} {v}" for k, v in s["probes"].items()))
    lines.append("stage time  (when last run) " + ", ".join(f"{k} {v:.1f}s" for k, v in s["stage_seconds"].items()))
    return "\n".join(lines)
