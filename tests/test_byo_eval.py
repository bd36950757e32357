"""Bring-your-own evaluation: a user's corpus with a key field, a user's lm-eval task YAML through `hmem eval
--include-path`, with the same routing rules and the routing diagnostics per bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hmem_lit.config import ConfigError, load_config
from tests.test_bm25_routing import _entity_corpus


def files_config(tmp: Path, corpus: Path, *extra: str):
    """A tiny FFN-memory run config on a user's entity corpus (data.source=files, key field `entity`)."""
    return load_config(
        None,
        [
            "data.source=files",
            f"data.files=[{corpus}]",
            f"data.dir={tmp / 'data'}",
            "data.vocab_size=400",
            "data.seq_len=64",
            "data.key_field=entity",
            "retriever.branching=4",
            "retriever.depth=2",
            "retriever.embed_dim=64",
            "memory.type=ffn",
            "memory.levels=[4,4]",
            "train.mode=scratch",
            f"out_dir={tmp / 'runs'}",
            "name=mem",
            "train.batch_size=8",
            "train.progress=false",
            "train.val_every=0",
            "train.ckpt_every=0",
            "train.threads=1",
            "anchor.max_seq_len=64",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    from hmem_lit.train import train

    tmp = tmp_path_factory.mktemp("byo")
    corpus = tmp / "corpus.jsonl"
    prompts = _entity_corpus(corpus, n_entities=24)
    cfg = files_config(tmp, corpus, "train.max_tokens=12000")
    run = train(cfg)
    tasks = tmp / "my_tasks"
    tasks.mkdir()
    items = tmp / "my_probe.jsonl"
    with open(items, "w", encoding="utf-8") as f:
        for e, p in prompts:
            f.write(json.dumps({"prompt": p, "answer": "City", "entity": e, "route_text": p}) + "\n")
    (tasks / "my_probe.yaml").write_text(
        textwrap.dedent(f"""\
        task: my_probe
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {items}
        test_split: test
        output_type: generate_until
        doc_to_text: prompt
        doc_to_target: answer
        generation_kwargs: {{until: ["\\n"], do_sample: false, max_gen_toks: 4}}
        filter_list:
          - name: strip
            filter: [{{function: regex, regex_pattern: "\\\\w+"}}, {{function: take_first}}]
        metric_list:
          - metric: exact_match
        metadata: {{version: 1.0}}
        """)
    )
    return {"run": run, "tasks": tasks, "prompts": prompts, "tmp": tmp}


def test_own_task_through_include_path_with_routing_diagnostics(byo, tmp_path, monkeypatch):
    from hmem_lit import runs
    from hmem_lit.evaluation.runner import evaluate
    from hmem_lit.utils import read_json

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    head = evaluate(byo["run"], tasks=["my_probe"], include_path=[str(byo["tasks"])], print_table=False)
    out = Path(byo["run"]) / "eval" / "fetched-my_probe"
    res = read_json(out / "results.json")
    assert 0.0 <= head["my_probe/exact_match_strip"] <= 1.0 and res["settings"]["include_path"] == [
        str(byo["tasks"].resolve())
    ]
    # every prompt's entity has training documents: each counted once, in the key's own bucket
    routing = res["routing"]["my_probe"]
    keys = read_json(Path(byo["tmp"]) / "data" / "tree" / "keys.json")
    assert sum(v["prompts"] for v in routing.values()) == len(byo["prompts"])
    samples = [json.loads(x) for x in open(out / "samples.jsonl")]
    hits = {}
    for s in samples:  # the route text is the item's route_text; the hit rate is recomputable from the samples
        assert s["route_text"] == s["doc"]["route_text"]
        k = keys[s["doc"]["entity"]]
        hits.setdefault(str(k["bucket"]), []).append(s["path"] == k["main_path"])
    assert {b: round(sum(h) / len(h), 4) for b, h in hits.items()} == {b: v["hit_rate"] for b, v in routing.items()}
    assert sum(v["prompts"] * v["hit_rate"] for v in routing.values()) >= 0.8 * len(byo["prompts"])
    final = runs.read_final(byo["run"])
    assert final["eval"]["fetched-my_probe"]["my_probe/exact_match_strip"] == head["my_probe/exact_match_strip"]
    # the user's metrics join the standard section (for reports), and nothing else of this evaluation does
    std = final["eval"]["fetched"]
    assert std["my_probe/exact_match_strip"] == head["my_probe/exact_match_strip"] and "n_samples" not in std
    assert {f"my_probe/bucket{b}" for b in routing} <= set(std) and {
        f"route/my_probe/bucket{b}" for b in routing
    } <= set(std)
    for b, v in routing.items():  # per-bucket accuracy = the mean over the bucket's samples
        acc = [s["exact_match"] for s in samples if str(keys[s["doc"]["entity"]]["bucket"]) == b]
        assert std[f"my_probe/bucket{b}"] == v["acc"] == round(sum(acc) / len(acc), 4)


def test_include_path_errors_are_one_line_exit_2(byo, tmp_path):
    from hmem_lit.evaluation.runner import user_tasks

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no task YAML"):
        user_tasks([str(empty)])
    with pytest.raises(ConfigError, match="not a directory"):
        user_tasks([str(tmp_path / "nope")])
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "hmem_lit.cli",
            "eval",
            str(byo["run"]),
            "--tasks",
            "my_probe",
            "--include-path",
            str(empty),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--include-path" in p.stderr
    assert p.stderr.strip().count("\n") == 0


def test_lm_eval_command_line_runs_the_hmem_model(byo, tmp_path):
    """`hmem-lm-eval` = lm-eval's own CLI with the model registered; its default --device cuda:0 falls back to the
    CPU where there is no CUDA."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "hmem_lit.evaluation.lm_eval_cli",
            "run",
            "--model",
            "hmem",
            "--model_args",
            f"run_dir={byo['run']},memory=fetched",
            "--tasks",
            "my_probe",
            "--include_path",
            str(byo["tasks"]),
            "--limit",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf")},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "my_probe" in p.stdout and "exact_match" in p.stdout
