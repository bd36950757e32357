"""Memory types and the hierarchical bank.

`MEMORY` maps `memory.type` to a class; each memory type lives in its own file and registers itself. The contract
(capabilities `routed`, `config_key` + `options`: its own config section; `check_config`) is
`memory.base.MemoryType`. A memory module is built as `cls(mcfg, acfg, branching)` and must provide:
  - `fetch(paths, generic=None) -> MemoryHooks`: paths (B, L) long node ids per level (level-l ids in
    [0, branching**l)); generic (B,) bool selects the context-independent generic block instead. Blocking is
    done by the caller, who passes already-substituted paths (see `bank.choose_unblocked`);
  - `fetched_params() -> int`, `bank_params() -> int` (parameter accounting);
  - `sparse_parameters() -> list[nn.Parameter]`: tensors with sparse gradients, updated row-wise by
    `hmem_lit.optim.RowwiseAdamW` (only fetched rows move). Its other parameters are dense memory parameters.
Modules that are not memory types (base, bank, generic) are listed in `_SUPPORT`; where a bank's tables live is
hmem_lit/storage/.
"""

from hmem_lit.registry import MEMORY  # noqa: F401 (the registry; defined at the bottom layer)

_SUPPORT = ("base", "bank", "generic")
_imported = False


def import_all() -> None:
    """Import every memory-type module so it registers itself (once)."""
    import importlib
    import pkgutil

    global _imported
    if _imported:
        return
    _imported = True
    for m in pkgutil.iter_modules(__path__):
        if not m.name.startswith("_") and m.name not in _SUPPORT:
            importlib.import_module(f"{__name__}.{m.name}")
