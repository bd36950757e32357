"""Task generation: the question files of a data directory -> lm-eval task YAMLs with absolute data paths.

The shipped templates (`hmem_lit/evaluation/tasks/_hmem_*.yaml`) define each kind of task; per run, this module
writes thin YAMLs into `<run_dir>/eval/tasks/` that include a template by absolute path and name the data file
(lm-eval resolves relative data paths against the working directory, so nothing here is relative). Which tasks
exist follows the data (the data helper's probe set, or the toy set):

- `questions/<probe>.jsonl` whose items have a frequency `bucket` -> SK probe: one task per bucket
  `hmem_<probe>_bucket<k>` (k = 0 rarest .. 4) and the group `hmem_<probe>` (accuracy over all its entities).
  Generation probes score `acc` by exact match (integer answers: the first integer generated); multiple-choice
  probes score `acc` over their `choices`.
- `questions/<name>.jsonl` without buckets (e.g. `wiki_cloze`, answerable from the held-out text in the prompt)
  -> CK task `hmem_<name>`; a generation CK task also gets a multiple-choice twin `hmem_<name>_mc` (the answer
  among 3 other items' answers absent from the prompt), which separates small models better than exact match.
- `heldout/wiki_val.jsonl` -> `hmem_wiki_ppl` (word perplexity, bits per byte; rolling log-likelihood).
- Groups `hmem_sk` (mean over SK probes) and `hmem_ck` (mean over CK tasks) report unweighted means of `acc`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from hmem_lit.evaluation.tasklib import read_jsonl
from hmem_lit.utils import atomic_write_text

TEMPLATES = Path(__file__).resolve().parent / "tasks"
PAPER_DIR = TEMPLATES / "paper"


@dataclass
class TaskSet:
    """The local tasks generated for one data directory."""

    root: Path
    sk: dict[str, list[int]] = field(default_factory=dict)  # probe -> buckets present
    ck: list[str] = field(default_factory=list)  # CK task names
    ppl: bool = False

    @property
    def names(self) -> list[str]:
        out = []
        for probe, buckets in self.sk.items():
            out += [f"hmem_{probe}"] + [f"hmem_{probe}_bucket{k}" for k in buckets]
        out += self.ck
        if self.sk:
            out.append("hmem_sk")
        if self.ck:
            out.append("hmem_ck")
        if self.ppl:
            out.append("hmem_wiki_ppl")
        return sorted(out)


def _write_yaml(path: Path, obj: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def _task(root: Path, name: str, template: str, **dataset_kwargs) -> None:
    _write_yaml(
        root / f"{name}.yaml", {"include": str(TEMPLATES / template), "task": name, "dataset_kwargs": dataset_kwargs}
    )


def _group(root: Path, name: str, tasks: list[str], weight_by_size: bool) -> None:
    _write_yaml(
        root / f"{name}.yaml",
        {
            "group": name,
            "task": tasks,
            "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": weight_by_size}],
            "metadata": {"version": 1.0},
        },
    )


def mc_twin(items: list[dict], seed: int = 0) -> list[dict]:
    """Generation CK items -> multiple choice: the answer plus 3 other items' answers absent from the prompt."""
    rng = np.random.default_rng(seed)
    pool = sorted({str(it["answer"]) for it in items})
    out = []
    for it in items:
        prompt_l = it["prompt"].lower()
        others = [a for a in pool if a != it["answer"] and a.lower() not in prompt_l]
        if len(others) < 3:
            continue
        choices = [others[i] for i in rng.choice(len(others), 3, replace=False)] + [str(it["answer"])]
        choices = [choices[i] for i in rng.permutation(4)]
        out.append({**it, "choices": choices, "label": choices.index(str(it["answer"]))})
    return out


def build_tasks(data_dir: str | Path, out_dir: str | Path) -> TaskSet:
    """Write the task YAMLs (and derived data files) for `data_dir` into `out_dir`; -> the TaskSet."""
    data_dir, root = Path(data_dir).resolve(), Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ts = TaskSet(root)
    qdir = data_dir / "questions"
    for path in sorted(qdir.glob("*.jsonl")) if qdir.is_dir() else []:
        name, items = path.stem, read_jsonl(path)
        if not items:
            continue
        mc = "choices" in items[0]
        template = "_hmem_multiple_choice.yaml" if mc else "_hmem_generation.yaml"
        buckets = sorted({int(it["bucket"]) for it in items if it.get("bucket") is not None})
        if buckets:
            for k in buckets:
                _task(root, f"hmem_{name}_bucket{k}", template, path=str(path), bucket=k)
            _group(root, f"hmem_{name}", [f"hmem_{name}_bucket{k}" for k in buckets], weight_by_size=True)
            ts.sk[name] = buckets
            continue
        _task(root, f"hmem_{name}", template, path=str(path))
        ts.ck.append(f"hmem_{name}")
        twin = [] if mc else mc_twin(items)
        if twin:
            tpath = root / "data" / f"{name}_mc.jsonl"
            atomic_write_text(tpath, "".join(json.dumps(it) + "\n" for it in twin))
            _task(root, f"hmem_{name}_mc", "_hmem_multiple_choice.yaml", path=str(tpath))
            ts.ck.append(f"hmem_{name}_mc")
    if ts.sk:
        _group(root, "hmem_sk", [f"hmem_{p}" for p in ts.sk], weight_by_size=False)
    if ts.ck:
        _group(root, "hmem_ck", list(ts.ck), weight_by_size=False)
    heldout = data_dir / "heldout" / "wiki_val.jsonl"
    if heldout.is_file():
        _task(root, "hmem_wiki_ppl", "_hmem_perplexity.yaml", path=str(heldout))
        ts.ppl = True
    # the data may have changed: drop stale tasks (after writing, so a concurrent evaluation of another memory
    # mode of the same run never sees a current task missing; every file is replaced atomically)
    for old in root.glob("*.yaml"):
        if old.stem not in ts.names:
            old.unlink(missing_ok=True)
    return ts
