"""Evaluation: the `hmem` harness model against hand computations, routing rules, generated tasks, the runner.

Two tiny toy runs are trained once per session (an anchor and an FFN-memory run with a generic block). Memory
tests scale up the bank first so that which block is fetched visibly changes the log-likelihoods.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf_datasets_"))

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hmem_lit import runs  # noqa: E402
from hmem_lit.config import ConfigError, load_config  # noqa: E402
from hmem_lit.evaluation.adapter import HmemLM  # noqa: E402
from hmem_lit.evaluation.routing import ToyRouter, route_texts  # noqa: E402
from hmem_lit.evaluation.taskgen import build_tasks  # noqa: E402
from hmem_lit.evaluation.tasklib import is_correct, load_items  # noqa: E402

from .conftest import DEBUG_YAML, tiny_overrides  # noqa: E402


def _req(kind, args, task="t", doc_id=0, doc=None):
    from lm_eval.api.instance import Instance

    return Instance(kind, doc or {}, args, 0, (task, doc_id, 1))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    from hmem_lit.train import train

    out = tmp_path_factory.mktemp("eval_runs")
    anchor = train(load_config(DEBUG_YAML, tiny_overrides(out, name="anchor")))
    mem = train(
        load_config(
            DEBUG_YAML,
            tiny_overrides(
                out,
                name="mem",
                **{"memory.type": "ffn", "memory.levels": "[4,4]", "retriever.depth": 2, "memory.generic": "true"},
            ),
        )
    )
    return {"anchor": anchor, "mem": mem}


def _strong_memory(lm: HmemLM) -> None:
    """Make the fetched blocks matter: the trained down-projections are still near their zero init."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.model.memory.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _hand_logprob(model, ctx: list[int], cont: list[int], eot: int, **kw) -> tuple[float, bool]:
    """One unpadded sequence: sum log p(cont | ctx), with an isolated EOT prefix when ctx is empty."""
    toks = ([eot] if not ctx else ctx) + cont
    ids = torch.tensor([toks[:-1]])
    doc = torch.tensor([[0] + [1] * (len(toks) - 2)]) if not ctx else None
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, doc_ids=doc, **kw)[0].float(), -1)
    start = len(toks) - 1 - len(cont)
    rows = logp[start:]
    tgt = torch.tensor(cont)
    return float(rows.gather(1, tgt[:, None]).sum()), bool((rows.argmax(-1) == tgt).all())


PAIRS = [
    ("The colour of river 3 is", " red"),
    ("The age of city 12 is ", "nine."),
    ("", "The home"),
    ("The friend of planet 7 is", " Ada"),
    ("x" * 90, " beyond the window"),
]


def test_loglikelihood_equals_hand_computation_and_greedy(trained):
    lm = HmemLM(trained["anchor"], batch_size=2, threads=1)
    got = lm.loglikelihood([_req("loglikelihood", p, doc_id=i) for i, p in enumerate(PAIRS)])
    for (ctx, cont), (lp, greedy) in zip(PAIRS, got):
        c, x = lm._encode_pair(ctx, cont)
        keep = (c + x)[-(lm.max_length + 1) :]  # the window: at most max_length inputs
        c = keep[: len(keep) - len(x)]
        want = _hand_logprob(lm.model, c, x, lm.eot_id, memory_mode="none")
        assert lp == pytest.approx(want[0], abs=1e-4) and greedy == want[1]
        assert lp < 0
    # a continuation that *is* the greedy argmax has is_greedy=True; changing its last token makes it False
    ctx = lm.tok.encode("The colour of river 3 is")
    cont = []
    for _ in range(3):
        with torch.no_grad():
            cont.append(int(lm.model(torch.tensor([ctx + cont]), memory_mode="none")[0, -1].argmax()))
    text = lm.tok.decode(cont)
    if len(text.encode()) == 3:  # byte tokenizer: decodes back to the same bytes
        (_, g1), (_, g2) = lm.loglikelihood(
            [
                _req("loglikelihood", ("The colour of river 3 is", text)),
                _req("loglikelihood", ("The colour of river 3 is", text[:-1] + "\x01")),
            ]
        )
        assert g1 and not g2


def test_loglikelihood_with_memory_uses_the_routed_path(trained):
    lm = HmemLM(trained["mem"], batch_size=3, threads=1)
    _strong_memory(lm)
    router = lm.retrieval.router
    assert isinstance(router, ToyRouter)
    got = lm.loglikelihood([_req("loglikelihood", p, doc_id=i) for i, p in enumerate(PAIRS[:4])])
    for (ctx, cont), (lp, greedy) in zip(PAIRS[:4], got):
        c, x = lm._encode_pair(ctx, cont)
        path = torch.as_tensor(router.route([ctx.strip() or ctx]))
        want = _hand_logprob(lm.model, c, x, lm.eot_id, paths=path)
        assert (lp, greedy) == (pytest.approx(want[0], abs=1e-4), want[1])
        other = _hand_logprob(lm.model, c, x, lm.eot_id, paths=(path + 1) % 16)
        assert abs(other[0] - lp) > 1e-3  # the block matters, so the right one was fetched
    # memory=none is the bare anchor; memory=generic is the generic block
    for mode, kw in (("none", {"memory_mode": "none"}), ("generic", {"memory_mode": "generic"})):
        lm2 = HmemLM(trained["mem"], memory=mode, threads=1)
        lm2.model = lm.model
        ((lp, _),) = lm2.loglikelihood([_req("loglikelihood", PAIRS[0])])
        c, x = lm2._encode_pair(*PAIRS[0])
        assert lp == pytest.approx(_hand_logprob(lm.model, c, x, lm.eot_id, **kw)[0], abs=1e-4)


def test_blocked_mode_avoids_the_best_subtree(trained):
    lm = HmemLM(trained["mem"], memory="blocked", block_level=1, threads=1)
    texts = ["The colour of river 3 is", "The age of island 20 is"]
    blocked = lm.retrieval.paths(texts)
    fetched = lm.retrieval.router.route(texts)
    assert (blocked[:, 0] != fetched[:, 0]).all()  # the best level-1 subtree is never fetched
    assert (blocked[:, 1] // 16 == blocked[:, 0]).all()  # the path descends from the fallback node
    assert lm.retrieval_seconds >= 0 and len(lm.retrieval.cache) == 2


def test_rolling_is_the_sum_over_windows_with_exact_accounting(trained):
    lm = HmemLM(trained["mem"], max_length=16, rolling_context=6, threads=1)
    _strong_memory(lm)
    text = "The colour of river 3 is red. The age of river 3 is nine. The home of river 3 is north."
    tokens = lm.tok.encode(text)
    wins = lm.rolling_windows(text)
    assert [t for _, cont, _, _ in wins for t in cont] == tokens  # every token scored exactly once
    assert all(len(c) + len(x) <= 17 for c, x, _, _ in wins) and len(wins) > 3
    path = torch.as_tensor(lm.retrieval.router.route([text]))  # the full document routes every window
    want = sum(_hand_logprob(lm.model, c, x, lm.eot_id, paths=path)[0] for c, x, _, _ in wins)
    (got,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))])
    assert got == pytest.approx(want, abs=1e-3)


def test_generation_is_greedy_and_stops_at_stop_strings(trained):
    lm = HmemLM(trained["anchor"], batch_size=4, max_gen_tokens=12, threads=1)
    prompts = ["The colour of river 3 is", "The age of", "", "The friend of mountain 14 is"]
    free = lm.generate_until([_req("generate_until", (p, {"until": []})) for p in prompts])
    one_by_one = [lm.generate_until([_req("generate_until", (p, {"until": []}))])[0] for p in prompts]
    assert free == one_by_one  # left-padded batching changes nothing
    for p, g in zip(prompts, free):  # greedy by hand, one unpadded sequence at a time
        prompt = lm.tok.encode(p)
        ids = list(prompt) or [lm.eot_id]
        with torch.no_grad():
            for _ in range(len(g.encode())):
                doc = None if prompt else torch.tensor([[0] + [1] * (len(ids) - 1)])
                ids.append(int(lm.model(torch.tensor([ids]), doc_ids=doc, memory_mode="none")[0, -1].argmax()))
        assert lm.tok.decode(ids[len(prompt) or 1 :]) == g
    g = free[0]
    assert 0 < len(g.encode()) <= 12
    stop = g[2:4]
    (cut,) = lm.generate_until([_req("generate_until", (prompts[0], {"until": [stop]}))])
    assert cut == g[: g.find(stop)] and stop not in cut
    (short,) = lm.generate_until([_req("generate_until", (prompts[0], {"until": [], "max_gen_toks": 3}))])
    assert short == g[:3]


def test_cached_greedy_equals_recomputing_every_step(trained):
    """The KV cache changes nothing: memory rows with their own paths, an empty prompt (EOT prefix), a separate
    context document, rows that stop early, and rows that outgrow max_length (from there every step recomputes)."""
    lm = HmemLM(trained["mem"], batch_size=8, max_length=16, max_gen_tokens=12, threads=1)
    _strong_memory(lm)
    prompts = [lm.tok.encode(p) for p in ["The colour of river 3 is", "The age of", "", "x" * 9, "The home"]]
    kw = [{"until": []}, {"until": []}, {"until": []}, {"until": []}, {"until": [], "max_gen_toks": 2}]
    paths = lm.retrieval.paths(["river 3", "age", "", "x", "home"])
    seps = [0, 3, 0, 4, 0]
    assert any(len(p) + 12 > 16 for p in prompts)  # some rows pass max_length: the fallback runs too
    cached = lm.greedy(prompts, kw, paths, seps)
    lm.kv_cache = False
    assert lm.greedy(prompts, kw, paths, seps) == cached
    n = cached[1]
    assert n[4] <= 2 and any(len(p) + k + 1 > 16 for p, k in zip(prompts, n))  # the cap held; a row passed max_length
    assert len(set(n)) > 1  # rows left the batch at different steps


def test_route_text_rules():
    mc = [_req("loglikelihood", ("Q: what? A:", f" {c}"), "mc", 1) for c in "abcd"]
    wino = [_req("loglikelihood", (f"{who} said the trophy", " did not fit."), "wino", 2) for who in ("Ann", "Bob")]
    lone = [_req("loglikelihood", ("a long passage of text", " word"), "lambada", 3)]
    gen = [_req("generate_until", ("The atomic number of Carbon is", {"until": ["\n"]}), "gen", 4)]
    roll = [_req("loglikelihood_rolling", ("a full held-out document",), "ppl", 5)]
    probe = [
        _req(
            "loglikelihood",
            ("few-shot examples... The symbol of Iron is", " Fe"),
            "p",
            6,
            doc={"route_text": "The symbol of Iron is"},
        )
    ]
    got = route_texts(mc + wino + lone + gen + roll + probe)
    assert got == ["Q: what? A:"] * 4 + ["did not fit."] * 2 + [
        "a long passage of text",
        "The atomic number of Carbon is",
        "a full held-out document",
        "The symbol of Iron is",
    ]


def test_toy_router_matches_training_paths():
    from hmem_lit.data.toy import toy_documents, toy_packed

    rows, paths, tok = toy_packed(60, 64, 0, 16, 2)
    r = ToyRouter(16, 2)
    docs = toy_documents(60, 0)
    want = {tuple(r.path_of(t, e)) for _, t, e in docs}
    assert {tuple(p) for p in paths} == want
    assert [list(p) for p in r.route([d[0] for d in docs])] == [r.path_of(t, e) for _, t, e in docs]


def _fixture_data(root):
    """A data directory in the data helper's format (hmem_lit/data/questions.py)."""
    qs = root / "questions"
    qs.mkdir(parents=True)
    els = [
        ("Hydrogen", 1),
        ("Helium", 2),
        ("Lithium", 3),
        ("Carbon", 6),
        ("Oxygen", 8),
        ("Iron", 26),
        ("Gold", 79),
        ("Neon", 10),
        ("Zinc", 30),
        ("Tin", 50),
        ("Lead", 82),
    ]
    rows = [
        {
            "entity": n,
            "kind": "element",
            "prompt": f"The atomic number of {n} is",
            "answer": str(z),
            "mention_count": 20 - i,
            "bucket": (len(els) - 1 - i) * 5 // len(els),
            "route_text": f"The atomic number of {n} is",
        }
        for i, (n, z) in enumerate(els)
    ]
    mc = [
        {
            **r,
            "prompt": f"The symbol of {r['entity']} is",
            "answer": r["entity"][:2],
            "choices": ["Xx", "Yy", "Zz", r["entity"][:2]],
            "label": 3,
        }
        for r in rows
    ]
    cloze = [
        {
            "entity": f"Doc {i}",
            "kind": "wiki",
            "prompt": f"Text number {i} about word{i} and word{i}",
            "answer": f"word{i}",
            "mention_count": None,
            "bucket": None,
            "route_text": "x",
        }
        for i in range(6)
    ]
    for name, items in (("atomic_number", rows), ("element_symbol", mc), ("wiki_cloze", cloze)):
        (qs / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (root / "heldout").mkdir()
    (root / "heldout" / "wiki_val.jsonl").write_text(json.dumps({"title": "A", "text": "Some held out text."}) + "\n")
    return rows


def test_sk_tasks_and_the_per_bucket_headline_partition_the_entities(tmp_path):
    from hmem_lit.evaluation.scores import headline_from_items

    rows = _fixture_data(tmp_path / "data")
    ts = build_tasks(tmp_path / "data", tmp_path / "tasks")
    assert ts.sk == {"hmem_atomic_number": ("atomic_number", "base"), "hmem_element_symbol": ("element_symbol", "base")}
    assert ts.ck == ["hmem_wiki_cloze", "hmem_wiki_cloze_mc"] and ts.ppl == ["hmem_wiki_ppl"]
    assert {"hmem_atomic_number", "hmem_sk", "hmem_sk_base", "hmem_ck", "hmem_wiki_ppl"} <= set(ts.names)
    items = load_items(str(tmp_path / "data" / "questions" / "atomic_number.jsonl"))["test"]
    assert sorted(items["entity"]) == sorted(r["entity"] for r in rows)
    # per-bucket accuracies come from the item records: every entity in exactly one bucket
    recs = [
        {"task": "hmem_atomic_number", "probe": "atomic_number", "variant": "base", "split": "test",
         "bucket": b, "acc": float(i % 2)}
        for i, b in enumerate(items["bucket"])
    ]  # fmt: skip
    head = headline_from_items(recs)
    per = [head[f"atomic_number/bucket{k}"] * sum(r["bucket"] == k for r in recs) for k in range(5)]
    assert sum(r["bucket"] == k for r in recs for k in range(5)) == len(rows)
    assert sum(per) / len(recs) == pytest.approx(head["atomic_number"]) == pytest.approx(head["hmem_sk"])
    twin = load_items(str(tmp_path / "tasks" / "data" / "wiki_cloze_mc.jsonl"))["test"]
    assert all(c[lab] == a and len(set(c)) == 4 for c, lab, a in zip(twin["choices"], twin["label"], twin["answer"]))


def test_generation_scoring_rules():
    assert is_correct(" 26, the atomic", "26") and not is_correct(" 260", "26") and not is_correct(" none", "26")
    assert is_correct(" Paris, a city", "Paris") and not is_correct(" Parisian", "Paris")
    assert is_correct(" St. John's", "St. John's")


def test_evaluate_end_to_end_writes_results_and_is_idempotent(trained):
    from hmem_lit.evaluation.runner import evaluate

    run = trained["mem"]
    head = evaluate(run, limit=4, memory="fetched", threads=1, print_table=False)
    for k in (
        "hmem_sk",
        "hmem_ck",
        "wiki_ppl",
        "wiki_bpb",
        "toy_colour",
        "toy_friend/bucket0",
        "dev/hmem_sk",
        "n_samples",
        "eval_time_s",
        "retrieval_time_s",
    ):
        assert k in head, k
    assert 0 <= head["hmem_sk"] <= 1 and head["wiki_ppl"] > 1 and head["n_samples"] > 0
    final = runs.read_final(run)
    assert final["eval"]["fetched"] == head and final["status"] == "complete"
    res = json.loads((run / "eval" / "fetched" / "results.json").read_text())
    assert res["settings"]["limit"] == 4 and "hmem_toy_colour" in res["results"]
    assert res["metric_version"] == 2 and "git_sha" in res["code"]
    items = [json.loads(line) for line in (run / "eval" / "fetched" / "items.jsonl").open()]
    assert {r["probe"] for r in items if "probe" in r} == {"toy_colour", "toy_friend"}
    assert all("key" in r for r in items)
    samples = [json.loads(line) for line in (run / "eval" / "fetched" / "samples.jsonl").open()]
    probe = [s for s in samples if s["task"].startswith("hmem_toy_colour")]
    assert probe and all(s["route_text"] == s["doc"]["prompt"] and len(s["path"]) == 2 for s in probe)
    mtime = (run / "eval" / "fetched" / "results.json").stat().st_mtime_ns
    assert evaluate(run, limit=4, memory="fetched", threads=1, print_table=False) == head
    assert (run / "eval" / "fetched" / "results.json").stat().st_mtime_ns == mtime  # a no-op
    blocked = evaluate(run, tasks=["hmem_toy_colour"], limit=2, memory="blocked", threads=1, print_table=False)
    assert set(runs.read_final(run)["eval"]) == {"fetched", "blocked"} and "toy_colour" in blocked
    evaluate(run, tasks=["hmem_toy_colour"], limit=2, memory="blocked", block_level=2, threads=1, print_table=False)
    assert set(runs.read_final(run)["eval"]) == {"fetched", "blocked", "blocked-l2"}  # a level does not replace another
    assert (run / "eval" / "blocked-l2" / "results.json").is_file()


def test_clear_errors(trained, tmp_path):
    from hmem_lit.evaluation.runner import check_paper_datasets, evaluate

    with pytest.raises(ConfigError, match="unknown task.*nope"):
        evaluate(trained["anchor"], tasks=["nope"], print_table=False)
    with pytest.raises(ConfigError, match="model.safetensors"):
        evaluate(tmp_path, print_table=False)
    with pytest.raises(ConfigError, match="memory.generic=true"):
        _generic_mode_without_a_generic_block(trained["mem"])
    with pytest.raises(ConfigError, match="lambada_openai.*HF_DATASETS"):
        check_paper_datasets(["lambada_openai"])
    # a run on prepared data whose data directory is gone
    import shutil

    fake = tmp_path / "fake"
    shutil.copytree(trained["anchor"], fake, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    final = runs.read_final(fake)
    final["config"]["data"].update(source="builtin", dir=str(tmp_path / "missing"))
    (fake / runs.FINAL).write_text(json.dumps(final))
    with pytest.raises(ConfigError, match="hmem data prepare"):
        evaluate(fake, print_table=False)


def test_a_run_is_opened_once_and_reads_its_final_record_once(trained, tmp_path):
    """runs.Run: its config is the one final.json records, its data directory and tokenizer the config's; final.json
    is read on first use and kept (read_final reads it afresh); what is not a complete run is one line each."""
    import shutil

    from hmem_lit.config import to_dict
    from hmem_lit.model import load_model

    src = runs.Run.open(trained["mem"])
    assert to_dict(src.config) == runs.read_final(src.dir)["config"] == to_dict(load_model(src)[0].cfg)
    assert (
        src.data_dir == runs.resolve_data_dir(src.config) and src.tokenizer().vocab_size == src.config.anchor.vocab_size
    )
    copy = tmp_path / "mem"
    shutil.copytree(src.dir, copy, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    run = runs.Run.open(copy)
    first = run.final
    runs.update_final(copy, note={"k": 1})  # another process adds a section
    assert run.final is first and "note" not in run.final
    assert run.read_final()["note"] == {"k": 1} and run.final["note"] == {"k": 1}
    lm = HmemLM(run, memory="none", threads=1)
    assert lm.run is run and lm.run_dir == copy
    (copy / runs.FINAL).unlink()
    with pytest.raises(ConfigError, match=r"no final.json; the run is not complete$"):
        runs.Run.open(copy)
    (copy / runs.WEIGHTS).unlink()
    with pytest.raises(ConfigError, match=r"no model.safetensors; train the run to completion first"):
        runs.Run.open(copy)
    with pytest.raises(ConfigError, match=r"no such run directory$"):
        runs.Run.open(tmp_path / "nothing")


def _generic_mode_without_a_generic_block(run_dir):
    lm = HmemLM(run_dir, memory="none", threads=1)
    lm.cfg.memory.generic, lm.mode = False, "generic"
    lm._resolve_mode()


def test_registered_and_constructible_from_arg_string(trained):
    from lm_eval.api.registry import get_model

    cls = get_model("hmem")
    assert cls is HmemLM
    lm = cls.create_from_arg_string(f"run_dir={trained['anchor']},memory=none,batch_size=4")
    assert lm.mode == "none" and lm.batch_size == 4 and lm.model_mode == "none"


def test_blocked_paths_through_a_kmeans_tree_match_brute_force():
    """Blocking with the real tree router: the best level-1 cluster is skipped, the next-nearest one is used, and
    below it the greedy nearest child (brute force over the centroids)."""
    import numpy as np

    from hmem_lit.evaluation.routing import Retrieval
    from hmem_lit.retriever.kmeans_tree import KMeansTree
    from hmem_lit.retriever.tree import TreeRouter

    rng = np.random.default_rng(0)
    b, d = 4, 8
    cents = [rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b * b, d)).astype(np.float32)]
    tree = KMeansTree(b, 2, cents, [np.ones(b, bool), np.ones(b * b, bool)])
    texts = [f"text {i}" for i in range(20)]
    vecs = {t: rng.normal(size=d).astype(np.float32) for t in texts}

    class Fixed:
        def embed(self, ts):
            return np.stack([vecs[t] for t in ts])

    ret = Retrieval(TreeRouter(tree, Fixed()), mode="blocked", block_level=1)
    got = ret.paths(texts)
    for t, (l1, l2) in zip(texts, got):
        x = vecs[t]
        order = np.argsort(((cents[0] - x) ** 2).sum(1))
        assert l1 == order[1]  # the best-matching top cluster is blocked
        kids = np.arange(l1 * b, (l1 + 1) * b)
        assert l2 == kids[np.argmin(((cents[1][kids] - x) ** 2).sum(1))]
    assert ret.paths(texts[:3]).shape == (3, 2) and ret.calls == 1  # routed once per unique text


def test_task_regeneration_drops_stale_tasks(tmp_path):
    _fixture_data(tmp_path / "data")
    build_tasks(tmp_path / "data", tmp_path / "tasks")
    (tmp_path / "data" / "questions" / "element_symbol.jsonl").unlink()
    ts = build_tasks(tmp_path / "data", tmp_path / "tasks")
    assert sorted(p.stem for p in (tmp_path / "tasks").glob("*.yaml")) == ts.names
    assert "hmem_element_symbol" not in ts.names


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--limit", "0"], ["--limit", "0"]),
        (["--limit", "-3"], ["--limit", "-3"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--memory", "blocked", "--block-level", "9"], ["--memory blocked", "memory.type=none"]),
    ],
    ids=["limit0", "limit-3", "batch0", "blocked-no-memory"],
)
def test_bad_eval_arguments_are_one_line_and_write_nothing(trained, capsys, argv, needles):
    """Issue 19 cases 13, 15: exit 2, one line, and no eval output (not even the generated task files)."""
    from hmem_lit.cli import main

    before = sorted(p for p in trained["anchor"].rglob("*"))
    assert main(["eval", str(trained["anchor"]), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(n in err for n in needles), err
    assert sorted(p for p in trained["anchor"].rglob("*")) == before


def test_block_level_beyond_the_tree_is_refused(trained):
    from hmem_lit.evaluation.runner import evaluate

    with pytest.raises(ConfigError, match="--block-level: must be in 1..2"):
        evaluate(trained["mem"], memory="blocked", block_level=9, print_table=False)


def _eval_outputs(run_dir, mode):
    final = runs.read_final(run_dir)["eval"][mode]
    res = json.loads((run_dir / "eval" / mode / "results.json").read_text())
    samples = (run_dir / "eval" / mode / "samples.jsonl").read_text()
    drop = ("eval_time_s", "retrieval_time_s")
    return (
        {k: v for k, v in final.items() if k not in drop},
        {k: v for k, v in res["headline"].items() if k not in drop},
        samples,
    )


@pytest.mark.parametrize("point", ["eval_samples", pytest.param("eval_final", marks=pytest.mark.slow)])
def test_eval_killed_between_its_writes_is_completed_by_a_rerun(trained, tmp_path, point):
    """Issue 19 case 1: results.json (the marker) is written last, so a kill before it makes the rerun evaluate
    again; the end state equals an uninterrupted evaluation's."""
    import shutil
    import signal
    import subprocess
    import sys

    from .conftest import ROOT

    runs_ = {}
    for name in ("ref", "killed"):
        runs_[name] = tmp_path / name
        shutil.copytree(trained["anchor"], runs_[name], ignore=shutil.ignore_patterns("checkpoints", "eval"))
    cmd = [
        "-m",
        "hmem_lit.cli",
        "eval",
        "--tasks",
        "hmem_toy_colour",
        "--limit",
        "2",
        "--memory",
        "none",
        "--threads",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HMEM_KILL_AT"}
    r = subprocess.run(
        [sys.executable, *cmd[:3], str(runs_["ref"]), *cmd[3:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    killed = [sys.executable, *cmd[:3], str(runs_["killed"]), *cmd[3:]]
    r = subprocess.run(
        killed, cwd=ROOT, env={**env, "HMEM_KILL_AT": point}, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (runs_["killed"] / "eval" / "none" / "results.json").exists()
    r = subprocess.run(killed, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "already evaluated" not in r.stdout, r.stderr[-2000:]
    assert _eval_outputs(runs_["killed"], "none") == _eval_outputs(runs_["ref"], "none")


def test_a_half_finished_evaluation_from_before_the_fix_is_repaired(trained, tmp_path):
    """results.json present (old write order) but final.json lacks the headline: the rerun merges it back."""
    import shutil

    from hmem_lit.evaluation.runner import evaluate

    run = tmp_path / "half"
    shutil.copytree(trained["anchor"], run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    head = evaluate(run, tasks=["hmem_toy_colour"], limit=2, memory="none", threads=1, print_table=False)
    final = runs.read_final(run)
    final.pop("eval")
    (run / runs.FINAL).write_text(json.dumps(final))
    assert evaluate(run, tasks=["hmem_toy_colour"], limit=2, memory="none", threads=1, print_table=False) == head
    assert runs.read_final(run)["eval"]["none"] == head


def test_edit_of_a_run_without_synthetic_people_is_one_line(trained, capsys):
    """hmem edit on a toy-corpus run (no corpus/entities.json): exit 2, one line naming the data source, and
    nothing written (it was a FileNotFoundError traceback)."""
    from hmem_lit.cli import main

    before = sorted(p for p in trained["mem"].rglob("*"))
    assert main(["edit", str(trained["mem"]), "--n", "2", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.source=toy" in err and "data.source=builtin" in err, err
    assert sorted(p for p in trained["mem"].rglob("*")) == before
