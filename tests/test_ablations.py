"""`hmem ablations`: rows from run directories, gains over the matching anchor, seed aggregation, the paper's
shapes checked from the numbers, and the page written (on synthetic run directories: no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hmem_lit.config import ConfigError
from hmem_lit.studies import ablations
from tests.conftest import ROOT


def fake_run(
    root: Path,
    study: str,
    name: str,
    *,
    corpus="facts",
    mtype="ffn",
    levels=(0, 96),
    sk=0.3,
    seed=0,
    n_layer=2,
    fetched=36864,
    bank=9437184,
    layers="all",
    lora_target="qk",
    rare=0.1,
) -> Path:
    d = root / study / name
    d.mkdir(parents=True)
    cfg = {
        "memory": {"type": mtype, "levels": list(levels), "layers": layers, "lora_target": lora_target},
        "anchor": {"n_layer": n_layer},
        "train": {"seed": seed},
        "data": {"source": "builtin", "corpus": corpus},
    }
    ev = {
        "hmem_sk": sk,
        "hmem_ck": 0.2,
        "wiki_ppl": 1000.0,
        "p/bucket0": rare,
        "p/bucket1": 0.9,
        "q/bucket0": rare,
        "q/bucket1": 0.7,
        "eval_time_s": 10.0,
    }
    final = {
        "config": cfg,
        "params": {
            "anchor": 238144,
            "fetched": fetched if mtype != "none" else 0,
            "bank": bank if mtype != "none" else 0,
        },
        "tokens": 2_000_000,
        "train_time_s": 100.0,
        "eval": {"fetched": ev},
    }
    (d / "final.json").write_text(json.dumps(final))
    return d


def test_rows_gain_seeds_and_shapes(tmp_path):
    root = tmp_path / "sweeps"
    fake_run(root, "_baselines", "anchor-f", mtype="none", levels=(), sk=0.10, rare=0.0)
    fake_run(root, "_baselines", "anchor-a", mtype="none", levels=(), sk=0.20, corpus="airports")
    for seed, sk in ((0, 0.40), (1, 0.44)):
        fake_run(root, "memory_type", f"ffn{seed}", sk=sk, seed=seed)
    fake_run(root, "memory_type", "lora", mtype="lora", sk=0.30, levels=(0, 72))
    fake_run(root, "memory_type", "kv", mtype="kv", sk=0.35, levels=(0, 144))
    fake_run(root, "memory_type-airports", "ffn", sk=0.5, corpus="airports")
    fake_run(root, "memory_type-airports", "lora", mtype="lora", sk=0.45, corpus="airports", levels=(0, 72))
    fake_run(root, "memory_type-airports", "kv", mtype="kv", sk=0.25, corpus="airports", levels=(0, 144))
    (root / "memory_type" / "incomplete").mkdir()  # no final.json: ignored
    df = ablations.with_gain(ablations.collect_rows(root))
    assert len(df) == 9 and set(df.setting) == {"facts, 2M tokens", "airports, 2M tokens"}
    ffn = df[(df.sweep == "memory_type") & (df.memory_type == "ffn") & (df.corpus == "facts")]
    assert sorted(ffn.gain.round(6)) == [30.0, 34.0]  # minus the facts anchor (10.0), not the airports one
    assert ffn.rare.iloc[0] == pytest.approx(10.0)  # mean of the probes' bucket0
    agg = ablations.aggregate(df[df.sweep == "memory_type"], ["memory_type", "lora_target"])
    f = agg[(agg.corpus == "facts") & (agg.memory_type == "ffn")].iloc[0]
    assert f.n == 2 and f.sk == pytest.approx(42.0) and f.sk_std == pytest.approx(2.828, abs=1e-3)
    sec = ablations.SECTIONS[0]
    facts = ablations._check_types(agg[agg.corpus == "facts"])[0]
    airports = ablations._check_types(agg[agg.corpus == "airports"])[0]
    # one seed for LoRA and KV: each step is printed with its size but no verdict beyond "not resolved"
    assert "not resolved (one seed)" in facts and "KV -> LORA-qk -5.0 no CI" in facts
    assert "not resolved (one seed)" in airports
    page = ablations.build(root, tmp_path / "out")
    text = page.read_text()
    assert sec.title in text and "42.0 ± 2.8" in text and "no runs in this build" in text  # the other sweeps
    assert (tmp_path / "out" / "memory_type.png").stat().st_size > 1000
    assert (tmp_path / "out" / "rows.csv").read_text().count("\n") == 10
    assert "commit" in (tmp_path / "out" / "rows.csv").read_text().splitlines()[0]


def _agg(**cols):
    """Aggregated rows with per-seed values (what the checks read): sk given as lists of seed values."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(cols)
    df["sk_vals"] = df.sk
    df["sk"] = df.sk_vals.apply(np.mean)
    if "wiki" in df:
        df["wiki_ppl_vals"], df["wiki_ppl"] = df.wiki, df.wiki.apply(np.mean)
    df["paths"] = [[] for _ in range(len(df))]
    return df


def test_the_checker_gives_the_three_verdicts_on_constructed_data():
    # three seeds per point: a clear rise, a clear fall, and a step inside the seed noise
    rise = _agg(level=[1, 2], params_fetched=[9216, 9216], sk=[[10.0, 10.5, 9.8], [15.0, 15.4, 14.7]])
    fall = _agg(level=[1, 2], params_fetched=[9216, 9216], sk=[[15.0, 15.4, 14.7], [10.0, 10.5, 9.8]])
    noise = _agg(level=[1, 2], params_fetched=[9216, 9216], sk=[[10.0, 14.0, 12.0], [11.0, 13.5, 12.5]])
    assert "**holds**" in ablations._check_level_fetched(rise)[0]
    assert "**does not hold**" in ablations._check_level_fetched(fall)[0]
    assert "**within noise**" in ablations._check_level_fetched(noise)[0]
    one = _agg(level=[1, 2], params_fetched=[9216, 9216], sk=[[10.0], [15.0]])
    assert "**not resolved (one seed)**" in ablations._check_level_fetched(one)[0]


def test_ratio_optimum_is_judged_on_perplexity_with_avg_sk_beside():
    seeds = lambda m, d=1.0: [m - d, m, m + d]  # noqa: E731
    a = _agg(
        fetch_ratio=[0.0, 0.2, 0.5, 1.0],
        sk=[seeds(10.0), seeds(14.0), seeds(16.0), seeds(20.0)],
        wiki=[seeds(200.0), seeds(150.0), seeds(170.0), seeds(260.0)],
    )
    ppl, sk = ablations._check_ratio(a)
    assert ppl.startswith("interior optimum on perplexity: **holds**") and "ratio 0.20 - ratio 0.00" in ppl
    assert sk.startswith("interior optimum on Avg-SK: **does not hold**")  # the end (1.0) beats every interior ratio


def test_missing_root_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        ablations.build(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no complete, evaluated sweep runs"):
        ablations.build(tmp_path / "empty", tmp_path / "out")


def test_checks_record_and_merge(tmp_path):
    """The verdicts computed from runs are recorded (checks.csv) and a rebuild from the committed rows prints the
    same lines; --merge keeps a committed (sweep, setting) the new runs do not cover and replaces one they do."""
    first, out = tmp_path / "first", tmp_path / "out"
    fake_run(first, "_baselines", "anchor-f", mtype="none", levels=(), sk=0.10)
    for seed in (0, 1, 2):
        fake_run(first, "level_fetched", f"l1-{seed}", levels=(96,), sk=0.20 + 0.01 * seed, seed=seed)
        fake_run(first, "level_fetched", f"l2-{seed}", levels=(0, 96), sk=0.30 + 0.01 * seed, seed=seed)
    page = ablations.build(first, out).read_text()
    checks = (out / "checks.csv").read_text()
    assert 'level_fetched,"facts, 2M tokens"' in checks and "deeper level helps more" in checks
    line = next(x for x in page.splitlines() if x.startswith("- facts, 2M tokens: fetched"))
    rebuilt = ablations.build(first, tmp_path / "again", rows_csv=out / "rows.csv").read_text()
    assert line in rebuilt.splitlines()  # read from checks.csv, not recomputed from seeds
    # a later machine runs airports only: facts' rows and verdict stay, airports' are added
    second = tmp_path / "second"
    fake_run(second, "_baselines", "anchor-a", mtype="none", levels=(), sk=0.10, corpus="airports")
    fake_run(second, "level_fetched-airports", "l1", levels=(96,), sk=0.25, corpus="airports")
    fake_run(second, "level_fetched-airports", "l2", levels=(0, 96), sk=0.35, corpus="airports")
    merged = ablations.build(second, out, merge=True).read_text()
    assert line in merged.splitlines() and "- airports, 2M tokens: fetched" in merged
    rows = ablations.read_rows(out / "rows.csv")
    assert len(rows) == 7 + 3 and set(rows.corpus) == {"facts", "airports"}
    # the same airports runs again replace, never duplicate
    ablations.build(second, out, merge=True)
    assert len(ablations.read_rows(out / "rows.csv")) == 10
    with pytest.raises(ConfigError, match="--merge"):
        ablations.build(second, out, rows_csv=out / "rows.csv", merge=True)


@pytest.mark.parametrize(
    "page", sorted((ROOT / "docs" / "ablations").rglob("ablations.md")), ids=lambda p: p.parent.name
)
def test_committed_pages_regenerate_from_their_records(page, tmp_path):
    """Every number and verdict on a committed ablation page comes from the rows.csv (and checks.csv) beside it:
    rebuilt from them, the page reads the same (figures aside)."""
    out = tmp_path / "out"
    out.mkdir()
    if (page.parent / "notes.md").is_file():
        shutil.copy(page.parent / "notes.md", out / "notes.md")
    rel = page.parent.relative_to(ROOT)
    rebuilt = ablations.build(ROOT / "unused", out, rows_csv=page.parent / "rows.csv").read_text()
    rebuilt = rebuilt.replace(
        f"--rows {page.parent / 'rows.csv'} --out {out}", f"--rows {rel / 'rows.csv'} --out {rel}"
    )
    assert rebuilt == page.read_text()
