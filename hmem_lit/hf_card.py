"""The model card (README.md) `hmem export` writes into an export directory: what each file is, how to run the
model with its memory, and what plain transformers tooling does without it (the anchor alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _count(n: Any) -> str:
    try:
        n = int(n)
    except (TypeError, ValueError):
        return str(n)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def model_card(cfg: Any, final: dict[str, Any], run_dir: Path, arch: str, has_tokenizer: bool) -> str:
    """Markdown for README.md of an export of the run `run_dir` (config `cfg`, final.json `final`)."""
    memory = cfg.memory.type != "none"
    params = final.get("params") or {}
    val = (final.get("metrics") or {}).get("val/loss")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [hmem_lit, memory-augmented-lm" + (f", {cfg.memory.type}-memory" if memory else "") + "]",
        "---",
        f"# {cfg.experiment}/{cfg.name} (exported by hmem_lit)",
        "",
        f"A `{arch}` exported from the hmem_lit run `{run_dir}`: anchor {_count(params.get('anchor'))} parameters"
        + (
            f", plus a {cfg.memory.type} memory bank of {_count(params.get('bank'))} parameters of which "
            f"{_count(params.get('fetched'))} are fetched per context"
            if memory
            else " (no memory)"
        )
        + (f"; trained on {final.get('tokens', 0):,} tokens, validation loss {val:.4f}." if val is not None else "."),
        "",
        "## Files",
        "",
        "| file | what |",
        "|---|---|",
        f"| `config.json`, `model.safetensors` | the anchor as a standard `{arch}` (logits equal the run's) |",
        "| `generation_config.json` | end-of-text as EOS and the run's pad id; no BOS (documents start bare) |",
    ]
    if has_tokenizer:
        lines.append(
            "| `tokenizer.json`, `tokenizer_config.json` | the run's BPE tokenizer: EOS = end-of-text, a pad token, "
            "left padding (batched generation) |"
        )
    else:
        lines.append("| (no tokenizer) | a toy run: token ids are bytes 0..255 plus specials |")
    if memory:
        lines += [
            "| `hmem_memory.safetensors` | the memory bank (and generic block) |",
            "| `hmem.json` | the run's resolved config, parameter counts, source run |",
            "| `router/` | the hierarchical clustering that routes a prompt to its memory blocks |",
        ]
    else:
        lines.append("| `hmem.json` | the run's resolved config, parameter counts, source run |")
    lines += ["", "## Use", ""]
    if memory:
        lines += [
            "**Plain transformers tooling runs the anchor alone.** `AutoModelForCausalLM.from_pretrained(DIR)`, "
            "`model.generate(...)` and `pipeline('text-generation', DIR)` load and run only the anchor: the memory "
            "is not a transformers module and is silently left out (that is the run's `--memory none`). To run "
            "with the memory the prompt routes to:",
            "",
            "```python",
            "from transformers import AutoTokenizer",
            "import hmem_lit.hf_export as hx",
            "",
            "m = hx.load(DIR)                        # the HF model + the memory, attached by forward hooks",
            "tok = AutoTokenizer.from_pretrained(DIR)",
            'prompts = ["The capital of Norway is"]',
            "batch = tok(prompts, return_tensors='pt', padding=True)",
            "with m.fetched(m.route(prompts)) as hf:  # route each prompt to its blocks",
            "    out = hf.generate(**batch, max_new_tokens=8, do_sample=False)",
            "print(tok.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True))",
            "```",
            "",
            'or from the original run directory: `hmem generate RUN "prompt" --memory fetched|generic|none`.',
        ]
    else:
        lines += [
            "A plain causal LM: `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`;",
            "`generate` and `pipeline('text-generation', DIR)` work as for any model of its architecture.",
        ]
    lines += [
        "",
        "Prompts carry no BOS token (training documents start bare) and generation stops at end-of-text.",
        "",
    ]
    return "\n".join(lines)
