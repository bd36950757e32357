"""In-loop probes: logged every N steps as probe/<probe>/bucket<k>, probe/<probe>, probe/sk; with every item in the
subset, the final step's multiple-choice accuracy equals `hmem eval`'s for the same model; off by default."""

from __future__ import annotations

import json

import pytest

from hmem_lit import runs
from hmem_lit.config import load_config
from hmem_lit.train import train

from .conftest import DEBUG_YAML, tiny_overrides

MEM = ["memory.type=ffn", "memory.levels=[2,4]", "retriever.depth=2"]


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / runs.METRICS).read_text().splitlines()]


@pytest.mark.slow  # trains and runs the lm-eval harness; off by default
def test_probes_logged_every_n_steps_and_match_the_harness(tmp_path):
    steps = 12
    cfg = load_config(
        DEBUG_YAML,
        [
            *tiny_overrides(tmp_path, **{"train.max_tokens": 8 * 64 * steps}),
            *MEM,
            "train.probe_every=4",
            "train.probe_per_bucket=100000",
        ],
    )
    run_dir = train(cfg)
    recs = [r for r in _records(run_dir) if "probe/sk" in r]
    assert [r["step"] for r in recs] == [4, 8, 12]
    last = recs[-1]
    assert all(0.0 <= v <= 1.0 for k, v in last.items() if k.startswith("probe/"))
    assert {"probe/toy_colour", "probe/toy_friend", "probe/toy_friend/bucket0"} <= set(last)
    from hmem_lit.evaluation import evaluate

    got = evaluate(run_dir, tasks=["hmem_toy_friend"], memory="fetched", print_table=False)
    ev = runs.read_final(run_dir)["eval"]["fetched"]
    want = ev.get("toy_friend", got.get("toy_friend"))
    assert want is not None
    assert last["probe/toy_friend"] == pytest.approx(float(want), abs=1e-9)


def test_off_by_default(tmp_path):
    run_dir = train(load_config(DEBUG_YAML, tiny_overrides(tmp_path, **{"train.max_tokens": 3000})))
    assert not any("probe/sk" in r for r in _records(run_dir))
