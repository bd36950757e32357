"""Side studies: experiments that load trained runs and train, ablate or compare them further, each with its own
`hmem` verb, listed after the main path in `hmem --help` (verbs.py).

- editing.py (`hmem edit`): change N people's birth city, retrain only their blocks vs a dense fine-tune.
- attribution.py (`hmem attribute`): which bank level holds which facts, and why memory gets facts wrong.
- direct.py: the direct fact scoring both use (no harness), and the facts-corpus check.
- ablations.py (`hmem ablations`): the paper's ablation sweeps read back as one page.

This package sits above evaluation/ and analysis/: it imports them, nothing in the rest of the package imports it
(but cli.py, for the verbs; tests/test_layers.py checks). Its figures are analysis's kinds (separation_figs.py),
since `hmem report` draws them from what these verbs write into the run directories.
"""
