"""Run directories: `runs/<experiment>/<name>/` with config.yaml, manifest.json, metrics.jsonl, checkpoints/,
model.safetensors, eval/ and final.json (written last and atomically: its presence means "complete").

Analysis, evaluation and sweeps read these files only, through the helpers here. A verb that reads one run opens
it once as a `Run` (config, final record, weights, data directory, tokenizer, lock) instead of re-deriving them
from the path:

    run = Run.open("runs/exp/name")     # a complete run with readable weights, or one ConfigError line
    run.config, run.final, run.data_dir, run.tokenizer(), run.lock(shared=True)
    model, cfg = model.load_model(run)  # the model and the router (evaluation/routing.py) take a Run's parts
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from hmem_lit.config import ConfigError, RunConfig, RunError, from_dict, load_config  # noqa: F401 (RunError: re-export)
from hmem_lit.utils import atomic_write_text, read_json, write_json

log = logging.getLogger(__name__)

# metrics.jsonl keys / final.json entries that are timings: they differ between a resumed and an uninterrupted run
TIMING_KEYS = ("time", "train/tokens_per_s", "train/mfu")
FINAL_TIMINGS = ("train_time_s", "throughput")
CONFIG, MANIFEST, METRICS, FINAL, WEIGHTS = (
    "config.yaml",
    "manifest.json",
    "metrics.jsonl",
    "final.json",
    "model.safetensors",
)
LAST_CKPT = "checkpoints/last.ckpt"
CKPT_SUM = "checkpoints/last.ckpt.sha256"  # the sha256 digests a committed last.ckpt may have (see commit_checkpoint)

_PACKAGES = (
    "hmem_lit",
    "torch",
    "lightning",
    "torchmetrics",
    "lm_eval",
    "faiss-cpu",
    "omegaconf",
    "optuna",
    "numpy",
    "tokenizers",
)


def git_state() -> dict[str, Any]:
    """The source checkout's commit; none for an installed copy (its version is in the manifest's packages)."""
    from hmem_lit.resources import checkout_root

    root = checkout_root()
    if root is None:
        return {"git_sha": None, "git_dirty": False}
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    return {"git_sha": sha or None, "git_dirty": dirty}


def manifest(cfg: RunConfig, device: str) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {
        **git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device,
        "seed": cfg.train.seed,
        "packages": versions,
        "argv": sys.argv,
    }


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / FINAL).is_file()


def eval_section(final: dict[str, Any], mode: str) -> dict[str, Any]:
    """final.json's evaluation in memory mode `mode`. A run without memory files every evaluation under `none`
    (all modes are the same model); older such runs filed it under `fetched`: either answers any mode."""
    ev = final.get("eval") or {}
    if ev.get(mode):
        return ev[mode]
    if ((final.get("config") or {}).get("memory") or {}).get("type", "none") == "none":
        return ev.get("none") or ev.get("fetched") or {}
    return {}


def read_final(run_dir: str | Path) -> dict[str, Any]:
    """final.json of a run; a damaged one is a ConfigError naming the file (not a JSON traceback)."""
    path = Path(run_dir) / FINAL
    try:
        final = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path}: corrupt (not valid JSON: {e}); retrain the run (hmem train <its experiment> --force) "
            "or restore the file"
        ) from None
    if not isinstance(final, dict):
        raise ConfigError(f"{path}: corrupt (not a JSON object); retrain the run or restore the file")
    return final


def check_out_dir(out: str | Path, flag: str = "--out", empty: bool = True) -> Path:
    """An output directory a command will create: not an existing file, and (empty=True) not a directory with
    anything in it (a trained run, say), which the command would overwrite. -> the path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: is a file, not a directory; choose a new directory")
    if empty and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{flag} {out}: exists and is not empty; choose a new directory")
    return out


def check_weights(path: str | Path) -> Path:
    """A run's safetensors file, checked readable (header and data extent) before anything uses it: a truncated
    or damaged one is a ConfigError naming the file. -> the path."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors' SafetensorError, or an OSError of a damaged file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"{path}: corrupt or unreadable weights ({first}); retrain the run (hmem train <its experiment> "
            "--force) or restore the file"
        ) from None
    return path


def update_final(run_dir: str | Path, **sections: Any) -> None:
    """Merge sections into final.json (atomically, and under an exclusive lock for the read-modify-write, so two
    evaluations of one run never drop each other's sections); used by evaluation to add headline numbers."""
    path = Path(run_dir) / FINAL
    with open(path.parent.parent / f".{path.parent.name}.final.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            final = read_final(path.parent)
            for k, v in sections.items():
                if isinstance(v, dict) and isinstance(final.get(k), dict):
                    final[k].update(v)
                else:
                    final[k] = v
            write_json(path, final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every valid record of metrics.jsonl. A line that is not UTF-8 JSON (a torn last line of a killed run, a
    damaged one anywhere) is skipped with a warning naming file:line; the records after it still count."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    out = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict) or not isinstance(rec.get("step", 0), int):
                raise ValueError("not a record")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i < len(lines) or raw.endswith(b"}"):  # a torn last line of a killed run is expected: no warning
                log.warning("%s:%d: skipping a line that is not a metrics record (%s)", path, i, type(e).__name__)
            continue
        out.append(rec)
    return out


def truncate_metrics(run_dir: str | Path, max_step: int) -> None:
    """Drop records logged at or after checkpoint step `max_step` (by a run killed after it) before resuming; every
    valid record before it is kept (unreadable lines are dropped, with the warning read_metrics gives)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) < max_step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ checkpoints


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def commit_checkpoint(tmp: Path, run_dir: Path) -> None:
    """Rename a fully written checkpoint over checkpoints/last.ckpt, recording its digest first. The digest file
    lists the new digest and the one it replaces, so a kill between the two writes leaves a pair that verifies."""
    run_dir = Path(run_dir)
    path, sums = run_dir / LAST_CKPT, run_dir / CKPT_SUM
    if tmp.is_dir():  # a sharded (directory) checkpoint: no single digest; keep the plain rename
        sums.unlink(missing_ok=True)
        os.replace(tmp, path)
        return
    new = file_sha256(tmp)
    old = _read_sums(sums)[:1] if path.is_file() else []
    write_json(sums, {"sha256": [new, *old]})
    os.replace(tmp, path)
    write_json(sums, {"sha256": [new]})


def _read_sums(path: Path) -> list[str]:
    try:
        return list(read_json(path)["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def verify_checkpoint(run_dir: str | Path) -> None:
    """Raise ConfigError when last.ckpt does not match its recorded digest (damaged in place, even at the same
    size). A checkpoint from before digests were recorded (no digest file) is accepted."""
    run_dir = Path(run_dir)
    path, sums = run_dir / LAST_CKPT, run_dir / CKPT_SUM
    if not sums.is_file() or not path.is_file():
        return
    if file_sha256(path) not in _read_sums(sums):
        raise ConfigError(
            f"{path}: checksum mismatch (the file changed after it was written, see {sums}); "
            "delete checkpoints/ to restart from scratch, or pass --force"
        )


@contextlib.contextmanager
def run_lock(run_dir: str | Path, shared: bool = False):
    """Hold a lock on a run directory: exclusive while training it (a second trainer, or a `--force` that would wipe
    it, stops with one line), shared while reading it (`hmem eval`: several evaluations of one run may run at once,
    none while it trains).

    The lock file sits beside the run directory (runs/<experiment>/.<name>.lock) so --force can delete the
    directory while holding it. Data-parallel ranks other than the first run under its lock: Lightning's launcher
    children (LOCAL_RANK > 0), and the tasks of one Slurm job (SLURM_PROCID > 0 of SLURM_NTASKS > 1)."""
    slurm_rank = (
        int(os.environ.get("SLURM_PROCID", "0") or 0) if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 else 0
    )
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 or slurm_rank > 0:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = run_dir.parent / f".{run_dir.name}.lock"
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()  # a trainer writes its pid; evaluations (shared) write nothing
            doing = f"being trained by {holder}" if holder else "being evaluated by another process"
            raise RunError(
                f"{run_dir}: is {doing} (lock {lock}); wait for it to finish"
                + ("" if shared else ", or choose another name=...")
            ) from None
        if not shared:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
            f.flush()
        try:
            yield
        finally:
            if not shared:
                f.seek(0)
                f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ ownership

MARKER = ".hmem-run"  # written first into every run directory the suite creates: --force deletes only those
_LEGACY = (CONFIG, "manifest.json", FINAL)  # a run directory written before the marker existed holds these


def owned(run_dir: str | Path) -> bool:
    """Whether `run_dir` is a run directory this suite created (its marker, or an older run's own files)."""
    d = Path(run_dir)
    return (d / MARKER).is_file() or ((d / "manifest.json").is_file() and (d / CONFIG).is_file())


def claim_run_dir(run_dir: str | Path) -> None:
    """Refuse, in one line, a run directory the suite must not write into: a symbolic link (never followed), a
    file, or an existing directory it did not create (a user's files there would be trained into or, with
    --force, deleted)."""
    d = Path(run_dir)
    if d.is_symlink():  # the run directory itself (a runs/ folder linked to a big disk is fine)
        raise ConfigError(
            f"{d}: is a symbolic link; hmem never writes through one. Use the real path (out_dir=...) or another "
            "name=..."
        )
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d}: exists and is a file, not a run directory; choose another name=... or out_dir=...")
    if d.is_dir() and any(d.iterdir()) and not owned(d):
        raise ConfigError(
            f"{d}: exists and was not created by hmem (no {MARKER} marker); hmem neither trains into nor deletes "
            "it: choose another name=... or out_dir=..., or move the directory away"
        )


def claim_out_dir(out: str | Path, marker: str, legacy: tuple[str, ...], flag: str = "--out") -> Path:
    """An output directory a command fills and may refill (a report): new, empty, or one it made before (its
    `marker`, or the `legacy` files an older version wrote); never a file, a symbolic link or a directory holding
    anything else. Creates it and writes the marker. -> the path."""
    out = Path(out)
    if out.is_symlink():
        raise ConfigError(f"{flag} {out}: is a symbolic link; hmem never writes through one: give the real path")
    check_out_dir(out, flag, empty=False)
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        if not all((out / f).exists() for f in legacy):
            raise ConfigError(
                f"{flag} {out}: exists, is not empty and was not written by hmem (no {marker} marker); choose a "
                "new directory"
            )
    out.mkdir(parents=True, exist_ok=True)
    if not (out / marker).is_file():
        atomic_write_text(out / marker, "written by hmem_lit; its files are replaced when it is written again\n")
    return out


def mark_run_dir(run_dir: str | Path) -> None:
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / MARKER).is_file():
        atomic_write_text(d / MARKER, "a run directory created by hmem_lit\n")


def throughput(run_dir: str | Path) -> float | None:
    """Steady-state training tokens/s from metrics.jsonl: the median rate over consecutive training records, so
    start-up, validation pauses and the gap of a resumed run do not count."""
    recs = [r for r in read_metrics(run_dir) if "train/loss" in r]
    rates = sorted(
        (b["tokens"] - a["tokens"]) / (b["time"] - a["time"])
        for a, b in zip(recs, recs[1:])
        if b["time"] > a["time"] and b["tokens"] > a["tokens"]
    )
    return rates[len(rates) // 2] if rates else None


def load_run_config(run_dir: str | Path) -> RunConfig:
    p = Path(run_dir) / CONFIG
    if not p.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG})")
    return load_config(p)


def list_runs(root: str | Path) -> list[Path]:
    """Every directory below `root` that looks like a run (has config.yaml), complete or not."""
    return sorted(p.parent for p in Path(root).rglob(CONFIG) if "checkpoints" not in p.parts)


def write_manifest(run_dir: Path, cfg: RunConfig, device: str) -> None:
    write_json(run_dir / MANIFEST, manifest(cfg, device))


def resolve_data_dir(cfg: Any) -> Path:
    """A run's prepared data directory (`data.dir`). A relative one is looked up from the working directory first,
    then, when the package runs from a source checkout, from the checkout's root (runs are usually trained there)."""
    from hmem_lit.resources import checkout_root

    d = Path(cfg.data.dir)
    root = checkout_root()
    if d.is_absolute() or d.exists() or root is None:
        return d
    alt = root / d
    return alt if alt.exists() else d


def load_run_tokenizer(cfg: Any, data_dir: Path | None = None) -> Any:
    """The tokenizer a run was trained with (same interface as toy.ByteTokenizer): the byte tokenizer for the toy
    source, else `<data dir>/tokenizer.json`; a missing one is a ConfigError saying what to run."""
    if cfg.data.source == "toy":
        from hmem_lit.data.toy import ByteTokenizer

        return ByteTokenizer()
    from hmem_lit.data.tokenizer import load_tokenizer

    root = data_dir if data_dir is not None else resolve_data_dir(cfg)
    try:
        return load_tokenizer(root)
    except FileNotFoundError:
        raise ConfigError(
            f"{root / 'tokenizer.json'}: the run's tokenizer is missing; run "
            "`hmem data prepare <experiment>` with the run's config (data.dir)"
        ) from None


class Run:
    """One run directory, opened once by a verb that reads it: its config, final record (read once, on first
    use), weights, data directory, tokenizer and lock. `Run(path)` checks nothing; `Run.open(path)` requires a
    complete run with readable weights (what evaluation and generation need)."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """A complete run (final.json) with readable weights; anything else is one ConfigError line."""
        return cls(path).check_complete()

    def check_complete(self) -> Run:
        if not self.dir.is_dir():
            raise ConfigError(f"{self.dir}: no such run directory")
        if not self.weights.is_file():
            raise ConfigError(f"{self.dir}: no {WEIGHTS}; train the run to completion first (hmem train ...)")
        if not (self.dir / FINAL).is_file():
            raise ConfigError(f"{self.dir}: no {FINAL}; the run is not complete")
        check_weights(self.weights)
        return self

    @property
    def weights(self) -> Path:
        return self.dir / WEIGHTS

    @functools.cached_property
    def final(self) -> dict[str, Any]:
        """final.json as it was when first read ({} for an incomplete run); `read_final` reads it afresh."""
        return read_final(self.dir) if is_complete(self.dir) else {}

    def read_final(self) -> dict[str, Any]:
        """final.json now (another evaluation may have added sections since `final` was read)."""
        self.__dict__.pop("final", None)
        return self.final

    def update_final(self, **sections: Any) -> None:
        update_final(self.dir, **sections)
        self.__dict__.pop("final", None)

    @functools.cached_property
    def config(self) -> RunConfig:
        """The config the run trained with: final.json's (resolved at the end), else config.yaml."""
        return from_dict(self.final["config"]) if "config" in self.final else load_run_config(self.dir)

    @functools.cached_property
    def data_dir(self) -> Path:
        return resolve_data_dir(self.config)

    def tokenizer(self) -> Any:
        return load_run_tokenizer(self.config, self.data_dir)

    def lock(self, shared: bool = False) -> contextlib.AbstractContextManager:
        """run_lock on this run: shared while reading it, exclusive while training it."""
        return run_lock(self.dir, shared)
