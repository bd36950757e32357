"""Data-parallel strategies that keep the memory's sparse-gradient tables out of DDP / FSDP.

`train.strategy` names a Lightning strategy; `resolve_strategy` turns every DDP flavour (ddp, ddp_spawn,
ddp_find_unused_parameters_true, ...) into `BankDDPStrategy` and every FSDP one (fsdp, fsdp_cpu_offload) into
`BankFSDPStrategy`, with the registered flavour's arguments, so users need not know. Both:
  - hide the tables with sparse gradients (bank levels, PKM values: `memory.sparse_parameters()`) from the
    wrapper: DDP ignores them (`_set_params_and_buffers_to_ignore_for_model`), FSDP leaves them unsharded and
    out of its flat parameters (`ignored_states`). Everything else (anchor, dense memory weights) is reduced as
    usual (DDP: bucketed all-reduce; FSDP: reduce-scatter);
  - synchronise those tables' gradients themselves once per optimiser step, before clipping
    (`sync_sparse_gradients`, called by the LightningModule): hmem_lit/sync.py all_gathers each rank's fetched
    rows, so communication scales with the fetched blocks, never with the bank.
The tables are replicated: each rank builds them from the same seed (checked once at set-up by a checksum, since
DDP no longer broadcasts them) and applies the same sparse update. DeepSpeed is not supported with memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from hmem_lit.config import ConfigError
from hmem_lit.sync import SyncStats, sync_sparse_grads


def sparse_tables(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(qualified name, param) of the tables with sparse gradients inside `module` (a LightningModule or a
    MemoryLM)."""
    memory = getattr(getattr(module, "model", module), "memory", None)
    if memory is None or not hasattr(memory, "sparse_parameters"):
        return []
    ids = {id(p) for p in memory.sparse_parameters()}
    return [(n, p) for n, p in module.named_parameters() if id(p) in ids]


def ignore_sparse_tables(module: nn.Module) -> list[nn.Parameter]:
    """Mark `module`'s sparse tables as ignored by a DistributedDataParallel built on it next; -> the tables."""
    tables = sparse_tables(module)
    if tables:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, [n for n, _ in tables]
        )
    return [p for _, p in tables]


class _BankSync:
    """Mixin: gradient sync of the sparse tables (the strategy's `model` may be wrapped)."""

    bank_sync_stats: SyncStats | None = None
    if TYPE_CHECKING:  # provided by the Lightning strategy it is mixed into

        @property
        def lightning_module(self) -> Any: ...

        @property
        def root_device(self) -> torch.device: ...

    def _tables(self) -> list[nn.Parameter]:
        return [p for _, p in sparse_tables(self.lightning_module)]

    def _check_replicated(self, tables: list[nn.Parameter]) -> None:
        """Every rank must start from the same tables (nobody broadcasts them): compare a checksum."""
        if not tables or not dist.is_initialized() or dist.get_world_size() == 1:
            return
        with torch.no_grad():  # no full-size temporaries: the bank may be most of the host's memory
            sums = torch.stack(
                [torch.stack([p.sum(dtype=torch.float64), torch.linalg.vector_norm(p).double()]) for p in tables]
            )
        sums = sums.to(self.root_device)
        ref = sums.clone()
        dist.broadcast(ref, src=0)
        if not torch.allclose(ref, sums, rtol=1e-6, atol=0):
            raise RuntimeError(
                "memory tables differ across ranks at set-up: seed every rank alike before building "
                "the model (hmem train does)"
            )

    def sync_sparse_gradients(self) -> SyncStats:
        self.bank_sync_stats = sync_sparse_grads(self._tables())
        return self.bank_sync_stats


class BankDDPStrategy(_BankSync, DDPStrategy):
    """DDPStrategy whose reducer skips the sparse tables (they are synchronised by `sync_sparse_gradients`)."""

    def _setup_model(self, model: nn.Module) -> Any:
        self._check_replicated(ignore_sparse_tables(model))
        return super()._setup_model(model)


class BankFSDPStrategy(_BankSync, FSDPStrategy):
    """FSDPStrategy with the sparse tables in `ignored_states`: not flattened, not sharded, synchronised by us.

    As a subclass it also passes Lightning's "FSDP needs CUDA" check, so it runs on CPU with gloo (as tested).
    """

    def sharded_norm_reducer(self) -> Callable[[Tensor], Tensor] | None:
        """For gradient clipping: dense gradients are shards, so squared norms are summed over ranks."""
        from torch.distributed.fsdp import ShardingStrategy

        if self.sharding_strategy == ShardingStrategy.NO_SHARD or self.world_size == 1:
            return None
        if self.sharding_strategy not in (ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP):
            raise NotImplementedError(f"gradient clipping under FSDP {self.sharding_strategy.name}: not supported")

        def reduce(sq: Tensor) -> Tensor:
            t = sq.detach().to(self.root_device, torch.float32).clone()
            dist.all_reduce(t)
            return t

        return reduce

    def _cpu_full_state(self) -> Any:
        """On CPU, Lightning's full state dict (offload_to_cpu, rank0_only) segfaults in torch 2.13's FSDP
        (seen on gloo): gather it on every rank without offloading instead (everything is on the CPU anyway)."""
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType

        assert self.model is not None  # called after set-up
        return FSDP.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=False),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=False),
        )

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        assert self.model is not None
        with self._cpu_full_state():
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Tensor]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.fsdp import OptimStateKeyType

        optimizer = optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        assert self.model is not None
        with self._cpu_full_state():
            state = FSDP.optim_state_dict(self.model, optimizer)
            return FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)

    def _setup_model(self, model: nn.Module) -> Any:
        cached = getattr(self, "_wrapped", None)
        if cached is not None and cached.module is model:
            return cached  # validate/test after fit: the module's params are already shards; do not wrap twice
        tables = [p for _, p in sparse_tables(model)]
        if tables:
            self.kwargs["ignored_states"] = tables
            self._check_replicated(tables)
            memory = getattr(getattr(model, "model", model), "memory", None)
            if self.root_device.type != "cpu" and memory is not None:
                # FSDP moves only the parameters it manages; Bank._apply keeps offloaded tables on the host
                memory.to(self.root_device)
        if self.root_device.type != "cpu" or any(isinstance(m, FSDP) for m in model.modules()):
            self._wrapped = super()._setup_model(model)
            return self._wrapped
        # CPU (gloo): Lightning passes device_id=None, which FSDP refuses without an accelerator; name the CPU
        self._wrapped = FSDP(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(self._wrapped, self._activation_checkpointing_kwargs)
        return self._wrapped


def resolve_strategy(name: Any, world: int, has_sparse: bool, unused_params: bool = False) -> Any:
    """train.strategy -> what L.Trainer(strategy=...) gets: our DDP/FSDP subclasses for those flavours.

    `auto` with several devices is DDP (what Lightning would pick), so it gets the sparse sync too.
    unused_params: some trainable parameters never get a gradient (PKM replace mode skips those layers' FFNs),
    so DDP must look for them (find_unused_parameters=True)."""
    if name == "auto" and world > 1:
        name = "ddp"
    if not isinstance(name, str) or name not in StrategyRegistry:
        return name
    entry = StrategyRegistry[name]
    cls = entry["strategy"]
    if cls is DDPStrategy:
        kw = dict(entry["init_params"])
        if unused_params:
            kw["find_unused_parameters"] = True
        return BankDDPStrategy(**kw)
    if cls is FSDPStrategy:
        return BankFSDPStrategy(**entry["init_params"])
    if has_sparse and name.startswith("deepspeed"):
        raise ConfigError(f"train.strategy={name}: DeepSpeed cannot keep the memory tables sparse; use ddp or fsdp")
    return name
