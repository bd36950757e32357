"""Post-hoc memory on Hugging Face causal LMs (anchor.preset=hf): Llama, Qwen2 and Gemma3 text, tiny random weights.

Invariants: zero-initialised memory leaves the HF model's logits bit-identical and the hooks leave nothing behind;
FFN memory is exactly extra hidden units of the layer's FFN and LoRA memory exactly a merged low-rank weight;
packed rows are document-causal (= each document alone, also through Gemma3's sliding window); frozen training
through `hmem train` moves only the memory; final weights, the Lightning checkpoint and a save_pretrained
directory (anchor.hf_path) reload to identical logits; the lm-eval `hmem` model scores an HF-anchored run as a
hand computation does. Nothing touches the network: every model is built from a config or a temporary directory.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile

os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf_datasets_"))

import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hmem_lit import runs  # noqa: E402
from hmem_lit.config import ConfigError, load_config  # noqa: E402
from hmem_lit.data.toy import ByteTokenizer  # noqa: E402
from hmem_lit.hf_anchor import HFAnchor, family_config  # noqa: E402
from hmem_lit.model import (  # noqa: E402
    MemoryLM,
    info,
    load_model,  # noqa: E402
)

from .conftest import DEBUG_YAML, tiny_overrides  # noqa: E402

FAMILIES = ["llama", "qwen2", "gemma3"]
VOCAB = ByteTokenizer.vocab_size
# 3 layers, grouped-query attention (4 query heads, 2 key/value heads); qwen2 needs n_head * head_dim == d_model
SIZES = [
    "anchor.n_layer=3",
    "anchor.d_model=32",
    "anchor.n_head=4",
    "anchor.n_kv_head=2",
    "anchor.head_dim=8",
    "anchor.d_ff=64",
    "anchor.max_seq_len=512",
]
TYPE_OVERRIDES = {
    "pkm": ["memory.pkm.mode=add", "memory.pkm.n_keys=8", "memory.pkm.topk=4", "memory.pkm.k_dim=16"],
    "lora": ["memory.lora.target=ffn"],
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is many times faster than oversubscribing shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hf_cfg(family: str, mtype: str = "ffn", *extra: str):
    return load_config(
        None,
        [
            "anchor.preset=hf",
            f"anchor.hf_family={family}",
            *SIZES,
            f"memory.type={mtype}",
            "memory.levels=[4,2]",
            "retriever.depth=2",
            "retriever.branching=4",
            "train.mode=frozen",
            *TYPE_OVERRIDES.get(mtype, []),
            *extra,
        ],
    )


def build(cfg, seed: int = 0) -> MemoryLM:
    torch.manual_seed(seed)
    return MemoryLM(cfg, VOCAB).eval()


def randomize_memory(model: MemoryLM, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.memory.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def inputs(b: int = 2, t: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(VOCAB, (b, t), generator=g), torch.tensor([[0, 1], [2, 9]])[:b]


def hook_count(hf: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("mtype", ["ffn", "lora", "kv", "pkm"])
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_init_memory_is_the_bare_hf_model(family, mtype):
    model = build(hf_cfg(family, mtype))
    hf = model.anchor.hf
    x, paths = inputs()
    doc = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    with torch.no_grad():
        ref = hf(input_ids=x).logits  # the raw transformers model, no wrapper
        ref_doc = hf(
            input_ids=x, position_ids=torch.tensor([list(range(5)) + list(range(7)), list(range(12))]), use_cache=False
        ).logits
        assert torch.equal(model(x, paths=paths), ref)  # exact: zero-initialised memory adds exact zeros
        assert torch.equal(model(x, paths=paths, memory_mode="none"), ref)
        assert torch.equal(model(x, doc_ids=doc, paths=paths), ref_doc)
        assert hook_count(hf) == 0  # hooks live only during a forward with memory
        randomize_memory(model)
        assert not torch.allclose(model(x, paths=paths), ref, atol=1e-3)  # ... and they do reach the model
        assert torch.equal(model(x, paths=paths, memory_mode="none"), ref)
    assert hook_count(hf) == 0
    c = model.param_counts()
    assert c["anchor"] == sum(p.numel() for p in hf.parameters()) and c["fetched"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_are_document_causal(family):
    """A row of packed documents (doc_ids) gives each document's logits as if it were alone, memory on; for Gemma3
    also through sliding-window layers whose window (3) is shorter than the documents."""
    model = build(hf_cfg(family, "ffn"))
    if family == "gemma3":
        model.anchor = HFAnchor(
            model.cfg.anchor,
            family_config(
                model.cfg.anchor,
                sliding_window=3,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            ),
        )
        model.eval()
    randomize_memory(model)
    lens = [5, 7, 1, 6]
    x = torch.randint(VOCAB, (1, sum(lens)), generator=torch.Generator().manual_seed(3))
    doc = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))[None]
    paths = torch.tensor([[1, 5]])
    with torch.no_grad():
        packed = model(x, doc_ids=doc, paths=paths)
        alone = torch.cat([model(part, paths=paths) for part in x.split(lens, dim=1)], dim=1)
        plain = model(x, paths=paths)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)  # not bitwise: other matmul shapes
    assert (plain - alone).abs().max() > 1e-2  # without doc_ids the documents do see each other


def _fetched_units(model: MemoryLM, paths: torch.Tensor) -> list[torch.Tensor]:
    return list(model.memory.fetch(paths).units)  # per memory layer (B, R, c)


@pytest.mark.parametrize("family", FAMILIES)
def test_ffn_memory_is_extra_hidden_units_of_the_ffn(family):
    """Appending the fetched units to gate/up rows and down columns of a copy of the HF model gives the same
    logits: the memory's units are the layer's own kind of hidden unit (SiLU, or GELU-tanh in Gemma3)."""
    model = build(hf_cfg(family, "ffn"))
    randomize_memory(model)
    x, paths = inputs(b=1)
    merged = copy.deepcopy(model.anchor.hf)
    d = model.cfg.anchor.d_model
    with torch.no_grad():
        for layer, w in zip(model.memory.layers, _fetched_units(model, paths)):
            gate, up, down = w[0].split(d, dim=-1)  # each (R, d)
            mlp = merged.model.layers[layer].mlp
            for name, extra in (("gate_proj", gate), ("up_proj", up)):
                lin = getattr(mlp, name)
                setattr(mlp, name, _linear(torch.cat([lin.weight, extra], 0)))
            mlp.down_proj = _linear(torch.cat([mlp.down_proj.weight, down.T], 1))
        torch.testing.assert_close(model(x, paths=paths), merged(input_ids=x).logits, atol=1e-5, rtol=1e-5)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight.data.copy_(weight)
    if bias is not None:
        lin.bias.data.copy_(bias)
    return lin


@pytest.mark.parametrize("target", ["qk", "vo", "ffn"])
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_memory_is_a_merged_low_rank_weight(family, target):
    """W + scale * B^T A in a copy of the HF model reproduces LoRA memory on q/k (before Gemma3's q/k-norm),
    v/o (k/v narrower under grouped-query attention) and gate/up/down; Qwen2's q/k/v biases stay as they are."""
    model = build(hf_cfg(family, "lora", f"memory.lora.target={target}"))
    randomize_memory(model, std=0.2)
    x, paths = inputs(b=1)
    merged = copy.deepcopy(model.anchor.hf)
    names = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    }
    with torch.no_grad():
        for layer, w in zip(model.memory.layers, _fetched_units(model, paths)):
            for name, (off, d_in, d_out) in model.memory.cols.items():
                a, b = w[0, :, off : off + d_in], w[0, :, off + d_in : off + d_in + d_out]  # (R, d_in), (R, d_out)
                lin = merged.model.layers[layer].get_submodule(names[name])
                lin.weight += model.memory.scale * b.T @ a
        torch.testing.assert_close(model(x, paths=paths), merged(input_ids=x).logits, atol=1e-5, rtol=1e-5)


def test_kv_memory_adds_an_unmasked_attention_before_o_proj():
    """One layer's KV memory = o_proj applied to (attention output + softmax(q K^T / sqrt(hd)) V), with q taken
    after q_norm (Gemma3) and before RoPE: checked against a hand computation on the captured attention input."""
    model = build(hf_cfg("gemma3", "kv", "memory.layers=[1]"))
    randomize_memory(model)
    x, paths = inputs(b=1)
    attn = model.anchor.hf.model.layers[1].self_attn
    seen = {}
    h1 = attn.q_norm.register_forward_hook(lambda m, a, o: seen.setdefault("q", o.detach().clone()))
    h2 = attn.o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("y", a[0].detach().clone()))
    with torch.no_grad():
        model(x, paths=paths, memory_mode="none")  # the bare attention output at layer 1 and its queries
    h1.remove(), h2.remove()
    k, v = model.memory.fetch(paths).attn_kv(1)  # (1, H, R, hd)
    q = seen["q"]  # (1, H, T, hd)
    mem = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
    want_in = seen["y"] + mem.transpose(1, 2).reshape(seen["y"].shape)
    got = {}
    h3 = attn.o_proj.register_forward_hook(lambda m, a, o: got.setdefault("in", a[0].detach().clone()))
    with torch.no_grad():
        model(x, paths=paths)
    h3.remove()
    torch.testing.assert_close(got["in"], want_in, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["anchor.preset=hf"], "anchor.hf_path"),  # neither path nor family
        (["anchor.preset=hf", "anchor.hf_family=gpt2"], "anchor.hf_family"),
        (["anchor.preset=hf", "anchor.hf_path=/nonexistent/model"], "anchor.hf_path"),
        (["anchor.preset=hf", "anchor.hf_family=llama", "anchor.hf_path=/x"], "anchor.hf_path"),
        (["anchor.hf_family=llama"], "anchor.hf_family"),  # needs preset=hf
        (["anchor.n_kv_head=2"], "anchor.n_kv_head"),  # the built-in anchor has no GQA
        (["anchor.preset=hf", "anchor.hf_family=llama", "anchor.n_head=4", "anchor.n_kv_head=3"], "anchor.n_kv_head"),
        (["anchor.preset=hf", "anchor.hf_family=qwen2", "anchor.d_model=64", "anchor.head_dim=8"], "anchor.head_dim"),
        (["anchor.preset=hf", "anchor.hf_family=llama", "anchor.hf_attn=flash"], "anchor.hf_attn"),
        (["train.mode=frozen", "memory.type=ffn", "memory.levels=[4]"], "train.init_from"),  # built-in still needs it
    ],
)
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg


def test_experiment_200_is_a_frozen_hf_memory_run():
    from .conftest import ROOT

    cfg = load_config(ROOT / "experiments" / "200_hf_posthoc_tiny.yaml")
    assert (cfg.anchor.preset, cfg.anchor.hf_family, cfg.memory.type, cfg.train.mode) == (
        "hf",
        "llama",
        "ffn",
        "frozen",
    )
    assert cfg.anchor.n_kv_head < cfg.anchor.n_head  # grouped-query attention, as in the real models


def test_frozen_hf_needs_no_init_from_and_info_counts_on_meta():
    cfg = hf_cfg("llama", "ffn")
    assert cfg.train.mode == "frozen" and cfg.train.init_from is None
    text = info(cfg)  # meta device: no weights allocated
    assert "anchor  hf:" in text and "fetched" in text
    # FFN-memory accounting with the HF model's sizes: c0 = 3 * layers * d
    assert f"c0 = {3 * 3 * 32:,} per unit" in text


# The post-hoc models of ../shared/PAPERS.md A6 as family shapes: (layers, d, heads, kv heads, head_dim, d_ff,
# vocab) and their published parameter counts (all three tie input and output embeddings)
PAPER_MODELS = {
    "llama": ((16, 2048, 32, 8, 64, 8192, 128256), 1_235_814_400),  # Llama-3.2-1B
    "qwen2": ((24, 896, 14, 2, 64, 4864, 151936), 494_032_768),  # Qwen2.5-0.5B
    "gemma3": ((18, 640, 4, 1, 256, 2048, 262144), 268_098_176),
}  # Gemma-3-270M


@pytest.mark.parametrize("family", FAMILIES)
def test_family_shapes_count_the_paper_models_exactly(family):
    (L, d, h, kv, hd, f, v), want = PAPER_MODELS[family]
    cfg = load_config(
        None,
        [
            "anchor.preset=hf",
            f"anchor.hf_family={family}",
            f"anchor.n_layer={L}",
            f"anchor.d_model={d}",
            f"anchor.n_head={h}",
            f"anchor.n_kv_head={kv}",
            f"anchor.head_dim={hd}",
            f"anchor.d_ff={f}",
            f"anchor.vocab_size={v}",
            "memory.type=ffn",
            "memory.levels=[256,64]",
            "retriever.depth=2",
        ],
    )
    with torch.device("meta"):
        model = MemoryLM(cfg)
    c = model.param_counts()
    assert c["anchor"] == want
    assert c["fetched"] == 3 * L * d * (256 + 64)  # FFN-memories: c0 = 3 * layers * d per unit


def test_llama3_style_tokenizer_pads_inside_its_vocabulary():
    """A tokenizer whose every id has an embedding row (Llama 3) must not grow a pad token: it has its own."""
    from tokenizers import Tokenizer, models

    from hmem_lit.data.tokenizer import BPETokenizer

    tok = Tokenizer(models.BPE())
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"])
    n = tok.get_vocab_size(with_added_tokens=True)
    bpe = BPETokenizer(tok)
    assert bpe.vocab_size == n and bpe.pad_id == tok.token_to_id("<|finetune_right_pad_id|>")
    assert bpe.eot_id == tok.token_to_id("<|end_of_text|>")


# ------------------------------------------------------------------------------------------------ hf_path


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_path_loads_a_local_directory_like_the_model_itself(family, tmp_path):
    """save_pretrained (safetensors) -> anchor.hf_path: the sizes come from config.json (not the anchor keys),
    logits equal the saved model's, and the tokenizer may be smaller than the model's vocabulary."""
    src_cfg = hf_cfg(family, "none", "train.mode=anchor", "anchor.n_layer=2", "anchor.d_ff=48")
    torch.manual_seed(5)
    src = HFAnchor(dataclasses.replace(src_cfg.anchor, vocab_size=VOCAB + 6)).hf.eval()
    src.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    cfg = load_config(
        None,
        [
            "anchor.preset=hf",
            f"anchor.hf_path={tmp_path / 'model'}",
            "memory.type=ffn",
            "memory.levels=[4,2]",
            "retriever.depth=2",
            "retriever.branching=4",
            "train.mode=frozen",
        ],
    )
    assert (cfg.anchor.n_layer, cfg.anchor.d_ff, cfg.anchor.n_kv_head) == (2, 48, 2)  # from config.json
    assert f"c0 = {3 * 2 * 32:,} per unit" in info(cfg)  # accounting on the meta device reads config.json only
    model = MemoryLM(cfg, VOCAB).eval()  # the tokenizer's vocabulary (258) < the model's (264)
    assert model.cfg.anchor.vocab_size == VOCAB + 6
    assert model.cfg.anchor.ffn_act == ("gelu_tanh" if family == "gemma3" else "silu")
    x, paths = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, paths=paths), src(input_ids=x).logits)
    for k, v in src.state_dict().items():
        assert torch.equal(model.anchor.hf.state_dict()[k], v)
    with pytest.raises(ConfigError, match="anchor.hf_path"):
        MemoryLM(cfg, VOCAB + 100)  # a tokenizer larger than the model's embedding table


# ------------------------------------------------------------------------------------------------ training


class Snapshot(Callback):
    """Keeps the model's state when training starts, and the trained module itself."""

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        self.module = pl_module


def _train(tmp_path, family: str, mode: str = "frozen", name: str = "run", **extra):
    from hmem_lit.train import train

    snap = Snapshot()
    ov = {
        "anchor.preset": "hf",
        "anchor.hf_family": family,
        "memory.type": "ffn",
        "memory.levels": "[4,4]",
        "retriever.depth": 2,
        "train.mode": mode,
        "train.max_tokens": 3_000,
        "train.val_every": 0,
        "train.ckpt_every": 0,
        "train.val_batches": 2,
        "data.seq_len": 32,
        "data.toy_docs": 120,
        "optim.memory_lr": 1e-2,
        "optim.warmup": 0,
        "name": name,
        **extra,
    }
    cfg = load_config(DEBUG_YAML, tiny_overrides(tmp_path / "runs", **ov) + SIZES)
    return train(cfg, extra_callbacks=[snap]), snap


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_training_moves_only_the_memory_and_reloads_exactly(family, tmp_path):
    run_dir, snap = _train(tmp_path, family)
    assert runs.is_complete(run_dir)
    final = runs.read_json(run_dir / runs.FINAL)
    assert final["steps"] >= 3
    state = load_file(str(run_dir / runs.WEIGHTS))
    anchor_keys = [k for k in snap.start if k.startswith("anchor.")]
    assert anchor_keys and all(torch.equal(state[k], snap.start[k]) for k in anchor_keys)  # every HF weight
    mem_keys = [k for k in snap.start if k.startswith("memory.")]
    assert any(not torch.equal(state[k], snap.start[k]) for k in mem_keys)  # and the memory did learn
    # final weights and the Lightning checkpoint reload to the trained module's logits, bit for bit
    model, cfg = load_model(run_dir)
    assert cfg.anchor.preset == "hf" and cfg.anchor.hf_family == family
    ckpt = torch.load(run_dir / runs.LAST_CKPT, map_location="cpu", weights_only=True)
    from_ckpt = MemoryLM(cfg, VOCAB)
    from_ckpt.load_state_dict({k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}, strict=True)
    trained = snap.module.model.eval()
    x, _ = inputs()
    paths = torch.tensor([[0, 3], [1, 17]])
    with torch.no_grad():
        want = trained(x, paths=paths)
        assert torch.equal(model(x, paths=paths), want)
        assert torch.equal(from_ckpt.eval()(x, paths=paths), want)
        assert not torch.equal(want, trained(x, paths=paths, memory_mode="none"))


def test_cotrain_moves_the_hf_weights_too(tmp_path):
    run_dir, snap = _train(tmp_path, "qwen2", mode="cotrain")
    state = load_file(str(run_dir / runs.WEIGHTS))
    changed = [k for k in snap.start if k.startswith("anchor.") and not torch.equal(state[k], snap.start[k])]
    assert any("q_proj.bias" in k for k in changed) and any("embed_tokens" in k for k in changed)


def test_frozen_memory_on_a_local_directory_trains_and_evaluates(tmp_path):
    """The full path on a save_pretrained directory: `hmem train` (frozen, no init_from), then the lm-eval `hmem`
    model on the run, whose log-likelihoods equal a hand computation with the routed path."""
    from hmem_lit.evaluation.adapter import HmemLM
    from hmem_lit.evaluation.routing import ToyRouter

    acfg = hf_cfg("llama", "none", "train.mode=anchor").anchor
    torch.manual_seed(11)
    HFAnchor(dataclasses.replace(acfg, vocab_size=VOCAB)).hf.save_pretrained(tmp_path / "llama")
    run_dir, snap = _train(
        tmp_path, "llama", name="local", **{"anchor.hf_family": "null", "anchor.hf_path": str(tmp_path / "llama")}
    )
    src = HFAnchor(load_config(None, ["anchor.preset=hf", f"anchor.hf_path={tmp_path / 'llama'}"]).anchor).hf
    assert all(
        torch.equal(snap.start[f"anchor.hf.{k}"], v)
        for k, v in src.state_dict().items()
        if f"anchor.hf.{k}" in snap.start
    )  # training started from the directory's weights
    lm = HmemLM(run_dir, batch_size=2, threads=1)
    assert isinstance(lm.retrieval.router, ToyRouter)
    with torch.no_grad():  # make the fetched block matter (the trained down-projections are still tiny)
        randomize_memory(lm.model)
    from lm_eval.api.instance import Instance

    pairs = [("The colour of river 3 is", " red"), ("The friend of planet 7 is", " Ada")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, 0, ("t", i, 1)) for i, p in enumerate(pairs)])
    for (ctx, cont), (lp, _) in zip(pairs, got):
        c, x = lm._encode_pair(ctx, cont)
        path = torch.as_tensor(lm.retrieval.router.route([ctx]))
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(torch.tensor([(c + x)[:-1]]), paths=path)[0].float(), -1)
        want = float(logp[len(c) - 1 :].gather(1, torch.tensor(x)[:, None]).sum())
        assert lp == pytest.approx(want, abs=1e-4)
        with torch.no_grad():
            other = torch.log_softmax(lm.model(torch.tensor([(c + x)[:-1]]), paths=(path + 1) % 16)[0].float(), -1)
        assert abs(float(other[len(c) - 1 :].gather(1, torch.tensor(x)[:, None]).sum()) - lp) > 1e-3
