"""Routing vs memory capacity per frequency bucket: is a rare fact missed because the prompt is routed to the
wrong block, or because the right block did not store it?

Prints, for an evaluated run, what `hmem eval` recorded in `eval/<memory>/results.json["routing"]`
(hmem_lit/evaluation/routing.py: routing_report): per probe and bucket, the share of prompts routed to the leaf
holding most of their entity's training documents, and the accuracy when routed right and when routed wrong.
Usage (from the repository root):

    .venv/bin/python analysis/route_accuracy.py runs/quickstart/memory [--memory fetched]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--memory", default="fetched")
    a = ap.parse_args(argv)
    res = a.run_dir / "eval" / a.memory / "results.json"
    routing = json.loads(res.read_text()).get("routing") if res.is_file() else None
    if not routing:
        print(
            f"route_accuracy: no routing record in {res}; run `hmem eval {a.run_dir} --memory {a.memory} --force` "
            "(data with a key field, fetched or blocked memory)",
            file=sys.stderr,
        )
        return 2
    f = lambda v: "   - " if v is None else f"{v:5.2f}"  # noqa: E731
    print(f"{'probe':22s} bucket  routed to main leaf  acc if right (n)   acc if wrong (n)")
    for probe, buckets in sorted(routing.items()):
        for b, v in sorted(buckets.items(), key=lambda kv: int(kv[0])):
            right = round(v["prompts"] * v["hit_rate"])
            print(
                f"{probe:22s} b{b}      {v['hit_rate']:5.2f}              {f(v['acc_routed_right'])} ({right:4d})      "
                f"{f(v['acc_routed_wrong'])} ({v['prompts'] - right:4d})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
