"""Every module that registers a shipped figure kind (the FIGURES registry's loader): figures.py (the paper's
figures), separation_figs.py (editing, attribution, errors) and comparisons.py (rag, head_to_head)."""

from hmem_lit.analysis import comparisons, figures, separation_figs  # noqa: F401 (imported for registration)
