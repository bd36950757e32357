"""Which training protocol a sweep's memory trials follow, and the anchors it shares between them.

- `frozen` (the default; the paper's protocol for Fig. 3-4 and Tables 7-9, A3 in ../shared/PAPERS.md): every memory
  trial trains its memory on a frozen, trained anchor. The anchor is the trial's own config with the memory
  removed (same anchor shape, data, tokens and seed), trained once and shared by every trial and sweep that needs
  the same one: <out_dir>/sweeps/_baselines/anchor-<hash>, or the sweep's baseline of that hash when one exists.
- `cotrain`: trials train as the base experiment says (the quickstart's 102_qs_memory: train.mode=scratch, the
  paper's A4, anchor and memory together from a fresh init), the protocol of the ablations before issue 31.

A trial that names its own anchor (train.init_from) or trains no memory is left as it is under either protocol.
Pure config: `hmem sweep plan` reads it without importing Lightning.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hmem_lit.config import RunConfig, flat_retriever, from_dict, load_config, to_dict
from hmem_lit.sweeps.spec import PROTOCOLS, SweepSpec  # noqa: F401 (PROTOCOLS: re-exported)

_RUN_LOCAL = ("name", "experiment", "out_dir")  # where a run lives, not what it trains
_TRAIN_LOCAL = ("threads", "progress")  # how fast it runs and what it prints


def _canonical(d: dict[str, Any], anchor: bool = False) -> str:
    """8 hex digits of a config dict without where it lives or how many threads it uses; anchor=True: also without
    what only a memory reads (the memory section, memory-only optimiser keys, the training mode), so every run
    that trains the same anchor hashes alike."""
    d = copy.deepcopy(flat_retriever(d))  # the layout these hashes were first computed in
    for k in _RUN_LOCAL:
        d.pop(k, None)
    for k in _TRAIN_LOCAL:
        d["train"].pop(k, None)
    if anchor:
        d.pop("memory")
        d["optim"] = {k: v for k, v in d["optim"].items() if not k.startswith(("memory_", "value_"))}
        for k in ("mode", "init_from", "subtree"):
            d["train"].pop(k, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def config_hash(cfg: RunConfig) -> str:
    """What a run trains (not where it lives nor how many threads it uses): equal hashes mean one run can stand
    for the other. Names the sweeps' baselines."""
    return _canonical(to_dict(cfg))


def needs_anchor(protocol: str, cfg: RunConfig) -> bool:
    """Does this trial, under this protocol, train on a shared frozen anchor?"""
    return protocol == "frozen" and cfg.memory.type != "none" and not cfg.train.init_from


def anchor_config(cfg: RunConfig, out_dir: str, baselines: Sequence[RunConfig] = ()) -> RunConfig:
    """The anchor a memory trial freezes: one of `baselines` (anchor-only runs) when it trains the same anchor
    (the anchor hash ignores the memory-only keys), else the trial's config with the memory section at its
    defaults (and the memory-only optimiser keys) and train.mode=anchor, named
    <out_dir>/_baselines/anchor-<anchor hash>."""
    d: dict[str, Any] = to_dict(cfg)
    h = _canonical(d, anchor=True)
    for b in baselines:
        if b.memory.type == "none" and _canonical(to_dict(b), anchor=True) == h:
            return b
    defaults = to_dict(RunConfig())
    d["memory"] = defaults["memory"]
    d["optim"].update({k: v for k, v in defaults["optim"].items() if k.startswith(("memory_", "value_"))})
    d["train"].update(mode="anchor", init_from=None, subtree=None)
    d.update(out_dir=out_dir, experiment="_baselines", name=f"anchor-{h}")
    return from_dict(d)


def freeze_on(cfg: RunConfig, anchor: RunConfig) -> RunConfig:
    """The trial's config, its memory trained on `anchor` frozen (checked like any config: from_dict)."""
    d = to_dict(cfg)
    d["train"].update(mode="frozen", init_from=str(anchor.run_dir))
    return from_dict(d)


def baseline_configs(spec: SweepSpec, extra: list[str] | tuple[str, ...] = ()) -> list[RunConfig]:
    """The spec's baselines as configs: each experiment with the sweep's overrides except memory.* (a level sweep
    sets memory.type=ffn for its trials, the anchor must stay an anchor). They live in
    <out_dir>/sweeps/_baselines/<experiment stem>-<hash of what it trains> (protocol.config_hash), so sweeps with
    the same data, tokens and anchor share one run (memory_type, level_fetched and level_bank on one corpus train
    one anchor)."""
    ov = [
        o
        for o in spec.overrides
        if not o.startswith("memory.")
        and not o.startswith("experiment=")
        and not o.startswith("name=")
        and not o.startswith(("optim.memory_", "optim.value_"))  # memory-only keys: the anchor never reads them
    ]
    out = []
    for exp in spec.baselines:
        h = config_hash(load_config(exp, ov))
        out.append(
            load_config(
                exp,
                [*ov, f"out_dir={spec.runs_dir.parent}", "experiment=_baselines", f"name={Path(exp).stem}-{h}", *extra],
            )
        )
    return out


def frozen_anchor(spec: SweepSpec, cfg: RunConfig) -> RunConfig | None:
    """The anchor a trial trains its memory on under the sweep's protocol (None: the trial trains as it is): one
    of the sweep's baselines when it trains the same anchor (same hash), else
    <out_dir>/sweeps/_baselines/anchor-<hash>."""
    if not needs_anchor(spec.protocol, cfg):
        return None
    return anchor_config(cfg, str(spec.runs_dir.parent), baseline_configs(spec))
