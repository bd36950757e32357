"""The memory-type contract: what a module registered in `MEMORY` provides and which capabilities it declares.

A memory type is one module in hmem_lit/memory/ (or anywhere: `@MEMORY.register("name")` on a `MemoryType`
subclass imported before the config is loaded) that is built as `cls(mcfg, acfg, branching)` and implements:
  - `fetch(paths, generic=None) -> MemoryHooks`: the per-batch hooks the anchor calls (anchor.MemoryHooks);
  - `fetched_params()`, `bank_params()`: parameter accounting (per sequence / stored);
  - `sparse_parameters()`: tensors with sparse gradients, updated row-wise (only fetched rows move).

Capabilities are class attributes that the rest of the suite reads instead of testing for attributes or names:
  - `routed`: blocks are fetched by the document's tree path from a `bank` (bank.Bank), sized by `memory.levels`
    (r_l per tree level). Routed types get per-level learning rates (optim.memory_lr_scale), the generic block
    (memory.generic), level blocking in evaluation, subtree-split training (train.subtree) and paper-language sizes
    in sweeps (fetched / bank / level). A token-level type (pkm) is not routed: it reads no path.
  - `config_key`, `options`: the type's own config section under `memory.` and the dataclass that declares it
    (`"pkm", PKMConfig` for memory.pkm.*), or None. A shipped type's section is a field of MemoryConfig; a
    plug-in's is added to the schema when it is loaded (config.memory_schema), so memory.<key>.<option> is set
    from YAML and key=value like any other key.
  - `skips_anchor_params(mcfg)`: the type replaces anchor sublayers (pkm in replace mode), so those parameters
    get no gradient (the DDP strategy is built to allow that).

`check_config(mcfg)` validates the type's options when the config is loaded (one-line ConfigErrors).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from hmem_lit.registry import MEMORY


class MemoryType(nn.Module):
    """Base class of every memory type (see the module docstring)."""

    routed: ClassVar[bool] = True
    config_key: ClassVar[str | None] = None
    options: ClassVar[type | None] = None

    @classmethod
    def check_config(cls, mcfg: Any) -> None:
        """Type-specific checks of memory.* (raise hmem_lit.config.ConfigError). Routed types need a size."""
        from hmem_lit.config import ConfigError

        if cls.routed and sum(int(r) for r in mcfg.levels) <= 0:
            raise ConfigError(f"memory.levels: memory.type={mcfg.type} needs a non-zero size, e.g. [32, 96]")

    @classmethod
    def skips_anchor_params(cls, mcfg: Any) -> bool:
        """True when the type replaces anchor sublayers, whose parameters then get no gradient (DDP must be told)."""
        return False

    def unused_anchor_params(self, anchor: Any) -> int:
        """Anchor parameters this memory makes unused (pkm in replace mode: the replaced FFNs), which the
        accounting leaves out of the anchor's count."""
        return 0

    def fetch(self, paths: Any, generic: Any = None) -> Any:  # pragma: no cover - the contract
        raise NotImplementedError

    def fetched_params(self) -> int:  # pragma: no cover - the contract
        raise NotImplementedError

    def bank_params(self) -> int:  # pragma: no cover - the contract
        raise NotImplementedError

    def sparse_parameters(self) -> list[nn.Parameter]:  # pragma: no cover - the contract
        raise NotImplementedError


def memory_class(name: str) -> type[MemoryType]:
    """The registered class of memory.type `name` (every shipped type and plug-in imported first)."""
    return MEMORY.get(name)


def memory_types() -> list[str]:
    """Registered memory types (shipped and plugged in), without "none"."""
    return MEMORY.names()


def routed_types() -> list[str]:
    """Memory types that fetch blocks by tree path (sized by memory.levels)."""
    return [n for n in memory_types() if getattr(memory_class(n), "routed", False)]


def is_routed(name: str) -> bool:
    return name != "none" and name in memory_types() and bool(getattr(memory_class(name), "routed", False))
