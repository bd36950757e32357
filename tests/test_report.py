"""`hmem report`: run directories -> runs.csv, every spec'd figure (PNG + PDF), the tables, Markdown and a
self-contained HTML page; missing metrics give messages, incomplete runs are listed, sweeps get Optuna views.

Fixture runs come from test_report_fixtures.build (two real tiny trainings + copies with SYNTHETIC eval numbers).
"""

from __future__ import annotations

import math
import shutil
import sys
import textwrap

import pandas as pd
import pytest
import yaml

from hmem_lit import runs
from hmem_lit.analysis.collect import classify
from hmem_lit.analysis.report import build_report, load_specs
from hmem_lit.cli import main

from .test_report_fixtures import build, synth_eval


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build(tmp_path_factory.mktemp("report") / "runs")


@pytest.fixture(scope="module")
def report(fx, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert main(["report", str(fx["root"]), "--out", str(out)]) == 0
    return out


FIG_PLUGIN = textwrap.dedent('''
    """A figure kind from outside the package, one file: complete runs per memory type, as bars."""
    import matplotlib.pyplot as plt
    from hmem_lit.analysis.figures import Drawn, register

    @register("runs_per_type", keys=("note",))
    def runs_per_type(df, spec):
        counts = df.drop_duplicates("run").groupby("memory_type").size()
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.bar(list(counts.index), list(counts.values))
        return Drawn(fig, sorted(df.run.unique()), [f"{spec['note']}: {int(counts.sum())} runs"])
''')


def test_plugin_figure_kind_is_drawn(fx, tmp_path, monkeypatch):
    """A figure kind registered by a module named in $HMEM_PLUGINS is known to the spec check and drawn."""
    from hmem_lit import registry

    (tmp_path / "my_fig_plugin.py").write_text(FIG_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HMEM_PLUGINS", "my_fig_plugin")
    monkeypatch.setattr(registry, "_plugins_loaded", False)  # this process loaded its (no) plug-ins already
    spec = tmp_path / "mine.yaml"
    spec.write_text("figures:\n  - {id: mine, kind: runs_per_type, title: Runs per type, note: from a plug-in}\n")
    out = tmp_path / "out"
    try:
        assert main(["report", str(fx["root"]), "--out", str(out), "--spec", str(spec)]) == 0
        assert (out / "figures" / "mine.png").stat().st_size > 0 and (out / "figures" / "mine.pdf").is_file()
        n = pd.read_csv(out / "runs.csv").run.nunique()  # the complete runs the figure counted
        assert n > 0 and f"from a plug-in: {n} runs" in (out / "report.md").read_text()
    finally:
        registry.FIGURES._items.pop("runs_per_type", None)
        sys.modules.pop("my_fig_plugin", None)


def test_collected_table_rows_and_values(fx, report):
    csv = pd.read_csv(report / "runs.csv", keep_default_na=False, na_values=[""])
    complete = [d for d in runs.list_runs(fx["root"]) if runs.is_complete(d)]
    # one row per run x eval memory mode; an unevaluated run keeps one row with an empty eval_mode
    expected = sum(max(1, len(runs.read_final(d).get("eval") or {})) for d in complete)
    assert len(csv) == expected and csv.run.nunique() == len(complete) == 36
    assert "fx/crashed" not in set(csv.run)
    r = csv[(csv.run == "fx/ffn_r16_s1") & (csv.eval_mode == "generic")].iloc[0]
    ev = runs.read_final(fx["made"]["ffn_r16_s1"])["eval"]["generic"]
    assert math.isclose(r.hmem_sk, ev["hmem_sk"]) and math.isclose(
        r["atomic_number/bucket0"], ev["atomic_number/bucket0"]
    )
    assert (r.memory_type, r.train_mode, r.levels, r.level, r.seed) == ("ffn", "frozen", "16", 1, 1)
    assert (r.params_fetched, r.params_bank, r.kind) == (384 * 16, 16 * 384 * 16, "memory")
    # seeds of one config share config_id; other configs do not
    ids = csv.drop_duplicates("run").set_index("run").config_id
    assert ids["fx/ffn_r16_s0"] == ids["fx/ffn_r16_s1"] and ids["fx/anchor_s0"] == ids["fx/anchor_s1"]
    assert ids["fx/ffn_r16_s0"] != ids["fx/ffn_r4_s0"]
    kinds = csv.drop_duplicates("run").set_index("run").kind
    assert kinds["fx/anchor_s0"] == "anchor" and kinds["fx/dense2x"] == "dense-2x"
    assert kinds["fx/dense_budget"] == "same-runtime dense" and kinds["fx/ratio_0.1_alone"] == "anchor"
    never = csv[csv.run == "fx/kv_r64_s0"]
    assert len(never) == 1 and pd.isna(never.eval_mode.iloc[0]) and pd.isna(never.hmem_sk.iloc[0])
    assert never.val_loss.notna().all()  # training metrics still there
    assert "path" not in csv.columns


def test_every_figure_table_and_page(fx, report):
    figs, tabs = load_specs()
    assert {f["reproduces"] for f in figs} >= {"Fig. 1", "Fig. 3a/b", "Fig. 3c/d", "Fig. 4a", "Fig. 4b"}
    md, html = (report / "report.md").read_text(), (report / "report.html").read_text()
    skipped = md.split("## Skipped")[1].split("\n## ")[0]
    # every spec gives its figure or table, or is listed as skipped with why its runs are absent (needs:)
    absent = {f["id"] for f in figs + tabs if f"**{f['id']}**" in skipped}
    assert absent <= {"table9_placement", "table7_frozen", "ffn_vs_pkm", "rag_vs_memory"}, absent
    assert all("needs" in skipped.split(f"**{i}**")[1].split("\n")[0] or i == "rag_vs_memory" for i in absent)
    drawn = [f for f in figs if f["id"] not in absent]
    for f in drawn:
        for ext in ("png", "pdf"):
            p = report / "figures" / f"{f['id']}.{ext}"
            assert p.is_file() and p.stat().st_size > 1000, p
    for t in tabs:
        assert (report / "tables" / f"{t['id']}.md").is_file() or t["id"] in absent
    extra = int((report / "figures" / "fig1_recall.png").is_file())  # the comparison's Fig. 1, from item records
    assert html.count("data:image/png;base64,") == len(drawn) + extra and 'src="figures/' not in html
    for f in drawn:
        assert f"figures/{f['id']}.png" in md
    # which runs fed which figure; incomplete run listed with its reason; missing metrics named
    assert "Runs (" in md and "`fx/ffn_r16_s0`" in md
    assert "fx/crashed" in md and "no final.json" in md and "fx/crashed" in html
    assert "lack `wiki_ppl`" in md and "fx/lora_r64_s0" in md
    t1 = (report / "tables" / "table1_main.md").read_text()
    assert "Avg-SK [generic]" in t1 and "Avg-SK" in t1 and "±" in t1  # generic vs fetched, seeds averaged
    t8 = (report / "tables" / "table8_ratio.md").read_text()
    assert t8.count("[cotrain]") == 5 and "same runtime" in t8 and "124K + kv" not in t8


def test_missing_metrics_give_messages_not_crashes(fx, tmp_path):
    root = tmp_path / "runs"
    for name in ("anchor_s0", "ffn_r16_s0"):  # only these two, and without any evaluation
        shutil.copytree(fx["root"] / "fx" / name, root / "fx" / name)
        final = runs.read_final(root / "fx" / name)
        final.pop("eval", None)
        runs.write_json(root / "fx" / name / runs.FINAL, final)
    out = tmp_path / "out"
    build_report(str(root), out)
    md = (out / "report.md").read_text()
    skipped = md.split("## Skipped")[1]
    assert "fig1_buckets" in skipped and "bucket" in skipped and "hmem eval" in skipped
    assert "fig3cd_levels" in skipped and "hmem_sk" in skipped
    assert (out / "figures" / "training_curves.png").is_file()  # training metrics still plot
    assert (out / "figures" / "fig3ab_memory_types.png").is_file()  # panel (b) falls back to val_ppl
    assert "no selected run has `hmem_sk`" in md
    assert (out / "report.html").is_file() and (out / "tables" / "table1_main.md").is_file()


def test_a_damaged_metrics_line_keeps_every_training_curve(fx, tmp_path):
    """Issue 19 case 5: one non-UTF-8 byte in one run's metrics.jsonl used to drop the training-curves figure for
    every run, with a traceback; the line is skipped (a warning names file:line) and every run still plots."""
    root = tmp_path / "runs"
    for name in ("anchor_s0", "ffn_r16_s0"):
        shutil.copytree(fx["root"] / "fx" / name, root / "fx" / name)
    m = root / "fx" / "anchor_s0" / runs.METRICS
    lines = m.read_bytes().splitlines()
    m.write_bytes(b"\n".join([*lines[:2], b'{"step": 3, "tokens": 1\xff}', *lines[2:]]) + b"\n")
    assert len(runs.read_metrics(m.parent)) == len(lines)
    out = tmp_path / "out"
    build_report(str(root), out)
    assert (out / "figures" / "training_curves.png").is_file()
    md = (out / "report.md").read_text()
    assert "## Skipped" not in md or "training_curves" not in md.split("## Skipped")[1]


def test_empty_and_bad_targets(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = build_report(str(tmp_path / "empty"), tmp_path / "o")
    assert "0 complete run(s)" in (out / "report.md").read_text()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "neither a runs directory nor a sweep" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"figures": [{"id": "x", "kind": "pie"}]}))
    assert main(["report", str(tmp_path / "empty"), "--spec", str(bad)]) == 2
    assert "kind 'pie' unknown" in capsys.readouterr().err


def test_classification_rule():
    def row(run, pa, mt="none", pf=0):
        return {
            "run": run,
            "params_anchor": pa,
            "params_fetched": pf,
            "params_runtime": pa + pf,
            "memory_type": mt,
            "train_mode": "frozen" if mt != "none" else "anchor",
            "params_bank": 16 * pf,
            "config_id": run,
        }

    rows = [row("a", 100e6), row("m", 100e6, "ffn", 10e6), row("d2", 205e6), row("rt", 112e6), row("other", 150e6)]
    classify(rows)
    assert [r["kind"] for r in rows] == ["anchor", "memory", "dense-2x", "same-runtime dense", "anchor"]
    assert rows[1]["label"] == "100M + ffn 10M of 160M"


def test_sweep_report_with_optuna_views(fx, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    sweep_dir = tmp_path / "sweeps" / "toy"
    sweep_dir.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "study.journal")))
    # a seeded sampler: with the default one, all six asks drew the same memory.type about once in 250 runs
    # (then only one parameter varies and the importances are rightly skipped)
    study = optuna.create_study(
        study_name="toy", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    names = ["ffn_r4_s0", "ffn_r16_s0", "lora_r4_s0", "lora_r16_s0", "kv_r4_s0", "kv_r16_s0"]
    for n in names:  # trials pointing at fixture run directories, as the sweep runner records them
        t = study.ask(
            {
                "memory.type": optuna.distributions.CategoricalDistribution(["ffn", "lora", "kv"]),
                "r": optuna.distributions.IntDistribution(1, 64, log=True),
            }
        )
        t.set_user_attr("run_dir", str(fx["made"][n]))
        study.tell(t, runs.read_final(fx["made"][n])["eval"]["fetched"]["hmem_sk"])
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    out = build_report(str(sweep_dir), tmp_path / "out")  # a directory holding the journal, trials elsewhere
    md = (out / "report.md").read_text()
    assert "Sweep (Optuna)" in md and "trials of study toy" in md and "FAIL" in md
    for v in ("optuna_history", "optuna_importance", "optuna_parallel", "optuna_slice"):
        assert (out / "figures" / f"{v}.png").is_file(), v
    csv = pd.read_csv(out / "runs.csv")
    assert set(csv.name) == set(names)
    # a sweep YAML naming its storage; two trials only: importances are skipped with a reason
    small = optuna.create_study(study_name="small", storage=f"sqlite:///{tmp_path / 'small.db'}")
    for x in (1.0, 2.0):
        small.enqueue_trial({"x": x})
        small.optimize(lambda t: t.suggest_float("x", 0, 3) ** 2, n_trials=1)
    yml = tmp_path / "small.yaml"
    yml.write_text(yaml.safe_dump({"name": "small", "storage": f"sqlite:///{tmp_path / 'small.db'}"}))
    out2 = build_report(str(yml), tmp_path / "out2")
    md2 = (out2 / "report.md").read_text()
    assert "optuna_importance" in md2.split("## Skipped")[1] and "at least 4 complete trials" in md2
    assert (out2 / "figures" / "optuna_history.png").is_file()


def test_synth_eval_is_marked_and_bounded():
    ev = synth_eval(0.4, buckets_lift=0.3)
    assert all(0 <= ev[f"atomic_number/bucket{k}"] <= 1 for k in range(5))
    assert ev["atomic_number/bucket0"] < ev["atomic_number/bucket4"]


def test_rag_and_head_to_head_tables(fx, report):
    rag = (report / "tables" / "rag_vs_memory.md").read_text()
    rows = rag.splitlines()[2:]
    assert len(rows) == 4, rag  # anchor, anchor + RAG, memory, memory + RAG; the separate-document control left out
    # synthetic numbers of the fixture (Avg-SK has its -2 point seed offset): MFLOPs/query, Avg-SK per point
    for cells in (
        "| off | - | - | 0 | 0 | 40.0 | 5.00 | 28.0 |",
        "| off | bm25 | 1 | 0 | 50.0 | 90.0 | 12.00 | 31.0 |",
    ):
        assert cells in rag, rag
    assert (
        "| on | - | - | 2.3K | 0 | 40.0 | 6.00 | 32.0 |" in rag
        and "| on | bm25 | 1 | 2.3K | 50.0 | 90.0 | 13.00 | 35.0 |" in rag
    )
    h2h = (report / "tables" / "ffn_vs_pkm.md").read_text()
    assert "| pkm |" in h2h and "| ffn |" in h2h and "| none |" in h2h
