"""RAG baselines (evaluation/rag.py): retrieval equals a hand-computed BM25 ranking, the nearest document of the
routed leaf, the context prepended as the harness says, the separate-document control scoring exactly as no RAG,
FLOPs per query counted by hand, and `hmem eval --rag` writing its own section."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hmem_lit.config import ConfigError
from hmem_lit.evaluation.rag import RagContext, context_tokens, query_flops
from hmem_lit.retriever.bm25 import BM25Index
from tests.test_bm25_routing import _entity_corpus
from tests.test_byo_eval import files_config
from tests.test_eval import _req

DOCS = [
    "Osmium has the atomic number 76 and is a dense metal.",
    "The atomic number of iron is 26.",
    "Osmium osmium osmium: the densest element, found in platinum ores.",
    "A river flows through the town of Bern in Switzerland.",
    "Iron ore is mined in many places; iron rusts in water.",
    "The capital of Switzerland is Bern.",
]


def _hand_bm25(docs: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 by hand: lower-case words, sklearn's English stop words dropped, binary query terms."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    def words(t: str) -> list[str]:
        return [w for w in re.findall(r"\b\w+\b", t.lower()) if w not in ENGLISH_STOP_WORDS]

    tfs = [Counter(words(d)) for d in docs]
    n, avg = len(docs), sum(sum(c.values()) for c in tfs) / len(docs)
    out = []
    for tf in tfs:
        dl, s = sum(tf.values()), 0.0
        for w in set(words(query)):
            df = sum(w in c for c in tfs)
            if tf[w]:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * dl / avg))
        out.append(s)
    return out


@pytest.mark.parametrize("query", ["atomic number of osmium", "iron", "capital Switzerland Bern", "densest ores"])
def test_bm25_contexts_equal_a_hand_computed_ranking(query):
    train = np.array([0, 1, 2, 4, 5, 7])  # training documents' ids in a corpus with held-out ones between
    rag = RagContext("bm25", 3, [""] * 8, train, index=BM25Index.fit(DOCS, max_df=1.0))
    hand = _hand_bm25(DOCS, query)
    want = [int(train[i]) for i in sorted(range(len(DOCS)), key=lambda i: (-hand[i], i)) if hand[i] > 0][:3]
    (got,) = rag.documents([query])
    assert got == want[::-1]  # best document last, next to the prompt
    assert len(got) >= 1


def test_the_hand_ranking_is_the_obvious_one():
    hand = _hand_bm25(DOCS, "osmium")
    assert np.argmax(hand) == 2 and hand[0] > 0 and hand[1] == 0  # three mentions beat one; no mention scores 0


def test_cluster_rag_takes_the_nearest_documents_of_the_routed_leaf():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    train = np.arange(10)
    leaf_of = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 2])
    q = emb[[3]] + 0.01  # near document 3 (leaf 1)

    class Router:
        def embed(self, texts):
            return np.repeat(q, len(texts), 0)

        def route(self, texts):
            return np.array([[0, 0]] * len(texts))  # routed to leaf 0, where document 3 is not

    rag = RagContext("cluster", 2, [""] * 10, train, router=Router(), emb=emb, leaf_of=leaf_of)
    (got,) = rag.documents(["x"])
    members = np.nonzero(leaf_of == 0)[0]
    best = members[np.argsort(-(emb[members] @ q[0]))][:2]
    assert got == [int(i) for i in best][::-1] and all(leaf_of[i] == 0 for i in got)


def test_context_is_cut_from_the_far_end_and_flops_are_counted_by_hand():
    assert context_tokens([[1, 2, 3], [4, 5]], 0, 100) == [1, 2, 3, 0, 4, 5, 0]
    assert context_tokens([[1, 2, 3], [4, 5]], 0, 4) == [3, 0, 4, 5, 0][-4:]  # the best (last) document kept whole
    assert context_tokens([[1, 2]], 0, 0) == []
    P, L, d = 1000, 2, 8
    assert query_flops(3, P, L, d) == 2 * P * 3 + 4 * L * d * (1 + 2 + 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hmem_lit.train import train

    tmp = tmp_path_factory.mktemp("rag")
    corpus = tmp / "corpus.jsonl"
    prompts = _entity_corpus(corpus, n_entities=24)
    cfg = files_config(tmp, corpus, "train.max_tokens=6000")
    return {"run": train(cfg), "prompts": prompts}


def _probe_task(run) -> Path:
    """A user's generation probe (as tests/test_byo_eval.py writes one) over the corpus's prompts."""
    d = run["run"].parent / "my_tasks"
    d.mkdir(exist_ok=True)
    items = d / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"prompt": p, "answer": "City", "route_text": p}) + "\n" for _, p in run["prompts"])
    )
    (d / "my_probe.yaml").write_text(
        f"task: my_probe\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {items}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: prompt\ndoc_to_target: answer\n"
        'generation_kwargs: {until: ["."], do_sample: false, max_gen_toks: 4}\n'
        "metric_list:\n  - metric: exact_match\nmetadata: {version: 1.0}\n"
    )
    return d


def _lm(run_dir, **kw):
    from hmem_lit.evaluation.adapter import HmemLM

    return HmemLM(run_dir, threads=1, batch_size=4, **kw)


def test_separate_context_scores_exactly_as_no_rag_and_causal_context_is_read(run):
    prompts = [p for _, p in run["prompts"][:6]]
    ll = [_req("loglikelihood", (p, " City3"), doc_id=i) for i, p in enumerate(prompts)]
    gen = [_req("generate_until", (p, {"until": ["."], "max_gen_toks": 4}), doc_id=i) for i, p in enumerate(prompts)]
    plain, sep, causal = _lm(run["run"]), _lm(run["run"], rag="bm25", rag_k=2, rag_join="separate"), None
    causal = _lm(run["run"], rag="bm25", rag_k=2)
    base = [s for s, _ in plain.loglikelihood(ll)]
    assert [s for s, _ in sep.loglikelihood(ll)] == pytest.approx(base, abs=1e-4)
    assert sep.generate_until(gen) == plain.generate_until(gen)
    read = [s for s, _ in causal.loglikelihood(ll)]
    assert max(abs(a - b) for a, b in zip(read, base)) > 1e-3  # the prompt attends to the context
    # the context is the retrieved documents' tokens, each + EOT, best last, then the prompt
    ids = causal.rag.documents(prompts[:1])[0]
    want = [t for i in ids for t in (*causal.tok.encode(causal.rag.texts[i]), causal.eot_id)]
    (got,) = causal._contexts(ll[:1], [0])
    assert got == want[-causal.max_length :] and len(ids) == 2
    rec = causal.routing_log[("t", 0)]
    assert rec["rag_docs"] == ids and rec["tokens_read"] > plain.routing_log[("t", 0)]["tokens_read"]
    assert rec["flops"] > plain.routing_log[("t", 0)]["flops"]


def test_causal_context_equals_scoring_the_concatenation_by_hand(run):
    lm = _lm(run["run"], memory="none", rag="dense", rag_k=1)
    prompt = run["prompts"][0][1]
    req = _req("loglikelihood", (prompt, " City0"))
    (ctx,) = lm._contexts([req], [0])
    ctx_ids, cont = lm._encode_pair(prompt, " City0")
    ids = torch.tensor([ctx + ctx_ids + cont[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(ids, memory_mode="none")[0].float(), -1)
    n = len(cont)
    want = float(logp[-n:].gather(1, torch.tensor(cont)[:, None]).sum())
    ((got, _),) = lm.loglikelihood([req])
    assert got == pytest.approx(want, abs=1e-4)


def test_eval_with_rag_writes_its_own_section_with_costs(run):
    from hmem_lit import runs
    from hmem_lit.evaluation.runner import evaluate

    tasks, inc = ["my_probe"], [str(_probe_task(run))]
    kw = dict(tasks=tasks, memory="none", limit=8, print_table=False, threads=1, include_path=inc)
    plain = evaluate(run["run"], **kw)
    head = evaluate(run["run"], **kw, rag="bm25", rag_k=2)
    assert (run["run"] / "eval" / "none-rag-bm25-k2-my_probe" / "results.json").is_file()
    assert runs.read_final(run["run"])["eval"]["none-rag-bm25-k2-my_probe"]["rag_tokens"] == head["rag_tokens"] > 0
    assert head["flops_per_query"] > plain["flops_per_query"] > 0
    assert head["tokens_per_query"] - plain["tokens_per_query"] == pytest.approx(head["rag_tokens"], rel=0.05)
    with pytest.raises(ConfigError, match="--rag nope"):
        evaluate(run["run"], tasks=tasks, memory="none", rag="nope")
    with pytest.raises(ConfigError, match="--rag-k"):
        evaluate(run["run"], tasks=tasks, memory="none", rag="bm25", rag_k=0)


def test_inline_context_is_one_document_with_the_prompt(run):
    lm = _lm(run["run"], memory="none", rag="bm25", rag_k=3, rag_join="inline")
    prompt = run["prompts"][1][1]
    req = _req("loglikelihood", (prompt, " City1"))
    ids = lm.rag.documents([prompt])[0]
    texts = [lm.rag.texts[i] for i in ids]  # best last, right before the prompt
    room = lm.max_length - sum(map(len, lm._encode_pair(prompt, " City1"))) - 2
    while len(lm.tok.encode(" ".join(texts))) > room:  # the farthest documents give way to fit the row
        texts.pop(0)
    assert texts and len(texts) < len(ids)  # 64-token rows: the cut is exercised
    text = " ".join(texts)
    ctx, cont = lm._encode_pair(text + " " + prompt, " City1")
    assert lm.eot_id not in ctx
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ctx + cont[:-1]]), memory_mode="none")[0].float(), -1)
    want = float(logp[-len(cont) :].gather(1, torch.tensor(cont)[:, None]).sum())
    ((got, _),) = lm.loglikelihood([req])
    assert got == pytest.approx(want, abs=1e-4)
    assert lm.routing_log[("t", 0)]["rag_tokens"] == len(lm.tok.encode(text))
    (gen,) = lm.generate_until([_req("generate_until", (prompt, {"until": ["."], "max_gen_toks": 3}), doc_id=5)])
    assert isinstance(gen, str) and lm.routing_log[("t", 5)]["rag_docs"] == ids
