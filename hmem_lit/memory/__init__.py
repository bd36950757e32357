"""Memory types and the hierarchical bank.

`MEMORY` maps `memory.type` to a class; each memory type lives in its own file and registers itself. A memory
module is built as `cls(mcfg, acfg, branching)` and must provide:
  - `fetch(paths, generic=None) -> MemoryHooks`: paths (B, L) long node ids per level (level-l ids in
    [0, branching**l)); generic (B,) bool selects the context-independent generic block instead. Blocking is
    done by the caller, who passes already-substituted paths (see `bank.choose_unblocked`);
  - `fetched_params() -> int`, `bank_params() -> int` (parameter accounting);
  - `sparse_parameters() -> list[nn.Parameter]`: tensors with sparse gradients, updated row-wise by
    `optim.RowwiseAdamW` (only fetched rows move). Its other parameters are dense memory parameters.
Modules that are not memory types (bank, optim, generic, merge, sync) are listed in `_SUPPORT`.
"""

from hmem_lit.registry import Registry

MEMORY = Registry("memory type")
_SUPPORT = ("bank", "optim", "generic", "merge", "sync")


def import_all() -> None:
    """Import every memory-type module so it registers itself."""
    import importlib
    import pkgutil

    for m in pkgutil.iter_modules(__path__):
        if not m.name.startswith("_") and m.name not in _SUPPORT:
            importlib.import_module(f"{__name__}.{m.name}")
