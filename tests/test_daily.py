"""The researcher's daily loop (issue 33): `hmem generate` routes as evaluation does and its `none` mode is the
anchor's own greedy decoding; the HF export's tokenizer pads a batch and plain transformers `generate` equals
`hmem generate --memory none` (the model card's claim); an anchor-only run's evaluation is filed under `none`;
commands start without torch, Lightning or lm-eval, and name only near matches for a typo; `hmem info --config`
round-trips; `-q` prints nothing on a clean run; `hmem-lm-eval` names its output after the run and batches like
`hmem eval`; the byo example writes where it is told, with relative paths."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hmem_lit.config import ConfigError, load_config
from tests.test_bm25_routing import _entity_corpus
from tests.test_byo_eval import files_config

from .conftest import DEBUG_YAML, ROOT, tiny_overrides

HMEM = str(Path(sys.executable).parent / "hmem")


@pytest.fixture(scope="module")
def mem_run(tmp_path_factory):
    """A tiny FFN-memory run on a user's entity corpus (a real BPE tokenizer and router)."""
    from hmem_lit.train import train

    tmp = tmp_path_factory.mktemp("daily")
    corpus = tmp / "corpus.jsonl"
    prompts = _entity_corpus(corpus, n_entities=24)
    return train(files_config(tmp, corpus, "train.max_tokens=12000")), [p for _, p in prompts[:4]]


def _anchor_greedy(run_dir: Path, prompt: str, n: int) -> str:
    """Greedy decoding of the bare anchor, token by token, straight from the model (no adapter)."""
    from hmem_lit.evaluation.resources import load_run_tokenizer
    from hmem_lit.model import load_model

    model, cfg = load_model(run_dir)
    tok = load_run_tokenizer(cfg)
    ids = tok.encode(prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + new]), memory_mode="none")[0, -1].argmax())
            if nxt == tok.eot_id:
                break
            new.append(nxt)
    return tok.decode(new)


def test_generate_routes_like_evaluation_and_none_is_the_anchor(mem_run, capsys):
    from hmem_lit.cli import main
    from hmem_lit.evaluation.routing import load_run_router
    from hmem_lit.model import load_model

    run, prompts = mem_run
    assert main(["generate", str(run), *prompts, "--memory", "fetched", "--jsonl", "--max-new-tokens", "6"]) == 0
    fetched = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["generate", str(run), *prompts, "--memory", "none", "--jsonl", "--max-new-tokens", "6"]) == 0
    none = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    _, cfg = load_model(run)
    paths = load_run_router(cfg).route(prompts)  # each prompt routes itself, as a generation probe's does
    assert [r["path"] for r in fetched] == [list(map(int, p)) for p in paths]
    assert all(r["path"] is None and r["memory"] == "none" for r in none)
    for r in none:  # the `none` mode is the anchor alone, greedy; cut at the first newline
        assert r["text"] == _anchor_greedy(run, r["prompt"], 6).split("\n")[0]
    with pytest.raises(ConfigError, match="give at least one prompt"):
        from hmem_lit.generate import read_prompts

        read_prompts([], None)


def test_export_tokenizer_pads_a_batch_and_plain_generate_is_the_anchor(mem_run, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hmem_lit.evaluation.resources import load_run_tokenizer
    from hmem_lit.generate import generate
    from hmem_lit.hf_export import export
    from hmem_lit.model import load_model

    run, prompts = mem_run
    out = export(run, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ours = load_run_tokenizer(load_model(run)[1])
    assert (tok.eos_token_id, tok.pad_token_id) == (ours.eot_id, ours.pad_id) and tok.padding_side == "left"
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    batch = tok([prompts[0], prompts[1] + " and more words here"], return_tensors="pt", padding=True)
    assert (batch.input_ids[0, 0] == ours.pad_id) and batch.attention_mask[0].sum() < batch.attention_mask[1].sum()
    with torch.no_grad():
        got = hf.generate(**batch, max_new_tokens=5, do_sample=False)
    texts = tok.batch_decode(got[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    plain = [r["text"] for r in generate(run, [prompts[0], prompts[1] + " and more words here"], "none", 5, [])]
    assert texts == plain  # a padded batch of the plain HF model = the run's anchor alone, prompt by prompt
    card = (out / "README.md").read_text()
    assert "runs the anchor alone" in card and "hmem_memory.safetensors" in card and "m.fetched(m.route(" in card


def test_anchor_only_evaluation_is_filed_under_none(tmp_path):
    from hmem_lit import runs
    from hmem_lit.evaluation.runner import evaluate
    from hmem_lit.train import train

    run = train(load_config(DEBUG_YAML, tiny_overrides(tmp_path, **{"train.max_tokens": 4000})))
    evaluate(run, tasks=["hmem_toy_colour"], limit=2, threads=1, print_table=False)  # eval.memory: fetched
    assert (run / "eval" / "none" / "results.json").is_file() and not (run / "eval" / "fetched").exists()
    final = runs.read_final(run)
    assert set(final["eval"]) == {"none"} and runs.eval_section(final, "fetched") == final["eval"]["none"]


def _imports_after(argv: list[str]) -> tuple[int, list[str]]:
    code = (
        "import sys; from hmem_lit.cli import main; rc = main(sys.argv[1:]); "
        "print([m for m in ('torch', 'lightning', 'lm_eval', 'pandas', 'matplotlib', 'transformers') "
        "if m in sys.modules]); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1].replace("'", '"'))


@pytest.mark.parametrize(
    "argv,rc",
    [
        (["list"], 0),
        (["sweep", "status", "memory_type", "out_dir=/nonexistent_hmem"], 2),
        (["train", "000_debug", "train.max_tokns=5"], 2),
        (["info", "000_debug", "--config"], 0),  # a memory experiment imports its type to validate it
    ],
    ids=["list", "sweep-status", "config-typo", "info-config"],
)
def test_commands_start_without_heavy_imports(argv, rc):
    """Speed lives in benchmarks; what makes it is checked here: none of the 4-8 s imports happen."""
    got_rc, heavy = _imports_after(argv)
    assert got_rc == rc and heavy == [], (got_rc, heavy)


def test_help_lists_every_verb_once_the_main_path_first(capsys):
    """`hmem --help`: every verb of the table under one of two headings, the main path before the side studies."""
    from hmem_lit.cli import VERBS, main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    main_at, side_at = out.index("\nthe main path:\n"), out.index("\nside studies and tools:\n")
    listed = re.findall(r"^  (\w+) ", out[main_at:], re.M)  # a verb at the indent; its wrapped help is deeper
    assert sorted(listed) == sorted(VERBS) and len(listed) == len(set(listed)), listed
    at = {v: out.index(f"\n  {v} ", main_at) for v in listed}
    assert main_at < side_at and all(at[v] < side_at for v in ("quickstart", "data", "train", "eval", "report"))
    assert all(at[v] > side_at for v in ("edit", "attribute", "ablations"))


def test_registry_source_scan_agrees_with_imports():
    import torch as _torch  # noqa: F401

    from hmem_lit.anchor import Anchor, count_params
    from hmem_lit.anchor_config import PRESETS, AnchorConfig, anchor_params
    from hmem_lit.registry import CORPORA, EMBEDDERS, MEMORY, RETRIEVERS, TASKS, TREE_REFINERS, TREE_ROUTERS

    for reg in (MEMORY, RETRIEVERS, TREE_ROUTERS, TREE_REFINERS, EMBEDDERS, CORPORA, TASKS):
        assert list(reg.scan()) == reg.names(), reg.kind
    for n, attrs in MEMORY.scan().items():
        assert attrs.get("routed", True) == MEMORY.get(n).routed, n
    for reg in (TREE_ROUTERS, TREE_REFINERS, TASKS):
        for n, attrs in reg.scan().items():
            assert attrs["value"] == reg.get(n)
    for n, attrs in CORPORA.scan().items():
        assert attrs["about"] == CORPORA.get(n).about, n
    for name, p in PRESETS.items():
        acfg = AnchorConfig(**{**p, "preset": name, "vocab_size": p.get("vocab_size") or 4096})
        with _torch.device("meta"):
            assert anchor_params(acfg) == count_params(Anchor(acfg)), name


def test_near_matches_only(capsys):
    from hmem_lit.cli import main
    from hmem_lit.errors import did_you_mean
    from hmem_lit.evaluation.runner import resolve_tasks
    from hmem_lit.evaluation.taskgen import TaskSet

    assert main(["train", "000_debg"]) == 2
    assert "did you mean 000_debug?" in capsys.readouterr().err
    assert main(["sweep", "status", "memory_typ"]) == 2
    err = capsys.readouterr().err
    assert "did you mean memory_type" in err and "placement" not in err  # the closest first, far names left out
    ts = TaskSet(Path("/x"), sk={f"hmem_p{i}": (f"p{i}", "base") for i in range(60)}, ck=["hmem_wiki_cloze"])
    with pytest.raises(ConfigError) as e:
        resolve_tasks(["hmem_wiki_clze"], ts)
    assert "did you mean hmem_wiki_cloze" in str(e.value) and "hmem_p1" not in str(e.value)
    assert did_you_mean("zzzz", ["memory_type", "placement"]) == ""


def test_info_config_round_trips(capsys):
    import yaml

    from hmem_lit.cli import main
    from hmem_lit.config import from_dict, to_dict

    assert main(["info", "102_qs_memory", "train.max_tokens=1234", "--config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    want = load_config(ROOT / "experiments" / "102_qs_memory.yaml", ["train.max_tokens=1234"])
    assert to_dict(from_dict(printed)) == to_dict(want) and printed["train"]["max_tokens"] == 1234


def test_quiet_train_prints_nothing_and_normal_has_no_library_chatter(tmp_path):
    base = [HMEM, "train", str(DEBUG_YAML), *tiny_overrides(tmp_path, **{"train.max_tokens": 4000})]
    q = subprocess.run([*base[:1], "-q", *base[1:]], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0 and q.stderr == "" and q.stdout == "", q.stderr[-2000:]
    n = subprocess.run([*base, "name=again"], capture_output=True, text=True, timeout=300)
    assert n.returncode == 0 and "done:" in n.stderr
    for noise in ("Tip", "GPU available", "UserWarning", "srun", "log_every_n_steps", "LOCAL_RANK"):
        assert noise not in n.stderr, noise


def test_lm_eval_wrapper_defaults():
    from hmem_lit.evaluation.lm_eval_cli import hmem_argv

    got = hmem_argv(["run", "--model", "hmem", "--model_args", "run_dir=runs/q/memory,memory=none", "--tasks", "t"])
    assert got[got.index("--model_args") + 1] == "run_dir=runs/q/memory,memory=none,pretrained=runs/q/memory"
    assert got[got.index("--batch_size") + 1] == "auto"  # HmemLM: the run's eval.batch_size
    assert "--batch_size" not in hmem_argv(["run", "--model", "hmem", "--model_args", "run_dir=r", "-b", "4"])[:-2]
    assert hmem_argv(["run", "--model", "hf", "--model_args", "pretrained=x"]) == [
        "run",
        "--model",
        "hf",
        "--model_args",
        "pretrained=x",
    ]
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    assert GeneralConfigTracker._get_model_name(got[got.index("--model_args") + 1]) == "runs/q/memory"


def test_byo_example_writes_where_told_with_relative_paths(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example", ROOT / "examples" / "byo" / "make_example.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    assert mod.main(["--out", "mine"]) == 0
    task = (tmp_path / "mine" / "tasks" / "my_airport_codes.yaml").read_text()
    data = next(line.split(":", 1)[1].strip() for line in task.splitlines() if line.strip().startswith("test:"))
    assert data == "mine/my_airport_codes.jsonl" and (tmp_path / data).is_file()
    assert not (ROOT / "examples" / "byo" / "out" / "mine").exists()
