"""Task generation: the question files of a data directory -> lm-eval task YAMLs with absolute data paths.

The shipped templates (`hmem_lit/evaluation/tasks/_hmem_*.yaml`) define each kind of task; per run, this module
writes thin YAMLs into `<run_dir>/eval/tasks/` that include a template by absolute path and name the data file
(lm-eval resolves relative data paths against the working directory, so nothing here is relative). Which tasks
exist follows the data (the data helper's probe set, or the toy set):

- `questions/<probe>[.<variant>].jsonl` whose items have a frequency `bucket` -> SK task `hmem_<probe>` (the base
  variant: the training phrasing) or `hmem_<probe>_<variant>` (para, qa, mc, rank; data/questions.py says what
  each measures), over all items. Generation tasks score `acc` by exact match (integer answers: the first integer
  generated); multiple-choice tasks `acc` over their `choices`; rank tasks also the gold answer's rank among all
  candidate values and the distance of the top one (`rank`, `abs_err`). Per-bucket, per-split (dev / test) and
  per-variant numbers are computed from the samples (evaluation/scores.py), not by lm-eval subtasks.
- `questions/<name>.jsonl` without buckets (e.g. `wiki_cloze`, answerable from the held-out text in the prompt)
  -> CK task `hmem_<name>`; a generation CK task also gets a multiple-choice twin `hmem_<name>_mc` (the answer
  among 3 other items' answers absent from the prompt), which separates small models better than exact match.
- `heldout/wiki_val.jsonl` -> `hmem_wiki_ppl` (word perplexity, bits per byte; rolling log-likelihood);
  `heldout/val.jsonl` (the validation split) -> `hmem_val_bpb` (bits per byte per document, for a CI over them).
- Groups: `hmem_sk` (every SK task), `hmem_sk_base` (the training-phrasing tasks only, the quick subset) and
  `hmem_ck` (mean `acc` over the CK tasks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from hmem_lit.evaluation.tasklib import read_jsonl
from hmem_lit.registry import TASKS
from hmem_lit.utils import atomic_write_text

TEMPLATES = Path(__file__).resolve().parent / "tasks"
PAPER_DIR = TEMPLATES / "paper"

# the task families `build_tasks` writes (the module docstring says how) and the shipped paper groups, for `hmem list`
TASKS.register("hmem_<probe>[_<variant>]")("SK task per frequency-bucketed question file (variants para, qa, mc, rank)")
TASKS.register("hmem_<name>[_mc]")("CK task per question file without buckets (e.g. hmem_wiki_cloze) + its MC twin")
TASKS.register("hmem_sk")("group: every SK task")
TASKS.register("hmem_sk_base")("group: the SK tasks in the training phrasing (the quick subset)")
TASKS.register("hmem_ck")("group: mean acc over the CK tasks")
TASKS.register("hmem_wiki_ppl")("word perplexity and bits per byte of the held-out wiki text")
TASKS.register("hmem_val_bpb")("bits per byte per validation document")
TASKS.register("paper_ck")("the paper's common-knowledge tasks and shot counts (needs the hub datasets)")
TASKS.register("paper_sk")("the paper's specific-knowledge tasks and shot counts (needs the hub datasets)")


@dataclass
class TaskSet:
    """The local tasks generated for one data directory."""

    root: Path
    sk: dict[str, tuple[str, str]] = field(default_factory=dict)  # SK task -> (probe, variant)
    ck: list[str] = field(default_factory=list)  # CK task names
    ppl: list[str] = field(default_factory=list)  # perplexity tasks (hmem_wiki_ppl, hmem_val_bpb)

    @property
    def names(self) -> list[str]:
        out = list(self.sk) + self.ck + self.ppl
        if self.sk:
            out += ["hmem_sk", "hmem_sk_base"]
        if self.ck:
            out.append("hmem_ck")
        return sorted(out)


def _write_yaml(path: Path, obj: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def _task(root: Path, name: str, template: str, **dataset_kwargs) -> None:
    _write_yaml(
        root / f"{name}.yaml", {"include": str(TEMPLATES / template), "task": name, "dataset_kwargs": dataset_kwargs}
    )


def _group(root: Path, name: str, tasks: list[str], weight_by_size: bool | None) -> None:
    """A group of tasks; `weight_by_size` None: no lm-eval aggregate (the SK numbers come from the samples)."""
    g: dict = {"group": name, "task": tasks}
    if weight_by_size is not None:
        g["aggregate_metric_list"] = [{"metric": "acc", "aggregation": "mean", "weight_by_size": weight_by_size}]
    _write_yaml(root / f"{name}.yaml", {**g, "metadata": {"version": 1.0}})


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
        stem, items = path.stem, read_jsonl(path)
        if not items:
            continue
        probe, _, variant = stem.partition(".")
        mc = "choices" in items[0]
        if any(it.get("bucket") is not None for it in items):
            name = f"hmem_{probe}" + (f"_{variant}" if variant else "")
            template = "_hmem_rank.yaml" if variant == "rank" else "_hmem_multiple_choice.yaml" if mc else None
            _task(root, name, template or "_hmem_generation.yaml", path=str(path))
            ts.sk[name] = (probe, variant or "base")
            continue
        _task(root, f"hmem_{stem}", "_hmem_multiple_choice.yaml" if mc else "_hmem_generation.yaml", path=str(path))
        ts.ck.append(f"hmem_{stem}")
        twin = [] if mc else mc_twin(items)
        if twin:
            tpath = root / "data" / f"{stem}_mc.jsonl"
            atomic_write_text(tpath, "".join(json.dumps(it) + "\n" for it in twin))
            _task(root, f"hmem_{stem}_mc", "_hmem_multiple_choice.yaml", path=str(tpath))
            ts.ck.append(f"hmem_{stem}_mc")
    if ts.sk:
        _group(root, "hmem_sk", list(ts.sk), weight_by_size=None)
        _group(root, "hmem_sk_base", [t for t, (_, v) in ts.sk.items() if v == "base"], weight_by_size=None)
    if ts.ck:
        _group(root, "hmem_ck", list(ts.ck), weight_by_size=False)
    for task, file in (("hmem_wiki_ppl", "wiki_val.jsonl"), ("hmem_val_bpb", "val.jsonl")):
        heldout = data_dir / "heldout" / file
        if heldout.is_file():
            _task(root, task, "_hmem_perplexity.yaml", path=str(heldout))
            ts.ppl.append(task)
    # the data may have changed: drop stale tasks (after writing, so a concurrent evaluation of another memory
    # mode of the same run never sees a current task missing; every file is replaced atomically)
    for old in root.glob("*.yaml"):
        if old.stem not in ts.names:
            old.unlink(missing_ok=True)
    return ts
