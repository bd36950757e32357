"""`hmem export RUN --format hf`: the exported directory loads with transformers' standard architecture and gives
the run's own logits (anchor runs with and without qk-norm; FFN and KV memory runs with the fetched path fixed,
through `hmem_lit.hf_export.load`), offline; bad requests are one line."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from hmem_lit.config import ConfigError, load_config  # noqa: E402
from hmem_lit.hf_export import export, load  # noqa: E402
from hmem_lit.model import load_model  # noqa: E402
from hmem_lit.train import train  # noqa: E402

from .conftest import DEBUG_YAML, tiny_overrides  # noqa: E402


def _run(tmp_path, name, *extra):
    cfg = load_config(DEBUG_YAML, [*tiny_overrides(tmp_path, name=name, **{"train.max_tokens": 6000}), *extra])
    return train(cfg)


def _perturb_memory(run_dir):
    """A few training steps leave memory tiny: make it matter, so the check is not 'zero == zero'."""
    from safetensors.torch import load_file, save_file

    p = run_dir / "model.safetensors"
    s = load_file(str(p))
    g = torch.Generator().manual_seed(0)
    for k in s:
        if k.startswith("memory."):
            s[k] = s[k] + 0.2 * torch.randn(s[k].shape, generator=g)
    save_file(s, str(p))


@pytest.mark.parametrize("qk_norm,arch", [(True, "OlmoeForCausalLM"), (False, "LlamaForCausalLM")])
def test_anchor_export_gives_equal_logits(tmp_path, qk_norm, arch):
    run_dir = _run(tmp_path, f"a{int(qk_norm)}", f"anchor.qk_norm={str(qk_norm).lower()}")
    out = export(run_dir, tmp_path / "hf")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    # the run's own special ids (toy bytes: EOT 256, PAD 257), not the architecture's defaults; no BOS
    assert (hf.config.eos_token_id, hf.config.pad_token_id, hf.config.bos_token_id) == (256, 257, None)
    assert hf.generation_config.eos_token_id == 256
    ours, _ = load_model(run_dir)
    x = torch.randint(0, ours.cfg.anchor.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), hf(input_ids=x).logits
    print(f"max|logit diff| {(a - b).abs().max().item():.3g}")
    assert (a - b).abs().max().item() < 1e-4, (a - b).abs().max().item()


@pytest.mark.slow  # export is not on the default path; the anchor round trip stays in the default tests
@pytest.mark.parametrize("mtype,levels", [("ffn", "[2,4]"), ("kv", "[2,4]")])
def test_memory_export_with_fixed_paths_gives_equal_logits(tmp_path, mtype, levels):
    run_dir = _run(tmp_path, mtype, f"memory.type={mtype}", f"memory.levels={levels}", "retriever.depth=2")
    _perturb_memory(run_dir)
    m = load(export(run_dir, tmp_path / "hf"))
    ours, cfg = load_model(run_dir)
    x = torch.randint(0, cfg.anchor.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    paths = torch.tensor([[1, 1 * cfg.retriever.branching + 3], [5, 5 * cfg.retriever.branching]])
    with torch.no_grad():
        a = ours(x, paths=paths)
        bare = ours(x, memory_mode="none")
        with m.fetched(paths) as hf:
            b = hf(input_ids=x).logits
        c = m.hf(input_ids=x).logits  # hooks detached after the block
    assert (a - bare).abs().max().item() > 1e-2  # the memory changes the logits
    print(f"max|logit diff| {(a - b).abs().max().item():.3g}")
    assert (a - b).abs().max().item() < 1e-4, (a - b).abs().max().item()
    assert (bare - c).abs().max().item() < 1e-4


def test_export_refuses_bad_requests(tmp_path):
    run_dir = _run(tmp_path, "ln", "anchor.norm=layernorm")
    with pytest.raises(ConfigError, match="anchor.norm=layernorm: no standard transformers architecture"):
        export(run_dir, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
    with pytest.raises(ConfigError, match="not a complete run"):
        export(tmp_path / "nope", tmp_path / "y")
    with pytest.raises(ConfigError, match="not an hmem export"):
        load(tmp_path)
