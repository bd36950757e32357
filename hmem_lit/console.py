"""How the suite talks to a person: one logger tree (`hmem_lit.*`) with levels, set by `hmem -q` / `-v`, and the
chatter of the libraries it drives (lm-eval, datasets, Lightning, transformers, mlflow's database migrations)
silenced unless `-v`.

    quiet (-q)     warnings and errors only; no progress bars (for scripts)
    normal         what each stage does and one progress bar per stage (tqdm, one style)
    verbose (-v)   the above plus debug lines, and every library's own logging, warnings and progress bars

The level travels to worker processes (quickstart's pool, sweep workers) through $HMEM_VERBOSITY, so a spawned
process set up with `setup()` talks at the level its parent was started with. Results a command exists to print
(tables, the report's path, `hmem list`) go to stdout with print(); everything else goes through logging to
stderr. This module imports nothing heavy: the libraries are quietened through their loggers, their environment
variables and warning filters, before they are imported.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

QUIET, NORMAL, VERBOSE = 0, 1, 2
ENV = "HMEM_VERBOSITY"
log = logging.getLogger("hmem_lit")

# libraries whose INFO / WARNING lines are noise for a researcher at the normal level (their errors still show)
LIBRARIES = (
    "lm_eval",
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "datasets",
    "transformers",
    "huggingface_hub",
    "alembic",
    "mlflow",
    "urllib3",
    "filelock",
    "fsspec",
    "optuna",
)
# environment read by the libraries at import time: progress bars and advisory warnings off
QUIET_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def verbosity() -> int:
    """The level this process runs at: $HMEM_VERBOSITY (0 quiet, 1 normal, 2 verbose), normal by default."""
    try:
        return max(QUIET, min(VERBOSE, int(os.environ.get(ENV, NORMAL))))
    except ValueError:
        return NORMAL


def progress() -> bool:
    """Whether to draw progress bars (not in quiet mode)."""
    return verbosity() >= NORMAL


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and verbosity() >= VERBOSE:
            msg += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"hmem: error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"hmem: warning: {msg}"
        return msg if msg.startswith("[") else f"[hmem] {msg}"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test's captured stream, a redirected one)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(level: int | None = None) -> int:
    """Configure the `hmem_lit` logger and quieten the libraries for `level` (None: $HMEM_VERBOSITY). Idempotent;
    -> the level."""
    level = verbosity() if level is None else max(QUIET, min(VERBOSE, level))
    os.environ[ENV] = str(level)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(_Format())
        log.addHandler(handler)
    log.setLevel({QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}[level])
    quiet_libraries(level)
    return level


def quiet_libraries(level: int | None = None) -> None:
    """Libraries' loggers to ERROR, their progress bars and advisory warnings off (normal and quiet); left as the
    libraries set them with -v."""
    level = verbosity() if level is None else level
    if level >= VERBOSE:
        for name in ("lm_eval", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.INFO)
        return
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Lightning's advice (few batches, no workers, logging interval) arrives as warnings from its modules
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?$")
    warnings.filterwarnings("ignore", module=r"pytorch_lightning(\..*)?$")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for lib in ("datasets", "transformers", "huggingface_hub"):
        mod = sys.modules.get(f"{lib}.utils.logging")
        if mod is not None and hasattr(mod, "disable_progress_bar"):
            mod.disable_progress_bar()  # already imported: the environment variable came too late
