"""The retriever contract (retriever/base.py): a fitted retriever defined in one file outside the package, loaded
through $HMEM_PLUGINS, is validated by the config, fitted and saved by `hmem data prepare`, trained on (the
packed paths are its document paths) and loaded back by evaluation to route prompts, with no change to the
package."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from hmem_lit import registry
from hmem_lit.config import ConfigError, load_config
from hmem_lit.registry import RETRIEVERS
from hmem_lit.retriever import Retriever, load_router, retriever_class
from tests.test_bm25_routing import _entity_corpus
from tests.test_byo_eval import files_config

PLUGIN = textwrap.dedent('''
    """A small real retriever: one flat k-means over every leaf (no hierarchy), on the prepared embeddings."""
    import numpy as np
    from hmem_lit.registry import RETRIEVERS
    from hmem_lit.retriever.base import Fitted, Retriever, leaf_to_path
    from hmem_lit.retriever.embedders import load_embedder


    @RETRIEVERS.register("flat_kmeans")
    class FlatKMeans(Retriever):
        type = "flat_kmeans"
        needs_embeddings = True

        def __init__(self, branching, depth, seed, centroids, embedder_dir, data_dir):
            super().__init__(branching, depth, seed)
            self.centroids, self.embedder_dir = centroids, embedder_dir
            self.embedder = load_embedder(data_dir / embedder_dir)

        @classmethod
        def fit(cls, data):
            r = data.cfg.retriever
            x = data.embedding_rows(data.sample)
            n = r.branching**r.depth
            c = x[np.random.default_rng(r.seed).choice(len(x), n, replace=len(x) < n)].copy()
            for _ in range(10):  # Lloyd's iterations on cosine similarity; an empty leaf keeps its centroid
                a = np.argmax(x @ c.T, 1)
                for j in np.unique(a):
                    c[j] = x[a == j].mean(0)
            rt = cls(r.branching, r.depth, r.seed, c.astype(np.float32), data.embeddings, data.root)
            paths = np.concatenate([rt.route_embeddings(e) for _, e in data.embedding_chunks()])
            return Fitted(rt, paths, {"leaves_used": int(len(np.unique(paths[:, -1])))}, rt.save(data.out))

        def save(self, out):
            np.save(out / "flat_centroids.npy", self.centroids)
            return {"embedder_dir": self.embedder_dir}

        @classmethod
        def load(cls, out, meta, data_dir):
            c = np.load(out / "flat_centroids.npy")
            return cls(meta["branching"], meta["depth"], meta["seed"], c, meta["embedder_dir"], data_dir)

        def route_embeddings(self, emb):
            return leaf_to_path(np.argmax(emb @ self.centroids.T, 1), self.branching, self.depth)

        def route(self, texts):
            return self.route_embeddings(self.embedder.embed(list(texts)))
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plug-in file in tmp_path, imported by the registry's $HMEM_PLUGINS loader."""
    (tmp_path / "my_hmem_retriever.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HMEM_PLUGINS", "my_hmem_retriever")
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    assert registry.load_plugins() == ["my_hmem_retriever"]
    yield sys.modules["my_hmem_retriever"]
    RETRIEVERS._items.pop("flat_kmeans", None)
    sys.modules.pop("my_hmem_retriever", None)


def test_shipped_retrievers_follow_the_contract():
    assert {"tree", "random", "oracle"} <= set(RETRIEVERS.names())
    assert all(issubclass(retriever_class(n), Retriever) for n in RETRIEVERS.names())
    needs = {n: RETRIEVERS.capability(n, "needs_embeddings", False) for n in ("tree", "random", "oracle")}
    assert needs == {"tree": True, "random": False, "oracle": False}


def test_plugin_retriever_is_validated(plugin):
    assert "flat_kmeans" in RETRIEVERS.names() and retriever_class("flat_kmeans").needs_embeddings
    assert load_config(None, ["retriever.type=flat_kmeans"]).retriever.type == "flat_kmeans"
    with pytest.raises(ConfigError, match="retriever.type: got 'flat_kmean'.*flat_kmeans"):
        load_config(None, ["retriever.type=flat_kmean"])


def test_plugin_retriever_is_fitted_saved_trained_on_and_routes_evaluation(plugin, tmp_path):
    from hmem_lit.evaluation.adapter import HmemLM
    from hmem_lit.train import train
    from tests.test_eval import _req

    corpus = tmp_path / "corpus.jsonl"
    prompts = _entity_corpus(corpus, n_entities=16)
    cfg = files_config(tmp_path, corpus, "retriever.type=flat_kmeans", "train.max_tokens=4000")
    run = train(cfg)  # prepares the data directory first: the tree stage fits and saves the plug-in
    d = tmp_path / "data"
    meta = json.loads((d / "tree" / "router.json").read_text())
    edir = json.loads((d / "manifest.json").read_text())["stages"]["embeddings"]["info"]["dir"]
    assert meta == {"type": "flat_kmeans", "branching": 4, "depth": 2, "seed": 0, "embedder_dir": edir}
    assert (d / "tree" / "flat_centroids.npy").is_file()
    # the saved retriever, loaded back, gives every document the path the data stage recorded
    router = load_router(d, cfg)
    assert type(router) is plugin.FlatKMeans
    doc_paths = np.load(d / "tree" / "doc_paths.npy")
    emb = np.load(d / edir / "emb.npy")
    np.testing.assert_array_equal(router.route_embeddings(emb), doc_paths)
    assert np.all(doc_paths[:, 0] == doc_paths[:, 1] // 4)  # level-1 nodes are the leaves' parents
    # training read those paths: every packed row's path is one of the documents'
    packed = np.load(d / "packed" / "train_paths.npy")
    assert {tuple(p) for p in packed} <= {tuple(p) for p in doc_paths}
    # evaluation loads the plug-in for the run and routes each prompt with it
    lm = HmemLM(run, memory="fetched", threads=1)
    assert type(lm.retrieval.router) is plugin.FlatKMeans
    texts = [p for _, p in prompts[:4]]
    reqs = [_req("loglikelihood", (t, " City"), doc_id=i, doc={"route_text": t}) for i, t in enumerate(texts)]
    scores = lm.loglikelihood(reqs)
    assert len(scores) == 4 and all(np.isfinite(s) for s, _ in scores)
    logged = [lm.routing_log[("t", i)]["path"] for i in range(4)]
    assert logged == router.route(texts).tolist()
    # a config that asks for another retriever does not silently route with this one
    with pytest.raises(ValueError, match="prepared with retriever"):
        load_router(d, files_config(tmp_path, corpus, "retriever.type=random"))


@pytest.mark.slow  # two subprocesses; the in-process test above covers the contract
def test_plugin_from_env_in_a_fresh_process(tmp_path):
    """`HMEM_PLUGINS=module hmem ...`: the list shows the retriever; `hmem data prepare` fits and saves it."""
    import os
    import subprocess

    from tests.conftest import ROOT, SMALL

    (tmp_path / "my_hmem_retriever.py").write_text(PLUGIN)
    env = {**os.environ, "HMEM_PLUGINS": "my_hmem_retriever", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    cli = [sys.executable, "-m", "hmem_lit.cli"]
    out = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "flat_kmeans" in out.stdout.split("retrievers (retriever.type):")[1].split("\n")[0]
    d = tmp_path / "data"
    run = subprocess.run(
        [*cli, "data", "prepare", *SMALL, f"data.dir={d}", "retriever.type=flat_kmeans"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((d / "tree" / "router.json").read_text())["type"] == "flat_kmeans"
    assert np.load(d / "tree" / "flat_centroids.npy").shape == (16, 64)  # branching**depth leaves, embed_dim
