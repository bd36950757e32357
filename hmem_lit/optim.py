"""Optimisation of a MemoryLM: parameter groups, one AdamW that updates bank tables row-wise, schedules, clipping.

Groups (empty ones are dropped):
  anchor        anchor weights (>= 2-D), optim.lr / weight_decay, warmup + cosine to optim.min_lr
  anchor_nowd   anchor norm weights (1-D), same LR, no weight decay
  memory        dense memory parameters (PKM projections and keys), optim.memory_lr / memory_weight_decay,
                warmup + cosine to optim.memory_min_lr (>= 2-D only get decay)
  memory_nowd   1-D dense memory parameters (none today), memory LR, no decay
  memory_rows   tensors with sparse gradients (bank tables, PKM values): the same memory LR / decay, row-wise;
                with optim.memory_lr_scale set, one group per bank level instead (memory_rows_l1, ...), each at
                memory_lr x its level's multiplier (and the same cosine floor ratio)

`RowwiseAdamW` is one `torch.optim.Optimizer` (Lightning's automatic optimisation wants one). Dense groups get
standard AdamW (decoupled weight decay, bias correction). Sparse groups get a lazy AdamW: the gradient is a
sparse COO tensor whose indices are the rows fetched this step; after `coalesce()` only those rows of the
parameter and of its two moment buffers are read and written, by the table's storage backend (hmem_lit/storage/:
where the rows live, in what dtype, inline or on a worker; in place through row views for big float32 rows such as
bank blocks, gathered and scattered otherwise), each row keeps its own step count for bias correction, and weight
decay hits only those rows. Rows not fetched are never
touched: they stay bit-identical (no momentum or decay drift) and the step costs O(fetched rows), not O(bank).
A row fetched every step follows exactly dense AdamW. State holds only tensors (per-row counts are the "step"
entry, which torch never casts on load), so checkpoints load with torch.load(weights_only=True).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hmem_lit import storage
from hmem_lit.config import RunConfig


class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps, then cosine from 1 to `floor` at `total` steps."""

    def __init__(self, total: int, warmup: float, floor: float):
        self.total, self.floor = int(total), float(floor)
        self.warmup = int(warmup * total) if warmup < 1 else int(warmup)  # fraction of the run, or steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _adamw(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    steps: list[float],
    group: dict[str, Any],
) -> None:
    """In-place AdamW (torch.optim.AdamW's update) on lists of tensors, each with its own step count."""
    (b1, b2), lr, wd, eps = group["betas"], group["lr"], group["weight_decay"], group["eps"]
    torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(ms, grads, 1 - b1)
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, grads, grads, 1 - b2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, [math.sqrt(1 - b2**s) for s in steps])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, ms, denom, [-lr / (1 - b1**s) for s in steps])


class RowwiseAdamW(torch.optim.Optimizer):
    """AdamW; groups with `sparse=True` update only the rows present in each (sparse) gradient.

    Rows of at least `view_rows_from` numbers (bank blocks) are updated in place through per-row views (no
    gather/scatter copies); smaller rows (e.g. PKM values, thousands per step) are gathered, updated, scattered.
    """

    view_rows_from = 4096

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, sparse=False))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # each table's storage backend (hmem_lit/storage/) may still be writing the previous step's rows: done by
        # now (the forward and backward ran in between), and waited for before this step's
        backends = storage.backends(p for group in self.param_groups if group["sparse"] for p in group["params"])
        for b in backends:
            b.wait()
        for group in self.param_groups:  # row-wise groups first: a backend may write them while the dense step runs
            if group["sparse"]:
                group["rounding_step"] = group.get("rounding_step", 0) + 1  # seeds low-precision rounding
                for p in group["params"]:
                    if p.grad is not None:
                        self._rows_step(p, group)
        for b in backends:
            b.launch()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not group["sparse"] and params:
                self._dense_step(params, group)
        return loss

    def _wait(self) -> None:
        """Return once every pending row update is written (moments and counts final)."""
        for b in storage.backends(p for group in self.param_groups for p in group["params"]):
            b.wait()

    def state_dict(self) -> dict[str, Any]:
        self._wait()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, then each table's moments placed where its backend keeps its rows (the loaded ones may be
        views of a memory-mapped checkpoint file; a disk-backed table's go into its store)."""
        self._wait()
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    st["exp_avg"], st["exp_avg_sq"] = (storage.of(p).adopt(p, st[k]) for k in ("exp_avg", "exp_avg_sq"))

    def _state(self, p: Tensor, step_shape: tuple[int, ...]) -> dict[str, Tensor]:
        # a dense parameter's step count lives on the CPU (its value is read on the host every step: on CUDA a
        # device copy would cost one synchronisation per parameter, as torch.optim.AdamW avoids); per-row counts
        # of a sparse table live with the table (index ops)
        device = p.device if step_shape else torch.device("cpu")
        st = self.state[p]
        if not st:
            st["step"] = torch.zeros(step_shape, dtype=torch.long, device=device)
            backend = storage.of(p)  # the moments live where p's rows do
            st["exp_avg"], st["exp_avg_sq"] = backend.zeros_like(p), backend.zeros_like(p)
        if st["step"].device != device:  # torch.load leaves "step" where it was saved
            st["step"] = st["step"].to(device)
        return st

    def _dense_step(self, params: list[Tensor], group: dict[str, Any]) -> None:
        states, grads = [], []
        for p in params:
            grad = p.grad
            assert grad is not None  # step() passes only parameters with a gradient
            if grad.is_sparse:
                raise RuntimeError("a sparse gradient reached a dense group: list its tensor in sparse_parameters()")
            grads.append(grad)
            states.append(self._state(p, ()))
            states[-1]["step"] += 1
        _adamw(
            params,
            grads,
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            [float(st["step"]) for st in states],
            group,
        )

    def _rows_step(self, p: Tensor, group: dict[str, Any]) -> None:
        """Hand p's update of the rows in its gradient to p's storage backend, which reads and writes the rows
        (where and when it decides) and calls `_rows_update` on them."""
        grad = p.grad
        assert grad is not None  # step() passes only parameters with a gradient
        if not grad.is_sparse:
            raise RuntimeError(f"row-wise group {group.get('name')!r} got a dense gradient: gather with sparse=True")
        g = grad.coalesce()  # duplicate rows (a block fetched by several sequences) summed
        rows, gv = g._indices()[0], g._values()  # (n,), (n, *row_shape)
        st = self._state(p, (p.shape[0],))
        steps = st["step"].index_select(0, rows) + 1  # (n,) per-row update counts, this one included
        st["step"].index_copy_(0, rows, steps)
        hyper = {k: v for k, v in group.items() if k != "params"}  # the scheduler changes lr after this step
        index = next(i for i, q in enumerate(group["params"]) if q is p)
        storage.of(p).update_rows(
            p,
            (st["exp_avg"], st["exp_avg_sq"]),
            rows,
            functools.partial(self._rows_update, gv, steps, hyper),
            views=math.prod(p.shape[1:]) >= self.view_rows_from,
            seed=(group.get("seed", 0), group["rounding_step"], index),
        )

    def _rows_update(
        self, gv: Tensor, steps: Tensor, group: dict[str, Any], x: Any, m: Any, v: Any, sel: Tensor | None
    ) -> None:
        """AdamW on rows given by the backend (storage.RowUpdate): x, m, v, float32, are the values and moments of
        the rows where `sel` is set (None: all), as (k, *row) tensors or lists of per-row views, updated in place;
        gv (n, *row) their gradient values, steps (n,) their update counts."""
        if sel is not None:
            gv, steps = gv[sel], steps[sel]
        if isinstance(x, list):  # per-row views
            _adamw(x, list(gv.unbind(0)), m, v, steps.tolist(), group)
        else:
            _rows_adamw(x, m, v, gv.to(x.dtype), steps, group)


def _rows_adamw(
    x: Tensor, m: Tensor, v: Tensor, g: Tensor, steps: Tensor, group: dict[str, Any]
) -> tuple[Tensor, Tensor, Tensor]:
    """AdamW on gathered rows (updated in place and returned): x, m, v, g (n, *row); steps (n,) per-row counts."""
    (b1, b2), lr, wd, eps = group["betas"], group["lr"], group["weight_decay"], group["eps"]
    shape = (-1,) + (1,) * (x.dim() - 1)  # broadcast per-row scalars over the row
    bc1 = (1 - b1 ** steps.double()).to(x.dtype).view(shape)
    bc2 = (1 - b2 ** steps.double()).sqrt().to(x.dtype).view(shape)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    x.mul_(1 - lr * wd)
    x.addcdiv_(m / bc1, v.sqrt().div_(bc2).add_(eps), value=-lr)
    return x, m, v


def param_groups(model: nn.Module, cfg: RunConfig, ndim: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Trainable parameters of a MemoryLM in the groups of the module docstring (frozen ones are left out).

    ndim: parameter name -> dimensions, recorded before FSDP (use_orig_params) turns parameters into 1-D shards.
    """
    o = cfg.optim
    memory = getattr(model, "memory", None)
    sparse = {id(p) for p in memory.sparse_parameters()} if memory is not None else set()
    in_memory = {id(p) for p in memory.parameters()} if memory is not None else set()
    buckets: dict[str, list[nn.Parameter]] = {
        k: [] for k in ("anchor", "anchor_nowd", "memory", "memory_nowd", "memory_rows")
    }
    for name, p in model.named_parameters():  # deduplicated (tied embeddings appear once)
        if not p.requires_grad:
            continue
        if id(p) in sparse:
            buckets["memory_rows"].append(p)
        else:
            base = "memory" if id(p) in in_memory else "anchor"
            dim = ndim.get(name, p.dim()) if ndim is not None else p.dim()
            buckets[base if dim >= 2 else base + "_nowd"].append(p)
    mult: dict[str, float] = {}  # group name -> multiplier on the memory LR
    if o.memory_lr_scale and getattr(memory, "routed", False):  # one sparse group per bank level: memory_rows_l1, ...
        assert memory is not None  # only a memory is routed
        rows = buckets.pop("memory_rows")
        for (lvl, _, t), m in zip(memory.bank.tables(), o.memory_lr_scale):
            buckets[f"memory_rows_l{lvl}"], mult[f"memory_rows_l{lvl}"] = [p for p in rows if p is t], float(m)
        buckets["memory_rows"] = [p for p in rows if not any(p is t for _, _, t in memory.bank.tables())]
    if memory is not None and not getattr(memory, "routed", False) and o.value_lr_scale != 1.0:
        mult["memory_rows"] = float(o.value_lr_scale)  # the token-level value table (pkm) only
    groups = []
    for name, ps in buckets.items():
        if not ps:
            continue
        mem = name.startswith("memory")
        groups.append(
            dict(
                params=ps,
                name=name,
                sparse=name.startswith("memory_rows"),
                lr=o.memory_lr * mult.get(name, 1.0) if mem else o.lr,
                weight_decay=0.0 if name.endswith("nowd") else (o.memory_weight_decay if mem else o.weight_decay),
                **(dict(seed=cfg.train.seed) if name.startswith("memory_rows") else {}),  # seeds rounding
            )
        )
    return groups


def build_optimizer(
    model: nn.Module, cfg: RunConfig, total_steps: int, ndim: dict[str, int] | None = None
) -> dict[str, Any]:
    """The LightningModule's `configure_optimizers` return value: {"optimizer", "lr_scheduler" (per step)}."""
    o = cfg.optim
    groups = param_groups(model, cfg, ndim)
    if not groups:
        raise ValueError("nothing to train: every parameter has requires_grad=False")
    opt = RowwiseAdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    lambdas: list[Callable[[int], float]] = [
        WarmupCosine(
            total_steps, o.warmup, o.memory_min_lr / o.memory_lr if g["name"].startswith("memory") else o.min_lr / o.lr
        )
        for g in groups
    ]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _grads(params: list[Tensor]) -> list[Tensor]:
    """Gradients of params (sparse ones coalesced in place, so their values can be normed and scaled)."""
    out = []
    for p in params:
        if p.grad is not None:
            if p.grad.is_sparse and not p.grad.is_coalesced():
                p.grad = p.grad.coalesce()
            out.append(p.grad._values() if p.grad.is_sparse else p.grad)
    return out


def _norm(grads: list[Tensor]) -> Tensor:
    if not grads:
        return torch.zeros(())
    dev = grads[0].device
    return torch.stack([torch.linalg.vector_norm(g.float()).to(dev) for g in grads]).norm()


@torch.no_grad()
def _clip(grads: list[Tensor], total: Tensor, max_norm: float) -> None:
    if max_norm > 0 and grads:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.device))


def clip_gradients(
    model: nn.Module, cfg: RunConfig, reduce_sharded: Callable[[Tensor], Tensor] | None = None
) -> dict[str, Tensor]:
    """Clip the anchor's gradients at optim.grad_clip and the memory's (dense + sparse values) at
    optim.memory_grad_clip; with memory_grad_clip = 0 memory gradients join the anchor's global-norm clip.
    reduce_sharded (FSDP): sums a squared norm over ranks; dense gradients are then shards, while sparse ones
    (replicated, already synchronised) are counted once.
    -> {"grad_norm": anchor norm, "memory_grad_norm": memory norm}, both before clipping (0-d tensors)."""
    o = cfg.optim
    memory = getattr(model, "memory", None)
    anchor = model.anchor
    assert isinstance(anchor, nn.Module)
    anchor_g = _grads(list(anchor.parameters()))
    memory_g = _grads(list(memory.parameters())) if memory is not None else []
    if reduce_sharded is None:
        a, m = _norm(anchor_g), _norm(memory_g)
    else:
        sparse = {id(p) for p in memory.sparse_parameters()} if memory is not None else set()
        dense_m = _grads([p for p in memory.parameters() if id(p) not in sparse]) if memory is not None else []
        sparse_m = _grads([p for p in memory.parameters() if id(p) in sparse]) if memory is not None else []
        a = reduce_sharded(_norm(anchor_g).square()).sqrt()
        m = (reduce_sharded(_norm(dense_m).square()) + _norm(sparse_m).square().to(a.device)).sqrt()
    if o.value_grad_clip > 0 and memory is not None:  # the value table (pkm) has its own clip; the rest as below
        sparse = {id(p) for p in memory.sparse_parameters()}
        values_g = _grads([p for p in memory.parameters() if id(p) in sparse])  # replicated: counted once
        memory_g = _grads([p for p in memory.parameters() if id(p) not in sparse])
        _clip(values_g, _norm(values_g), o.value_grad_clip)
        m = _norm(memory_g) if reduce_sharded is None else reduce_sharded(_norm(memory_g).square()).sqrt()
    if o.memory_grad_clip > 0:
        _clip(anchor_g, a, o.grad_clip)
        _clip(memory_g, m, o.memory_grad_clip)
    else:
        _clip(anchor_g + memory_g, torch.stack([a, m.to(a.device)]).norm(), o.grad_clip)
    return {"grad_norm": a, "memory_grad_norm": m}
