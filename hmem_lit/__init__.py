"""hmem_lit: an experiment suite for memory-augmented pretraining (hierarchical memories, memory layers)."""

import logging as _logging
import warnings as _warnings

__version__ = "0.1.0"

# Lightning prints a promotional tip at every Trainer construction and torch a pytree deprecation: neither helps.
_logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda r: "Tip" not in r.getMessage() and "available:" not in r.getMessage()
)
_warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
_warnings.filterwarnings("ignore", message=".*does not have many workers.*")
# Our sampler restarts at the checkpoint's step (data/datamodule.py), so mid-epoch resume is exact; Lightning
# cannot know that and warns that it may not be.
_warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
