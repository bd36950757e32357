"""The retriever: document embedders, the hierarchical k-means tree, and routers (tree, random, oracle).

Training paths are computed offline during data preparation (hmem_lit.data.prepare); evaluation embeds and
routes prompts with `load_router(data_dir, cfg)`.
"""

from hmem_lit.retriever.routing import RETRIEVERS, Router, load_router

__all__ = ["RETRIEVERS", "Router", "load_router"]
