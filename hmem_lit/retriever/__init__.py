"""The retriever: document embedders, the hierarchical k-means tree, and retrievers (tree, random, oracle) behind
one contract (base.py: fit / save / load / route, registered in `RETRIEVERS`).

Training paths are computed offline during data preparation (hmem_lit.data.prepare, whose tree stage fits the
configured retriever); evaluation routes prompts with `load_router(data_dir, cfg)`.
"""

from hmem_lit.registry import RETRIEVERS
from hmem_lit.retriever.base import Fitted, Retriever, load_router, retriever_class

__all__ = ["RETRIEVERS", "Fitted", "Retriever", "load_router", "retriever_class", "import_all"]


def import_all() -> None:
    """Import every shipped retriever module so it registers itself, then the plug-ins ($HMEM_PLUGINS)."""
    import hmem_lit.retriever.routing  # noqa: F401
    import hmem_lit.retriever.tree  # noqa: F401
    from hmem_lit.registry import load_plugins

    load_plugins()
