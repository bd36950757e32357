"""The paper's language -> concrete configs: bank depth, fetched size, bank size, fetched-to-anchor ratio.

Accounting (../shared/PAPERS.md A4): a unit of r_l (one extra hidden unit per memory layer for FFN memories) costs c0
fetched parameters (FFN: c0 = 3 * n_layer * d_model; measured on the meta device for any bank type), so
    fetched = c0 * sum_l r_l          bank = c0 * sum_l b^l * r_l          (b = retriever.branching)
- `level`: all memory at one level l: r_l from fetched (or from bank / b^l).
- `bank_depth` D with `fetched` (or `fetched_units`) only: r_l follows a profile (translate.shape, else geometric
  r_{l+1} = q r_l with q = translate.q = 1/4, the paper's (256, 64, 16)).
- `fetched` and `bank` together: the geometric q is solved so both hold (Table 7: B/F must lie in (b, b^D)).
- `fetch_ratio` rho at runtime budget N (translate.budget, auto = the base config's anchor + fetched): the anchor's
  n_layer L is the one whose anchor(L) is nearest N / (1 + rho), then fetched = N - anchor(L) (Table 8).
Every trial is counted on the meta device after translation; a request the rounding to integer r_l cannot meet
within translate.tolerance raises `Infeasible` (recorded as a pruned trial with the reason, never a crash).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from typing import Any

from hmem_lit.config import AnchorConfig, ConfigError, RunConfig, load_config, memory_schema, section_from_dict
from hmem_lit.config_text import read_yaml
from hmem_lit.data.toy import ByteTokenizer
from hmem_lit.sweeps.spec import PAPER_PARAMS, SKELETON, SweepSpec, Translate, _fmt, parse_count


class Infeasible(ConfigError):
    """A trial's params cannot be realised (recorded as an infeasible trial, the sweep goes on)."""


def _vocab(cfg: RunConfig) -> int:
    return cfg.anchor.vocab_size or (ByteTokenizer.vocab_size if cfg.data.source == "toy" else cfg.data.vocab_size)


def _key(*parts: Any) -> str:
    return json.dumps(
        [dataclasses.asdict(p) if dataclasses.is_dataclass(p) and not isinstance(p, type) else p for p in parts],
        sort_keys=True,
        default=str,
    )


@functools.lru_cache(maxsize=512)
def _anchor_at(key: str, n_layer: int) -> int:
    import torch

    from hmem_lit.anchor import Anchor, count_params

    acfg = AnchorConfig(**{**json.loads(key)[0], "n_layer": n_layer})
    with torch.device("meta"):
        return count_params(Anchor(acfg))


def _anchor_params(cfg: RunConfig, n_layer: int) -> int:
    """Anchor parameters at n_layer, exact: every block is identical, so a + (L - 1) * per_layer from meta builds
    at 1 and 2 layers (cached: a sweep translates many points of one anchor)."""
    key = _key(dataclasses.replace(cfg.anchor, vocab_size=_vocab(cfg), n_layer=1))
    one, two = _anchor_at(key, 1), _anchor_at(key, 2)
    return one + (n_layer - 1) * (two - one)


@functools.lru_cache(maxsize=512)
def _memory_at(key: str) -> tuple[int, int]:
    import torch

    from hmem_lit.memory import MEMORY

    a, m, branching = json.loads(key)
    with torch.device("meta"):
        mem = MEMORY.get(m["type"])(section_from_dict(memory_schema(), m), AnchorConfig(**a), branching)
    return int(mem.fetched_params()), int(mem.bank_params())


def counts(cfg: RunConfig) -> dict[str, int]:
    """anchor / fetched / bank / runtime parameters of a config, as `MemoryLM(cfg).param_counts()` gives them,
    from meta-device builds (nothing allocated): the anchor by layer extrapolation, the memory module itself."""
    anchor = _anchor_params(cfg, cfg.anchor.n_layer)
    if cfg.memory.type == "none":
        return {"anchor": anchor, "fetched": 0, "bank": 0, "runtime": anchor}
    fetched, bank = _memory_at(
        _key(dataclasses.replace(cfg.anchor, vocab_size=_vocab(cfg)), cfg.memory, cfg.retriever.branching)
    )
    return {"anchor": anchor, "fetched": fetched, "bank": bank, "runtime": anchor + fetched}


def unit_params(cfg: RunConfig, mem_type: str) -> int:
    """c0: fetched parameters per unit of r (levels=[1]) for this anchor and memory type."""
    mem = dataclasses.replace(cfg.memory, type=mem_type, levels=[1], generic=False)
    ret = dataclasses.replace(cfg.retriever, depth=max(1, cfg.retriever.depth))
    opt = dataclasses.replace(cfg.optim, memory_lr_scale=[])  # per-level LRs do not change the count
    return counts(
        dataclasses.replace(
            cfg, memory=mem, retriever=ret, optim=opt, train=dataclasses.replace(cfg.train, mode="anchor")
        )
    )["fetched"]


def _solve_q(ratio: float, b: int, depth: int) -> float:
    """q with sum_l q^(l-1) b^l / sum_l q^(l-1) = ratio (increasing in q): bisection on log q."""

    def g(lq: float) -> float:
        w = [math.exp(lq * i) for i in range(depth)]
        return sum(wi * b ** (i + 1) for i, wi in enumerate(w)) / sum(w)

    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) < ratio else (lo, mid)
    return math.exp((lo + hi) / 2)


def _round(real: list[float], b: int, f_target: float | None, b_target: float | None) -> list[int]:
    """Integer r_l near `real` (floor/ceil per level) minimising the worst relative error on the targets."""
    best, best_key = None, None
    for combo in itertools.product(*[sorted({math.floor(x), math.ceil(x)}) for x in real]):
        r = [max(0, int(x)) for x in combo]
        f, bk = sum(r), sum(ri * b ** (i + 1) for i, ri in enumerate(r))
        err = max(abs(f - f_target) / f_target if f_target else 0.0, abs(bk - b_target) / b_target if b_target else 0.0)
        key = (err, sum((ri - x) ** 2 for ri, x in zip(r, real)))
        if best_key is None or key < best_key:
            best, best_key = r, key
    return best  # type: ignore[return-value]


def _err(r: list[int], b: int, f_units: float, b_units: float) -> float:
    bk = sum(ri * b ** (i + 1) for i, ri in enumerate(r))
    return max(abs(sum(r) - f_units) / f_units, abs(bk - b_units) / b_units)


def _both(f_units: float, b_units: float, b: int, depth: int) -> list[int]:
    """Integer r_1..r_depth with sum r ~ f_units and sum b^l r_l ~ b_units: the deepest level takes floor or ceil of
    its geometric-profile share, the levels above re-solve the residual (2^depth candidates, best kept)."""
    if depth == 1 or f_units <= 0 or b_units <= 0:
        return [max(0, round(f_units))] + [0] * (depth - 1)
    ratio = min(max(b_units / f_units, b * (1 + 1e-9)), b**depth * (1 - 1e-9))
    q = _solve_q(ratio, b, depth)
    w = [q**i for i in range(depth)]
    real_last = f_units * w[-1] / sum(w)
    best, best_err = None, math.inf
    for last in sorted({max(0, math.floor(real_last)), max(0, math.ceil(real_last))}):
        rest = _both(f_units - last, b_units - last * b**depth, b, depth - 1)
        r = rest + [last]
        f, bk = sum(r), sum(ri * b ** (i + 1) for i, ri in enumerate(r))
        err = max(abs(f - f_units) / f_units, abs(bk - b_units) / b_units)
        if err < best_err:
            best, best_err = r, err
    return best  # type: ignore[return-value]


def solve_levels(
    t: Translate,
    b: int,
    c0: int,
    *,
    depth: int | None = None,
    level: int | None = None,
    fetched: float | None = None,
    bank: float | None = None,
    units: float | None = None,
) -> list[int]:
    """Per-level multipliers r_l realising the requested sizes (params or units), or raise Infeasible."""
    f_units = units if units is not None else (fetched / c0 if fetched is not None else None)
    b_units = bank / c0 if bank is not None else None
    if level is not None:
        depth = level
        if f_units is None and b_units is None:
            raise Infeasible("level: needs fetched, fetched_units or bank to size the level")
        real_r = f_units if f_units is not None else b_units / b**level
        if f_units is not None and b_units is not None and abs(f_units * b**level - b_units) > t.tolerance * b_units:
            raise Infeasible(
                f"level={level}: bank = b^{level} x fetched = {b**level * f_units * c0:,.0f} "
                f"at this level, not the requested {bank:,.0f}"
            )
        r = [0] * (level - 1) + _round([real_r], 1, None, None)
    else:
        assert depth is not None
        if f_units is not None and b_units is not None:
            ratio = b_units / f_units if f_units > 0 else math.inf
            lo, hi = b, b**depth
            if not (lo * (1 - t.tolerance) <= ratio <= hi * (1 + t.tolerance)):
                raise Infeasible(
                    f"bank/fetched = {ratio:,.1f} is outside [{lo}, {hi}] reachable with {depth} levels "
                    f"of a {b}-way tree (all at level 1 .. all at level {depth})"
                )
            ratio = min(max(ratio, lo * (1 + 1e-9)), hi * (1 - 1e-9)) if depth > 1 else ratio
            q = _solve_q(ratio, b, depth) if depth > 1 else 1.0
            w = [q**i for i in range(depth)]
        else:
            w = list(t.shape) if t.shape else [t.q**i for i in range(depth)]
            if len(w) != depth:
                raise Infeasible(f"translate.shape has {len(w)} weights for bank_depth={depth}")
        if f_units is not None:
            real = [f_units * wi / sum(w) for wi in w]
        elif b_units is not None:
            real = [b_units * wi / sum(wi * b ** (i + 1) for i, wi in enumerate(w)) for wi in w]
        else:
            raise Infeasible("bank_depth: needs a size (fetched, fetched_units or bank) or a base with memory")
        r = _round(real, b, f_units, b_units)  # floor/ceil of the profile: keeps its shape
        if f_units is not None and b_units is not None and _err(r, b, f_units, b_units) > t.tolerance / 2:
            r2 = _both(f_units, b_units, b, depth)  # re-solve level by level: hits both targets more closely
            r = r2 if _err(r2, b, f_units, b_units) < _err(r, b, f_units, b_units) else r
    if sum(r) == 0:
        raise Infeasible(f"requested size rounds to zero units (one unit of r = {c0:,} fetched params)")
    return r


def translate(
    spec: SweepSpec, params: dict[str, Any], extra: list[str] | tuple[str, ...] = ()
) -> tuple[RunConfig, dict[str, Any]]:
    """Trial params (raw keys + paper-language params; spec.fixed applies under them) -> (validated RunConfig,
    realised accounting). `extra` overrides (name=, train.threads=) apply last."""
    t = spec.translate
    params = {**spec.fixed, **params}
    raw = {k: v for k, v in params.items() if k not in PAPER_PARAMS}
    paper = {k: v for k, v in params.items() if k in PAPER_PARAMS}
    base_ov = spec.overrides + [f"{k}={_fmt(v)}" for k, v in raw.items()]
    run_ov = [f"out_dir={spec.runs_dir.parent}", f"experiment={spec.name}", *extra]
    try:
        cfg = load_config(spec.base, base_ov + run_ov)
    except ConfigError as e:
        if not paper:
            raise Infeasible(str(e)) from None
        try:  # e.g. memory.type=lora without levels yet: an anchor-only skeleton for the accounting
            cfg = load_config(spec.base, base_ov + list(SKELETON) + run_ov)
        except ConfigError:
            raise Infeasible(str(e)) from None
    info: dict[str, Any] = {}
    if paper:
        gen = _paper_overrides(
            spec,
            cfg,
            paper,
            info,
            _requested(spec, base_ov, "memory.type"),
            _requested(spec, base_ov, "optim.memory_lr_scale") or [],
        )
        try:
            cfg = load_config(spec.base, base_ov + gen + run_ov)
        except ConfigError as e:
            raise Infeasible(f"{', '.join(gen)} -> {e}") from None
    c = counts(cfg)
    info.update({f"realised_{k}": v for k, v in c.items()}, levels=list(cfg.memory.levels), n_layer=cfg.anchor.n_layer)
    _check_tolerance(t, c, paper, info)
    return cfg, info


def _requested(spec: SweepSpec, overrides: list[str], key: str) -> Any:
    """A key (memory.type, optim.memory_lr_scale) as the base YAML + overrides ask for it, before the levels make
    the config valid (the accounting may have used the anchor-only skeleton)."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(read_yaml(spec.base), OmegaConf.from_dotlist(list(overrides)))
    got = OmegaConf.select(merged, key, default=None)
    return OmegaConf.to_container(got) if OmegaConf.is_config(got) else got


def _paper_overrides(
    spec: SweepSpec,
    cfg: RunConfig,
    paper: dict[str, Any],
    info: dict[str, Any],
    mem_type: str | None = None,
    lr_scale: list[float] | None = None,
) -> list[str]:
    t = spec.translate
    if "level" in paper and "bank_depth" in paper:
        raise Infeasible("level and bank_depth: give one (level puts all memory at one level)")
    if "fetched" in paper and "fetched_units" in paper:
        raise Infeasible("fetched and fetched_units: give one")
    mem_type = mem_type or cfg.memory.type
    mem_type = mem_type if mem_type != "none" else t.memory_type
    from hmem_lit.memory.base import is_routed, routed_types

    if not is_routed(mem_type):
        raise Infeasible(
            f"memory.type={mem_type}: paper-language sizes need a bank memory type ({', '.join(routed_types())})"
        )
    gen: list[str] = []
    fetched = parse_count(paper["fetched"], "fetched") if "fetched" in paper else None
    bank = parse_count(paper["bank"], "bank") if "bank" in paper else None
    units = float(paper["fetched_units"]) if "fetched_units" in paper else None
    if "fetch_ratio" in paper:
        rho = float(paper["fetch_ratio"])
        budget = counts(cfg)["runtime"] if t.budget == "auto" else float(t.budget)
        max_l = t.max_layers or cfg.anchor.n_layer
        L = min((abs(_anchor_params(cfg, n) - budget / (1 + rho)), n) for n in range(1, max_l + 1))[1]
        anchor = _anchor_params(cfg, L)
        if anchor > budget * (1 + t.tolerance):
            raise Infeasible(
                f"fetch_ratio={rho}: even a {L}-layer anchor ({anchor:,}) exceeds the budget {budget:,.0f}"
            )
        if fetched is not None or units is not None:
            raise Infeasible("fetch_ratio sets the fetched size itself: drop fetched / fetched_units")
        fetched = 0.0 if rho == 0 else budget - anchor
        info.update(budget=budget, requested_ratio=rho)
        gen.append(f"anchor.n_layer={L}")
        cfg = dataclasses.replace(cfg, anchor=dataclasses.replace(cfg.anchor, n_layer=L))
        if fetched <= 0:
            if rho > 0:
                raise Infeasible(
                    f"fetch_ratio={rho}: the nearest anchor ({L} layers, {anchor:,}) leaves no room for memory"
                )
            mode = "anchor" if cfg.train.mode in ("anchor", "scratch") else cfg.train.mode
            return (
                gen
                + ["memory.type=none", "memory.levels=[]", f"train.mode={mode}"]
                + (["optim.memory_lr_scale=[]"] if lr_scale else [])
            )
    c0 = unit_params(cfg, mem_type)
    b = cfg.retriever.branching
    level = paper.get("level")
    depth = paper.get("bank_depth") or (None if level else (len(cfg.memory.levels) or cfg.retriever.depth))
    if fetched is None and units is None and bank is None and cfg.memory.type != "none":
        units = float(sum(cfg.memory.levels))  # bank_depth alone: keep the base's fetched size
    r = solve_levels(t, b, c0, depth=depth, level=level, fetched=fetched, bank=bank, units=units)
    info.update(
        c0=c0,
        requested_fetched=fetched if fetched is not None else (units * c0 if units else None),
        requested_bank=bank,
    )
    gen += [f"memory.type={mem_type}", f"memory.levels={_fmt(r)}"]
    scale = [float(x) for x in (lr_scale or [])]
    if scale and len(scale) != len(r):  # the base's LR multipliers are per tree level: keep level l's for level l
        gen.append(f"optim.memory_lr_scale={_fmt((scale + [scale[-1]] * len(r))[: len(r)])}")
    if len(r) > cfg.retriever.depth:
        gen.append(f"retriever.depth={len(r)}")
    if cfg.memory.type == "none" and cfg.train.mode == "anchor":
        pass  # anchor + memory trained together from scratch (train.mode=anchor trains every parameter)
    return gen


def _check_tolerance(t: Translate, c: dict[str, int], paper: dict[str, Any], info: dict[str, Any]) -> None:
    checks = [("fetched", info.get("requested_fetched"), c["fetched"]), ("bank", info.get("requested_bank"), c["bank"])]
    if "budget" in info:
        checks = [("runtime", info["budget"], c["runtime"]), ("bank", info.get("requested_bank"), c["bank"])]
        info["realised_ratio"] = c["fetched"] / c["anchor"]
    for what, want, got in checks:
        if want:
            err = abs(got - want) / want
            info[f"{what}_error"] = err
            if err > t.tolerance:
                raise Infeasible(
                    f"{what}: realised {got:,} is {100 * err:.1f}% from the requested {want:,.0f} "
                    f"(translate.tolerance={t.tolerance})"
                )
