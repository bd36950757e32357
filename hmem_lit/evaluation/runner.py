"""`hmem eval` / `evaluate()`: run harness tasks on a run directory, write results, add headlines to final.json.

    evaluate("runs/exp/name", tasks=None, memory="fetched", limit=None, force=False) -> headline dict

Writes `<run_dir>/eval/<memory>/samples.jsonl` (every harness sample plus the text it routed and its path), merges
the headline numbers into `final.json["eval"][<memory>]`, and last `results.json` (settings, harness results and
groups, timing, routing), each atomically: results.json is the "already evaluated" marker, so a kill anywhere
leaves a state that a rerun completes. Headline keys: `hmem_sk`, `hmem_ck`, `wiki_ppl`, `wiki_bpb`, `<probe>`,
`<probe>/bucket<k>`, CK tasks by name, `n_samples`, `eval_time_s`, `retrieval_time_s`, and (fetched / blocked
modes, data with a key field) `route/<probe>/bucket<k>`: the share of prompts routed to their entity's main leaf
(results.json["routing"] adds the accuracy when routed right vs wrong); `tokens_per_query`, `flops_per_query` (and
with RAG `rag_tokens`): the fact probes' mean cost per query (evaluation/rag.py). `--rag KIND --rag-k K` (a RAG
baseline) writes `eval/<memory>-rag-<kind>-k<k>/` and that final.json section. A user's own tasks (--include-path) go to
`eval/<memory>-<tasks>/` and `final.json["eval"]["<memory>-<tasks>"]`; their metrics, per-bucket accuracy
`<task>/bucket<k>` and routing also join the standard section (`none` for a run without memory). Re-running with
the same settings (tasks, limit, memory, block level, generation and context lengths, weights) is a no-op unless forced.
The paper's hub tasks (`paper_ck`, `paper_sk` and their members) are checked up front: offline, a missing dataset
fails at once with one line naming it and how to provide it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

from hmem_lit import faults, runs
from hmem_lit.config import ConfigError
from hmem_lit.evaluation.rag import check_rag, rag_name
from hmem_lit.evaluation.resources import check_threads
from hmem_lit.evaluation.scores import ITEMS, METRIC_VERSION, item_records, user_prior, write_items
from hmem_lit.evaluation.taskgen import PAPER_DIR, TaskSet, build_tasks
from hmem_lit.utils import atomic_write, dumps, read_json, write_json

log = logging.getLogger("hmem_lit.eval")

# lm-eval task -> (shots, HF dataset path, config name): ../shared/PAPERS.md A6
PAPER_TASKS: dict[str, tuple[int, str, str | None]] = {
    "lambada_openai": (0, "EleutherAI/lambada_openai", "default"),
    "boolq": (0, "aps/super_glue", "boolq"),
    "squad_completion": (0, "hazyresearch/based-squad", "default"),
    "wsc273": (3, "lighteval/winograd_wsc", "wsc273"),
    "coqa": (0, "EleutherAI/coqa", None),
    "winogrande": (5, "allenai/winogrande", "winogrande_xl"),
    "hellaswag": (0, "Rowan/hellaswag", None),
    "arc_easy": (3, "allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": (3, "allenai/ai2_arc", "ARC-Challenge"),
    "triviaqa": (3, "mandarjoshi/trivia_qa", "rc.nocontext"),
    "nq_open": (0, "google-research-datasets/nq_open", None),
    "piqa": (0, "baber/piqa", None),
    "openbookqa": (10, "allenai/openbookqa", "main"),
}
PAPER_GROUPS = {
    "paper_ck": ["lambada_openai", "boolq", "squad_completion", "wsc273", "coqa", "winogrande"],
    "paper_sk": ["hellaswag", "arc_easy", "arc_challenge", "triviaqa", "nq_open", "piqa", "openbookqa"],
}


class _QuietHarness(logging.Filter):
    """Drops lm-eval's per-task hint about --metadata that every `custom_dataset` task triggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def _git_hash() -> str | None:
    """lm-eval's git-hash helper without git's "fatal: not a git repository" on stderr outside a checkout (the
    same answer: `git describe --always`, else the commit file of the working directory's repository)."""
    import subprocess

    from lm_eval.loggers.utils import get_commit_from_path

    try:
        r = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        r = None
    if r is not None and r.returncode == 0:
        return r.stdout.strip()
    return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def quiet_harness():
    """lm-eval at the console's level (hmem_lit/console.py): below -v, no per-task progress bars, no INFO lines,
    no git noise; its warnings that matter (errors) still show. Restores lm-eval's functions on the way out."""
    import lm_eval.api.task as task_mod
    import lm_eval.evaluator as evaluator_mod

    from hmem_lit import console

    console.quiet_libraries()
    task_log = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _QuietHarness) for f in task_log.filters):
        task_log.addFilter(_QuietHarness())
    if console.verbosity() >= console.VERBOSE:
        yield
        return
    saved = evaluator_mod.get_git_commit_hash, task_mod.tqdm
    evaluator_mod.get_git_commit_hash = _git_hash
    task_mod.tqdm = functools.partial(saved[1], disable=True)
    try:
        yield
    finally:
        evaluator_mod.get_git_commit_hash, task_mod.tqdm = saved


def _check_args(limit: int | None, batch_size: int | None, threads: int) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be >= 1 sample per task, got {limit} (omit it for every sample)")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size} (omit it for eval.batch_size)")
    check_threads(threads)


def _check_mode(run_dir: Path, cfg: Any, memory: str | None, block_level: int | None) -> None:
    """Memory modes that need memory are refused on a run without it (they would record a copy of `none`)."""
    mode = memory or cfg.eval.memory
    if block_level is not None and mode != "blocked":
        raise ConfigError(f"--block-level: applies to --memory blocked only (this evaluation: {mode}); drop it")
    if memory in ("blocked", "generic", "random") and cfg.memory.type == "none":
        raise ConfigError(f"--memory {memory}: {run_dir} has no memory (memory.type=none); use --memory none")
    if mode == "blocked":
        level = block_level if block_level is not None else cfg.eval.block_level
        depth = cfg.retriever.depth
        if not 1 <= level <= depth:
            raise ConfigError(
                f"--block-level: must be in 1..{depth} (the run's tree levels, retriever.depth), got {level}"
            )


def prepare_tasks(run: runs.Run) -> TaskSet:
    """Generate the run's local task YAMLs under <run_dir>/eval/tasks (toy runs: the toy data too)."""
    from hmem_lit.evaluation.toydata import write_toy_data

    cfg = run.config
    if cfg.data.source == "toy":
        data_dir = write_toy_data(cfg, run.dir / "eval" / "data")
    else:
        data_dir = run.data_dir
        _refresh_questions(cfg, data_dir)
        if not ((data_dir / "questions").is_dir() or (data_dir / "heldout").is_dir()):
            raise ConfigError(
                f"{data_dir}: no evaluation data (questions/, heldout/); run `hmem data prepare` "
                "with the run's config first"
            )
    return build_tasks(data_dir, run.dir / "eval" / "tasks")


def _refresh_questions(cfg: Any, data_dir: Path) -> None:
    """Question sets written by an older version of the questions stage are rewritten first (the stage is cheap and
    nothing the run trained on changes); a data directory whose training stages differ is left as it is."""
    import dataclasses

    from hmem_lit.data.prepare import prepare, stale_stages

    if not (data_dir / "manifest.json").is_file():
        return
    here = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data_dir)))
    if stale_stages(here) == ["questions"]:
        log.info("%s: question sets from an older version; rewriting them (nothing trained on changes)", data_dir)
        prepare(here, progress=False, verbose=False)


def user_tasks(include_path: list[str] | None, trust: bool = False) -> list[str]:
    """Task and group names defined by the YAMLs under each --include-path directory (checked: it exists and
    holds at least one *.yaml; every YAML reads within the suite's bounds; a `!function` tag, which makes lm-eval
    import and run Python named by the file, needs `trust`), as lm-eval's TaskManager indexes them."""
    if not include_path:
        return []
    from lm_eval.tasks import TaskManager

    from hmem_lit.config_text import load_yaml

    for d in include_path:
        p = Path(d)
        if not p.is_dir():
            raise ConfigError(f"--include-path {d}: not a directory (a folder of lm-eval task YAMLs)")
        files = sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")])
        if not files:
            raise ConfigError(
                f"--include-path {d}: no task YAML (*.yaml) in it; see docs/your_corpus.md for the format"
            )
        for f in files:
            tags: list[str] = []
            load_yaml(f.read_text(encoding="utf-8", errors="replace"), str(f), tags)
            code = [t for t in tags if t.startswith("!function")]
            if code and not trust:
                raise ConfigError(
                    f"{f}: {code[0]} makes lm-eval import and run Python code named in a data file; pass "
                    "--trust-include-path if you wrote these tasks (or remove the tag)"
                )
    names = TaskManager(include_path=[str(Path(d).resolve()) for d in include_path], include_defaults=False).all_tasks
    if not names:
        raise ConfigError(f"--include-path {' '.join(include_path)}: lm-eval found no task in the YAMLs there")
    return sorted(names)


def resolve_tasks(requested: list[str], ts: TaskSet, extra: list[str] | None = None) -> tuple[list[str], bool]:
    """-> (task names, needs the paper's hub tasks). Unknown names raise ConfigError listing the valid ones."""
    valid = set(ts.names) | set(PAPER_TASKS) | set(PAPER_GROUPS) | set(extra or [])
    bad = [t for t in requested if t not in valid]
    if bad:  # only the near names: a run has dozens of tasks (`hmem list` and eval/tasks/ have them all)
        from hmem_lit.errors import did_you_mean

        hints = "".join(did_you_mean(b, sorted(valid)) or f"; {b}: no task of a similar name" for b in bad)
        raise ConfigError(f"unknown task(s) {', '.join(bad)}{hints} (this run's tasks are the YAMLs in {ts.root})")
    paper = any(t in PAPER_TASKS or t in PAPER_GROUPS for t in requested)
    return list(dict.fromkeys(requested)), paper


def check_paper_datasets(tasks: list[str]) -> None:
    """Offline: fail fast, naming the first missing hub dataset, instead of letting the harness retry."""
    if os.environ.get("HF_DATASETS_OFFLINE", "1") == "0":
        return
    import datasets

    names = [m for t in tasks for m in PAPER_GROUPS.get(t, [t]) if m in PAPER_TASKS]
    missing = []
    for name in dict.fromkeys(names):
        _, path, config = PAPER_TASKS[name]
        try:
            datasets.load_dataset_builder(path, config)
        except Exception:  # noqa: BLE001 - offline: any failure means "not in the local cache"
            missing.append((name, path, config))
    if missing:
        name, path, config = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        cache = os.environ.get("HF_DATASETS_CACHE", "~/.cache/huggingface/datasets")
        raise ConfigError(
            f"task {name} needs the hub dataset {path}"
            + (f" ({config})" if config else "")
            + more
            + f", not in HF_DATASETS_CACHE={cache}; download it on a networked machine "
            f"(datasets.load_dataset('{path}'{', ' + repr(config) if config else ''})) and copy the "
            "cache here, or run with HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 where the hub is reachable"
        )


def headline(res: dict[str, Any], ts: TaskSet, items: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Flat headline numbers: the SK probes' and the validation split's from the item records
    (evaluation/scores.py), CK, wiki perplexity and the paper's tasks from the harness results."""
    from hmem_lit.evaluation.scores import headline_from_items

    r = res.get("results", {})

    def get(task: str, metric: str = "acc") -> float | None:
        v = r.get(task, {}).get(f"{metric},none")
        return None if v is None or v == "N/A" else float(v)

    out: dict[str, float | None] = {
        **headline_from_items(items or []),
        "hmem_ck": get("hmem_ck"),
        "wiki_ppl": get("hmem_wiki_ppl", "word_perplexity"),
        "wiki_bpb": get("hmem_wiki_ppl", "bits_per_byte"),
    }
    for t in ts.ck:
        out[t.removeprefix("hmem_")] = get(t)
    for g in PAPER_GROUPS:
        out[g] = get(g)
    return {k: v for k, v in out.items() if v is not None}


def user_headline(res: dict[str, Any], tasks: list[str]) -> dict[str, float]:
    """A user's tasks in the headline: `<task>/<metric>` (`<task>/<metric>_<filter>` under a named filter) for every
    numeric metric lm-eval reports."""
    out = {}
    for t in tasks:
        for k, v in res.get("results", {}).get(t, {}).items():
            metric, _, filt = k.partition(",")
            if filt and not metric.endswith("_stderr") and isinstance(v, (int, float)):
                out[f"{t}/{metric}" + ("" if filt == "none" else f"_{filt}")] = float(v)
    return out


def _settings(run: runs.Run, tasks: list[str], lm: Any, limit: int | None) -> dict[str, Any]:
    st = run.weights.stat()
    return {
        "tasks": sorted(tasks),
        "limit": limit,
        "memory": lm.mode,
        "block_level": lm.retrieval.block_level,
        "max_gen_tokens": lm.max_gen_tokens,
        "max_length": lm.max_length,
        "rolling_context": lm.rolling_context,
        "weights": {"size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "metric_version": METRIC_VERSION,  # a new scoring of the items evaluates again
    }


def _read_marker(marker: Path) -> dict[str, Any]:
    """An earlier evaluation's results.json; a damaged one counts as absent (the evaluation runs again)."""
    try:
        got = read_json(marker)
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def _write_samples(path: Path, samples: dict[str, list[dict]], routing: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for task, rows in samples.items():
                for s in rows:
                    extra = routing.get((task, s.get("doc_id")), {})
                    f.write(dumps({"task": task, **extra, **s}, indent=None) + "\n")

    atomic_write(path, write)


def query_cost(samples: dict[str, list[dict]], log: dict, ts: TaskSet, mine: list[str]) -> dict[str, float]:
    """Mean tokens read, FLOPs and RAG context tokens per query of the fact probes (the SK tasks in the training
    phrasing), or of a user's own tasks when no probe ran (evaluation/rag.py says how FLOPs are counted)."""
    sk = {t for t, (_, variant) in ts.sk.items() if variant == "base"}
    sk = sk if sk & set(samples) else set(mine)
    recs = [log.get((t, s.get("doc_id")), {}) for t, rows in samples.items() if t in sk for s in rows]
    out = {}
    for key, name in (("tokens_read", "tokens_per_query"), ("flops", "flops_per_query"), ("rag_tokens", "rag_tokens")):
        vals = [float(r[key]) for r in recs if key in r]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


def _routing(run: runs.Run, samples: dict, routing_log: dict, ts: TaskSet) -> tuple[dict, dict]:
    """Routing diagnostics of this evaluation (evaluation/routing.py: routing_report) when the run's data has
    key statistics (tree/keys.json, written by `hmem data prepare` for corpora with a key field)."""
    from hmem_lit.data.prepare import key_field
    from hmem_lit.evaluation.routing import routing_report

    cfg = run.config
    field = key_field(cfg) if cfg.data.source != "toy" else None
    path = run.data_dir / "tree" / "keys.json" if field else None
    if path is None or not path.is_file():
        return {}, {}
    assert field is not None  # path is only set for a corpus with a key field
    return routing_report(samples, routing_log, read_json(path), field, ts.sk)


def evaluate(
    run_dir: str | Path,
    tasks: list[str] | None = None,
    memory: str | None = None,
    limit: int | None = None,
    force: bool = False,
    batch_size: int | None = None,
    block_level: int | None = None,
    threads: int = 0,
    print_table: bool = True,
    include_path: list[str] | None = None,
    rag: str | None = None,
    rag_k: int = 1,
    rag_join: str = "causal",
    trust_include: bool = False,
) -> dict[str, float]:
    """Evaluate a run in one memory mode; -> the headline numbers (also merged into final.json). Bad input is a
    ConfigError; an evaluation refused before it wrote anything of its own leaves no eval/ directory behind."""
    run = runs.Run(run_dir)
    eval_dir = run.dir / "eval"
    existed = eval_dir.exists()
    if not run.dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    try:
        with run.lock(shared=True):  # never while the run trains, or while --force wipes it
            _check_args(limit, batch_size, threads)
            check_rag(rag, rag_k, rag_join)
            job = _plan(
                run.check_complete(), tasks, memory, limit, batch_size, block_level, threads, include_path, rag,
                rag_k, rag_join, trust_include,
            )  # fmt: skip
            done = None if force else _already_done(run, job)
            return done if done is not None else _run(run, job, print_table)
    except ConfigError:
        if not existed and eval_dir.is_dir() and not any(eval_dir.glob("*/results.json")):
            import shutil

            shutil.rmtree(eval_dir, ignore_errors=True)  # the task files and toy data it generated first
        raise


@dataclasses.dataclass
class _Job:
    """One evaluation, settled before the harness runs: its tasks, model, section and settings."""

    ts: TaskSet
    names: list[str]  # the tasks to run
    paper: bool  # some are the paper's hub tasks
    mine: list[str]  # the user's own (--include-path) tasks among them
    include_path: list[str]
    limit: int | None
    lm: Any  # the HmemLM
    out_dir: Path  # eval/<section>/
    settings: dict[str, Any]
    previous: dict[str, Any]  # the last evaluation's results.json in out_dir ({} if none or damaged)

    @property
    def key(self) -> str:  # final.json["eval"] section of this evaluation
        return self.out_dir.name

    @property
    def marker(self) -> Path:  # written last: its presence means samples and final.json are in place
        return self.out_dir / "results.json"


def _plan(
    run: runs.Run,
    tasks: list[str] | None,
    memory: str | None,
    limit: int | None,
    batch_size: int | None,
    block_level: int | None,
    threads: int,
    include_path: list[str] | None,
    rag: str | None,
    rag_k: int,
    rag_join: str,
    trust_include: bool,
) -> _Job:
    from hmem_lit.evaluation.adapter import HmemLM

    cfg = run.config
    _check_mode(run.dir, cfg, memory, block_level)
    extra = user_tasks(include_path, trust_include)
    if extra and not tasks:
        raise ConfigError(f"--include-path: name the tasks to run with --tasks (found: {', '.join(extra)})")
    ts = prepare_tasks(run)
    requested = list(tasks) if tasks else [t for t in cfg.eval.tasks if t in ts.names]
    if not requested:
        raise ConfigError(
            f"{run.dir}: none of eval.tasks={cfg.eval.tasks} exist for this run's data; "
            f"valid: {', '.join(ts.names) or '(none: prepare the data first)'}"
        )
    names, paper = resolve_tasks(requested, ts, extra)
    limit = limit if limit is not None else cfg.eval.limit
    lm = HmemLM(
        run,
        memory=memory or cfg.eval.memory,
        batch_size=batch_size,
        block_level=block_level,
        threads=threads,
        rag=rag,
        rag_k=rag_k,
        rag_join=rag_join,
    )
    # a user's own tasks get their own directory, so they never replace the run's standard evaluation
    mine = [t for t in names if t in extra]
    mode_name = lm.mode
    level = block_level if block_level is not None else cfg.eval.block_level
    if lm.mode == "blocked" and level != 1:  # level 1 keeps the name `blocked`; deeper levels get their own
        mode_name = f"blocked-l{level}"
    if rag:  # a RAG baseline is its own section: <memory>-rag-<kind>-k<k>
        mode_name = f"{mode_name}-{rag_name(rag, rag_k, rag_join)}"
    out_dir = run.dir / "eval" / (mode_name if not mine else f"{mode_name}-" + "+".join(mine)[:80])
    settings = _settings(run, names, lm, limit)
    if rag:
        settings["rag"] = {"kind": rag, "k": rag_k, "join": rag_join}
    if include_path:
        settings["include_path"] = sorted(str(Path(d).resolve()) for d in include_path)
    marker = out_dir / "results.json"
    previous = _read_marker(marker) if marker.is_file() else {}
    return _Job(ts, names, paper, mine, list(include_path or []), limit, lm, out_dir, settings, previous)


def _already_done(run: runs.Run, job: _Job) -> dict[str, float] | None:
    """An evaluation with these settings already in place: its headline (final.json repaired from results.json
    when a kill left it behind), else None."""
    old = job.previous
    if old.get("headline") is None or old.get("settings") != job.settings:
        return None
    if not (job.out_dir / "samples.jsonl").is_file():
        return None
    section = run.read_final().get("eval", {}).get(job.key, {})
    if not all(k in section for k in old["headline"]):
        run.update_final(eval={job.key: {**section, **old["headline"]}})
        log.info("%s: repaired final.json[eval][%s] from results.json", job.out_dir, job.key)
    log.info("%s: already evaluated with these settings (pass --force to redo)", job.out_dir)
    return {**section, **old["headline"]}


def _run(run: runs.Run, job: _Job, print_table: bool) -> dict[str, float]:
    """Run the harness, then write samples, items, final.json's section and last results.json."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    stale = set(job.previous.get("headline") or {})  # the previous evaluation's keys: dropped unless measured again
    if job.marker.is_file():
        job.marker.unlink()  # from here until the last write, a kill leaves no marker: a rerun evaluates again
    if job.paper:
        check_paper_datasets(job.names)
    tm = TaskManager(
        include_path=[str(job.ts.root)]
        + ([str(PAPER_DIR)] if job.paper else [])
        + [str(Path(d).resolve()) for d in job.include_path],
        include_defaults=job.paper,
    )
    lm = job.lm
    t0 = time.perf_counter()
    with quiet_harness():
        res = lm_eval.simple_evaluate(
            model=lm, tasks=job.names, task_manager=tm, limit=job.limit, log_samples=True, bootstrap_iters=100
        )
    elapsed = time.perf_counter() - t0
    head, items, route_detail = _headline_of(run, job, res, elapsed)
    _write_samples(job.out_dir / "samples.jsonl", res.get("samples", {}), lm.routing_log)
    write_items(job.out_dir / ITEMS, items)
    faults.point("eval_samples")
    sections = _sections(run, job, head, stale)
    runs.update_final(run.dir, eval=sections)
    faults.point("eval_final")
    timing = {
        "eval_s": elapsed,
        "retrieval_s": lm.retrieval_seconds,
        "model_s": lm.model_seconds,
        "router_load_s": lm.router_load_seconds,
        "routed_texts": len(lm.retrieval.cache),
    }
    write_json(job.marker, _marker(job.settings, head, timing, route_detail, res))
    if print_table:
        print(make_table(res))
        if res.get("groups"):
            print(make_table(res, "groups"))
        log.info(
            f"{run.dir} memory={lm.mode}: {head['n_samples']} samples in {elapsed:.1f}s "
            f"(retrieval {lm.retrieval_seconds:.2f}s, model {lm.model_seconds:.1f}s) -> {job.out_dir}"
        )
    return sections[job.key]


def _headline_of(run: runs.Run, job: _Job, res: dict[str, Any], elapsed: float) -> tuple[dict, list, dict]:
    """-> (headline numbers, item records, routing detail) of a harness result."""
    lm, ts, mine = job.lm, job.ts, job.mine
    n = sum(int(v.get("effective", 0)) for v in res.get("n-samples", {}).values())
    items = item_records(res.get("samples", {}), lm.routing_log, ts)
    head = {
        **headline(res, ts, items),
        **user_headline(res, mine),
        "n_samples": n,
        "eval_time_s": round(elapsed, 3),
        "retrieval_time_s": round(lm.retrieval_seconds, 3),
    }
    own = {t: v for t, v in res.get("samples", {}).items() if t not in ts.ck and t not in ts.ppl}
    route_detail, route_head = _routing(run, own, lm.routing_log, ts)
    head.update(route_head)
    head.update(query_cost(res.get("samples", {}), lm.routing_log, ts, mine))
    head.update(user_prior(res.get("samples", {}), lm.routing_log, mine))
    for t in mine:  # a user's task: its accuracy per bucket too (shipped probes have bucket subtasks)
        head.update({f"{t}/bucket{b}": v["acc"] for b, v in route_detail.get(t, {}).items() if v["acc"] is not None})
    return head, items, route_detail


def _sections(run: runs.Run, job: _Job, head: dict[str, Any], stale: set[str]) -> dict[str, dict]:
    """final.json["eval"] sections this evaluation writes: its own (the previous evaluation's `stale` keys dropped
    unless measured again) and, for a user's tasks, their numbers in the run's standard section too."""
    final = run.read_final()  # afresh: another evaluation of the run may have added its section meanwhile
    kept = {k: v for k, v in final.get("eval", {}).get(job.key, {}).items() if k not in stale}
    sections = {job.key: {**kept, **head}}
    if job.mine:  # the user's metrics also join the run's standard section, so reports draw them beside the rest
        std = job.lm.mode if run.config.memory.type != "none" else "none"  # without memory every mode is "none"
        prefixes = tuple(p for t in job.mine for p in (f"{t}/", f"route/{t}/", f"prior/{t}"))
        own = {k: v for k, v in head.items() if k.startswith(prefixes)}
        sections[std] = {**final.get("eval", {}).get(std, {}), **own}
    return sections


def _marker(settings: dict, head: dict, timing: dict, route_detail: dict, res: dict[str, Any]) -> dict[str, Any]:
    """results.json: the settings (the "already evaluated" check), headline, timing, routing and harness output."""
    return {
        "settings": settings,
        "code": runs.git_state(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "metric_version": METRIC_VERSION,
        "headline": head,
        "timing": timing,
        "routing": route_detail,
        "results": res.get("results"),
        "groups": res.get("groups"),
        "group_subtasks": res.get("group_subtasks"),
        "n-samples": res.get("n-samples"),
        "versions": res.get("versions"),
        "configs": res.get("configs"),
    }
