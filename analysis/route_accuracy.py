"""Routing vs memory capacity per frequency bucket: is a rare fact missed because the prompt is routed to the
wrong block, or because the right block did not store it?

For every fact-probe sample of an evaluated run (`eval/<memory>/samples.jsonl`): was the prompt routed to the
leaf holding most of its entity's training fact documents (from the run's prepared data), and the accuracy when
it was and when it was not. Usage (from the repository root):

    .venv/bin/python analysis/route_accuracy.py runs/quickstart/memory [--memory fetched]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmem_lit import runs  # noqa: E402
from hmem_lit.data.prepare import entity_fact_paths  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--memory", default="fetched")
    a = ap.parse_args(argv)
    root = Path(runs.load_run_config(a.run_dir).data.dir)
    samples = a.run_dir / "eval" / a.memory / "samples.jsonl"
    if not samples.is_file():
        print(f"route_accuracy: {samples} missing; run `hmem eval {a.run_dir} --memory {a.memory}` first",
              file=sys.stderr)
        return 2
    main_leaf = {e: collections.Counter(ps).most_common(1)[0][0] for e, ps in entity_fact_paths(root).items()}
    stats: dict[tuple[str, int], list[float]] = collections.defaultdict(lambda: [0, 0.0, 0, 0.0])
    for line in open(samples, encoding="utf-8"):
        s = json.loads(line)
        if "_bucket" not in s["task"] or "path" not in s or s["doc"].get("entity") not in main_leaf:
            continue
        probe, b = s["task"].removeprefix("hmem_").rsplit("_bucket", 1)
        right = tuple(s["path"]) == main_leaf[s["doc"]["entity"]]
        st = stats[(probe, int(b))]
        st[0 if right else 2] += 1
        st[1 if right else 3] += float(s.get("acc", s.get("exact_match", 0.0)))
    print(f"{'probe':22s} bucket  routed to main leaf  acc if right (n)   acc if wrong (n)")
    for (probe, b), (n1, a1, n0, a0) in sorted(stats.items()):
        print(f"{probe:22s} b{b}      {n1 / (n1 + n0):5.2f}              {a1 / max(n1, 1):5.2f} ({n1:4d})      "
              f"{a0 / max(n0, 1):5.2f} ({n0:4d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
