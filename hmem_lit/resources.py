"""Where the shipped experiments, sweeps and figure specs are: the one search path for them.

`shipped_dir(kind)`, kind one of `experiments` (experiments/*.yaml), `sweeps` (sweeps/*.yaml) and `analysis`
(the figure specs analysis/*.yaml), returns

1. the checkout's top-level folder `<checkout>/<kind>/` when the package runs from a source checkout (an
   editable install or PYTHONPATH=<checkout>), so editing experiments/ in a checkout takes effect at once;
2. otherwise the copy installed inside the package, `hmem_lit/_shipped/<kind>/`, which the wheel build
   (`setup.py`, build_py) copies from the checkout's folders.

A checkout is recognised by the package's parent folder holding `pyproject.toml` and `experiments/`.
Names given on the command line (`hmem train 000_debug`, `hmem sweep memory_type`) are looked up in these
folders; a path to a file of your own is always used as given.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("experiments", "sweeps", "analysis")
PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "_shipped"


def checkout_root() -> Path | None:
    """The source checkout the package runs from, or None for an installed copy."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "experiments").is_dir():
        return root
    return None


def shipped_dir(kind: str) -> Path:
    """The folder of the shipped resource `kind` (see the module docstring for the search order)."""
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; allowed: {', '.join(KINDS)}")
    root = checkout_root()
    return root / kind if root is not None else SHIPPED_DIR / kind


def work_root() -> Path:
    """Where outputs without a path given go (`hmem report`'s analysis/generated/): the working directory, in a
    checkout too (a command run from another folder writes there, not into the checkout). Never inside an
    installed package."""
    return Path.cwd()
