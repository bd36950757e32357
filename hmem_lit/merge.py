"""Merge split memory jobs (one per level-1 subtree, `train.subtree=k`) into one run directory (`hmem merge`).

As in the paper, frozen-anchor memory training can run as independent jobs, one per level-1 subtree. Job k only
moves bank rows under subtree k (the row-wise optimiser never touches unfetched rows, and training checks that
every path starts at k), so the merged bank takes, at every level, the rows [k * b**(l-1), (k+1) * b**(l-1)) from
the job that owned subtree k, and every other row from any job. Everything else (the frozen anchor, level
tables' unowned rows) must be bit-identical across jobs, else the merge stops with the offending key and jobs.
Files are read lazily (safetensors slices): one tensor at a time, bank tables a block of rows at a time (written as
they are assembled), so banks larger than RAM merge.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from hmem_lit.config import RunConfig, save_config, to_dict
from hmem_lit.storage import disk
from hmem_lit.storage.disk import RowBlocks, write_safetensors
from hmem_lit.utils import atomic_write, write_json

_BANK_KEY = re.compile(r"^memory\.bank\.level(\d+)$")
WEIGHTS = "model.safetensors"


def _owned(n_rows: int, level: int, branching: int, subtree: int) -> torch.Tensor:
    """(n_rows,) bool: rows of a level table that belong to level-1 subtree `subtree`."""
    span = branching ** (level - 1)
    mask = torch.zeros(n_rows, dtype=torch.bool)
    mask[subtree * span : (subtree + 1) * span] = True
    return mask


def _merged_rows(
    files: list[Any], dirs: list[Path], key: str, level: int, branching: int, subtrees: list[int]
) -> Iterator[torch.Tensor]:
    """The merged table `key`, a block of rows at a time: each job's owned rows, the rest from any job (which must
    agree there). Reads only one block of every job's table at once (safetensors slices): the bank need not fit
    in RAM."""
    slices = [f.get_slice(key) for f in files]
    shape = slices[0].get_shape()
    n_rows = shape[0]
    owned_all = [_owned(n_rows, level, branching, k) for k in subtrees]
    step = disk.rows_per_block(tuple(shape), slices[0][0:1].element_size())
    for start in range(0, n_rows, step):
        tensors = [sl[start : start + step] for sl in slices]
        owned = [o[start : start + step] for o in owned_all]
        for i in range(len(dirs)):  # rows owned by neither job i nor a reference job must agree (untouched)
            ref = 1 if i == 0 else 0
            shared = ~(owned[i] | owned[ref])
            if not torch.equal(tensors[i][shared], tensors[ref][shared]):
                raise ValueError(
                    f"{key}: {dirs[i]} changed rows outside its subtree {subtrees[i]} "
                    f"(or its initialisation differs from {dirs[ref]})"
                )
        out = tensors[0].clone()
        for t, mask in zip(tensors, owned):
            out[mask] = t[mask]
        yield out


def _job_params(run_dir: Path) -> dict[str, int]:
    from hmem_lit.runs import FINAL, read_final

    return dict(read_final(run_dir).get("params") or {}) if (run_dir / FINAL).is_file() else {}


_MERGE_FILES = {"config.yaml", "final.json", WEIGHTS, ".hmem-run"}


def _check_merge_out(out: Path) -> None:
    """--out: a new or empty directory, or an earlier merge's own output (a rerun replaces it); never a trained run
    or a directory holding anything else."""
    from hmem_lit.runs import FINAL, check_out_dir, read_final

    if out.is_dir() and any(out.iterdir()):
        names = {p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}
        if names <= _MERGE_FILES and (not (out / FINAL).is_file() or "merged_from" in read_final(out)):
            return  # an earlier (maybe interrupted) merge into this directory
    check_out_dir(out)


def merge_banks(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Build out_dir/model.safetensors (+ config.yaml, final.json) whose bank rows come from their subtree's job."""
    from hmem_lit.runs import check_weights, load_run_config

    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise ValueError("merge needs at least two subtree runs")
    _check_merge_out(Path(out_dir))
    cfgs: list[RunConfig] = [load_run_config(d) for d in dirs]
    subtrees = [c.train.subtree for c in cfgs]
    if any(k is None for k in subtrees) or len(set(subtrees)) != len(subtrees):
        raise ValueError(f"each run must have its own train.subtree; got {dict(zip(map(str, dirs), subtrees))}")
    for c, d in zip(cfgs[1:], dirs[1:]):
        if (c.memory, c.anchor, c.retriever.branching) != (cfgs[0].memory, cfgs[0].anchor, cfgs[0].retriever.branching):
            raise ValueError(f"{d}: memory / anchor / branching config differs from {dirs[0]}")
    b = cfgs[0].retriever.branching
    files = [safe_open(str(check_weights(d / WEIGHTS)), framework="pt") for d in dirs]
    keys = set(files[0].keys())
    for f, d in zip(files[1:], dirs[1:]):
        if set(f.keys()) != keys:
            raise ValueError(f"{d}: its weights hold different tensors from {dirs[0]}")

    merged: dict[str, torch.Tensor | RowBlocks] = {}
    for key in sorted(keys):
        m = _BANK_KEY.match(key)
        if m is None:  # level-agnostic: must be identical everywhere
            tensors = [f.get_tensor(key) for f in files]
            for t, d in zip(tensors[1:], dirs[1:]):
                if not torch.equal(t, tensors[0]):
                    raise ValueError(
                        f"{key} differs between {dirs[0]} and {d}: only bank rows may differ across "
                        "subtree jobs (same seed, frozen anchor, no generic block?)"
                    )
            merged[key] = tensors[0]
            continue
        shape = tuple(files[0].get_slice(key).get_shape())
        dtype = files[0].get_slice(key)[0:1].dtype
        rows = functools.partial(
            _merged_rows, files, dirs, key, int(m[1]), b, [int(k) for k in subtrees if k is not None]
        )
        merged[key] = RowBlocks(shape, dtype, rows)  # assembled and checked a block of rows at a time, as written

    out = Path(out_dir)
    existed = out.exists()
    try:
        atomic_write(out / WEIGHTS, lambda tmp: write_safetensors(merged, tmp))
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused merge leaves nothing behind
        raise
    from hmem_lit.runs import mark_run_dir

    mark_run_dir(out)  # a run directory of ours (a later --force or merge may replace it)
    cfg = dataclasses.replace(cfgs[0], name=out.name, train=dataclasses.replace(cfgs[0].train, subtree=None))
    save_config(cfg, out / "config.yaml")
    write_json(
        out / "final.json",
        {
            "status": "complete",
            "experiment": cfg.experiment,
            "name": cfg.name,
            "merged_from": [str(d) for d in dirs],
            "subtrees": subtrees,
            # the jobs share one model shape: their parameter counts are the merged run's (hmem report labels)
            "params": _job_params(dirs[0]),
            "metrics": {},
            "config": to_dict(cfg),
        },
    )
    return out


def merge(run_dirs: list[str], out: str) -> int:
    """CLI entry (`hmem merge RUN_DIR... --out DIR`): merge, print a one-line summary, return the exit status."""
    path = merge_banks(run_dirs, out)
    logging.getLogger("hmem_lit").info(f"merged {len(run_dirs)} subtree runs into {path / WEIGHTS}")
    return 0
