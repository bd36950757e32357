"""`hmem <verb>`: a table of verb -> function. Bad input exits with status 2 and one line, no traceback. Each verb
imports its implementation when it runs, so `hmem --help` and a typo's error load no torch, Lightning or lm-eval."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from hmem_lit import __version__, console
from hmem_lit.anchor_config import PRESETS, AnchorConfig, anchor_params
from hmem_lit.checks import preflight
from hmem_lit.config import ConfigError, RunError, load_config, to_dict
from hmem_lit.errors import did_you_mean
from hmem_lit.launch import add_args as add_launcher_args
from hmem_lit.launch import check_local
from hmem_lit.registry import CORPORA, EMBEDDERS, MEMORY, RETRIEVERS, TASKS, TREE_REFINERS, TREE_ROUTERS
from hmem_lit.resources import checkout_root, shipped_dir
from hmem_lit.studies.verbs import VERBS as STUDY_VERBS
from hmem_lit.studies.verbs import Add
from hmem_lit.studies.verbs import add_parsers as add_study_parsers

EXPERIMENTS_DIR = shipped_dir("experiments")  # the checkout's experiments/, else the installed copy
SWEEPS_DIR = shipped_dir("sweeps")


def _experiment_path(name: str | None) -> str | None:
    """Accept a path, or a name like 000_debug of a shipped experiment (hmem_lit.resources); None or '-' means
    defaults only."""
    if name in (None, "-"):
        return None
    if Path(name).is_file():
        return name
    for cand in (EXPERIMENTS_DIR / name, EXPERIMENTS_DIR / f"{name}.yaml"):
        if cand.is_file():
            return str(cand)
    if Path(name).is_dir():
        return name  # read_yaml says what a directory is not
    hint = did_you_mean(Path(name).stem, [p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")])
    raise ConfigError(f"{name}: experiment file not found{hint or ' (see `hmem list` for the shipped experiments)'}")


def cmd_train(a: argparse.Namespace) -> int:
    cfg = load_config(_experiment_path(a.experiment), a.overrides)  # before Lightning's import: typos fail fast
    from hmem_lit.train import train

    if a.launcher == "slurm":
        from hmem_lit.launch import verbs

        return verbs.train(a, _experiment_path(a.experiment))
    check_local(a)
    train(cfg, force=a.force)
    return 0


def question(path: Path) -> str:
    """The question an experiment or sweep YAML opens with (`# Question: ...`, continued on indented comment
    lines), else its first comment line."""
    lines, first = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        first = first or text
        if text.lower().startswith("question:"):
            lines = [text.split(":", 1)[1].strip()]
        elif lines and line.startswith("#  ") and not text.split(":")[0].istitle():
            lines.append(text)
        elif lines:
            break
    return " ".join(lines) or first


def cmd_list(a: argparse.Namespace) -> int:
    """Presets, registered components, experiments and sweeps, without importing torch (counts by arithmetic,
    components read from their source: Registry.scan)."""
    print("anchor presets:")
    for name, p in PRESETS.items():
        acfg = AnchorConfig(**{**p, "preset": name, "vocab_size": p.get("vocab_size") or 4096})
        vocab = "" if "vocab_size" in p else " (at vocab 4096)"
        print(
            f"  {name:20s} layers={acfg.n_layer:<3d} d={acfg.d_model:<5d} heads={acfg.n_head}x{acfg.head_dim:<4d} "
            f"ffn={acfg.d_ff:<5d} params={anchor_params(acfg):,}{vocab}"
        )
    print(f"  {'hf':20s} a Hugging Face causal LM: anchor.hf_path=<local dir> or anchor.hf_family=llama|qwen2|gemma3")
    kinds = {n: "routed" if attrs.get("routed", True) else "token-level" for n, attrs in MEMORY.scan().items()}
    print("memory types: none, " + ", ".join(f"{n} ({k})" for n, k in kinds.items()))
    print(f"retrievers (retriever.type): {', '.join(RETRIEVERS.scan())};  embedders: {', '.join(EMBEDDERS.scan())}")
    for key, reg in (("router", TREE_ROUTERS), ("refine", TREE_REFINERS)):
        for name, attrs in reg.scan().items():
            print(f"  retriever.tree.{key}={name:9s} {attrs.get('value', '')}")
    print("built-in corpora (data.source=builtin):")
    for name, attrs in CORPORA.scan().items():
        print(f"  data.corpus={name:9s} {attrs.get('about', '')}")
    print("eval tasks (eval.tasks; the hmem_* ones generated from each run's prepared data):")
    for name, attrs in TASKS.scan().items():
        print(f"  {name:26s} {attrs.get('value', '')}")
    for title, folder in (("experiments", EXPERIMENTS_DIR), ("sweeps", SWEEPS_DIR)):
        print(f"{title} ({folder}):")
        for path in sorted(folder.glob("*.yaml")):
            q = question(path)
            print(f"  {path.stem:24s} {q[:140] + ('...' if len(q) > 140 else '')}".rstrip())
    return 0


def _split(a: argparse.Namespace) -> None:
    """`hmem info key=value ...` without an experiment: the first override landed in `experiment`."""
    if a.experiment and "=" in a.experiment:
        a.overrides, a.experiment = [a.experiment, *a.overrides], None


def cmd_info(a: argparse.Namespace) -> int:
    _split(a)
    cfg = load_config(_experiment_path(a.experiment), a.overrides)
    if a.config:  # the resolved config, as a run directory's config.yaml would hold it
        print(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))), end="")
        return 0
    from hmem_lit.model import info

    print(info(cfg))
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    _split(a)
    from hmem_lit.data.prepare import prepare_main

    if a.launcher == "slurm":
        from hmem_lit.launch import verbs

        return verbs.prepare(a, main, _experiment_path(a.experiment))
    check_local(a)
    cfg = load_config(_experiment_path(a.experiment), a.overrides)
    preflight(cfg, training=False)
    return prepare_main(cfg, force=a.force)


def cmd_eval(a: argparse.Namespace) -> int:
    from hmem_lit.evaluation.runner import evaluate

    if a.launcher == "slurm":
        from hmem_lit.launch import verbs

        return verbs.evaluate(a, main)
    check_local(a)
    evaluate(
        a.run_dir,
        tasks=a.tasks,
        memory=a.memory,
        limit=a.limit,
        force=a.force,
        batch_size=a.batch_size,
        block_level=a.block_level,
        threads=a.threads,
        include_path=a.include_path,
        rag=a.rag,
        rag_k=a.rag_k,
        rag_join=a.rag_join,
        trust_include=a.trust_include_path,
    )
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from hmem_lit.analysis.report import report_main

    return report_main(a.target, a.out, a.spec)


def cmd_export(a: argparse.Namespace) -> int:
    from hmem_lit.hf_export import export

    out = export(a.run_dir, a.out, a.format)
    print(f"{out} (load with transformers, or hmem_lit.hf_export.load for the memory; see {out}/README.md)")
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from hmem_lit.generate import generate, read_prompts

    prompts = read_prompts(a.prompts, a.file)
    rows = generate(a.run_dir, prompts, a.memory, a.max_new_tokens, a.until, a.threads)
    for r in rows:  # the completion in brackets: a leading space or an empty answer stays visible
        print(json.dumps(r, ensure_ascii=False) if a.jsonl else f"{r['prompt']}[{r['text']}]")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from hmem_lit import sweeps

    if a.target in ("status", "plan"):
        if a.rest[:1] in (["-h"], ["--help"]):
            what = {
                "status": "Print a sweep's trials: state, objective value, params and run directory.",
                "plan": "Print each point's sizes, protocol and anchors, without training.",
            }[a.target]
            print(
                f"usage: hmem sweep {a.target} <sweep> [name=<study>] [key=value ...]\n\n{what}\n"
                "<sweep>: a file in sweeps/ or a path; name=<study> reads a study run under another name."
            )
            return 0
        if not a.rest:
            raise ConfigError(f"sweep {a.target}: name the sweep, e.g. `hmem sweep {a.target} memory_type`")
        print((sweeps.status if a.target == "status" else sweeps.plan)(a.rest[0], a.rest[1:]))
        return 0
    # --workers and the launcher flags may follow the sweep name (argparse stops at the first positional)
    after = argparse.ArgumentParser(prog="hmem sweep", allow_abbrev=False)
    after.add_argument("--workers", type=int, default=a.workers)
    add_launcher_args(after, workers=True)
    after.set_defaults(**{k: v for k, v in vars(a).items() if k not in ("target", "rest")})
    a2, rest = after.parse_known_args(a.rest)
    bad = [x for x in rest if x.startswith("-")]
    if bad:
        raise ConfigError(f"{bad[0]}: unknown option of `hmem sweep` (allowed: --workers N, the --launcher flags)")
    if a2.launcher == "slurm":
        from hmem_lit.sweeps.slurm import submit_sweep

        return submit_sweep(a2, a.target, rest)
    check_local(a2)
    sweeps.run_sweep(a.target, rest, workers=a2.workers)
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from hmem_lit.merge import merge

    try:
        return merge(a.run_dirs, a.out)
    except ValueError as e:  # inconsistent jobs: a user error, not a crash
        raise ConfigError(str(e)) from None


def cmd_quickstart(a: argparse.Namespace) -> int:
    from hmem_lit.quickstart import quickstart

    quickstart(small=a.small, scale=a.scale, overrides=a.overrides, jobs=a.jobs, seeds=a.seeds)
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    """The benchmarks are scripts of the source checkout (benchmarks/), not part of the installed package."""
    root = checkout_root()
    if root is None or not (root / "benchmarks" / "run_all.py").is_file():
        raise ConfigError(
            "hmem bench: the benchmarks live in the source checkout, not in the installed package; "
            "run `python -m benchmarks.run_all` (or `make bench`) in a checkout"
        )
    args = (["--quick"] if a.quick else []) + (["--only", *a.only] if a.only is not None else [])
    return subprocess.run([sys.executable, "-m", "benchmarks.run_all", *args], cwd=root).returncode


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "quickstart": cmd_quickstart,
    "data": cmd_data,
    "train": cmd_train,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "report": cmd_report,
    "sweep": cmd_sweep,
    "list": cmd_list,
    "info": cmd_info,
    "export": cmd_export,
    **STUDY_VERBS,
    "merge": cmd_merge,
    "bench": cmd_bench,
}


def verb_listing(groups: dict[str, list[tuple[str, str]]]) -> str:
    """Each group's verbs with their one-line help, laid out as argparse lays out options (help wrapped at one
    column), for `hmem --help`'s epilog."""
    width = shutil.get_terminal_size().columns - 2  # argparse.HelpFormatter's width
    col = min(24, 6 + max(len(v) for verbs in groups.values() for v, _ in verbs))
    lines: list[str] = []
    for title, verbs in groups.items():
        lines += ["", f"{title}:"] if lines else [f"{title}:"]
        for verb, text in verbs:
            lines += textwrap.wrap(text, width, initial_indent=f"  {verb:<{col - 3}} ", subsequent_indent=" " * col)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    talk = _talk_parser()
    p = argparse.ArgumentParser(
        prog="hmem",
        usage="%(prog)s [-h] [-q | -v] [--version] VERB ...",  # the verbs are listed in the epilog
        description="hmem_lit: memory-augmented pretraining experiments",
        parents=[talk],
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog: the verbs, laid out by verb_listing
    )
    p.add_argument("--version", action="version", version=f"hmem_lit {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB", help=argparse.SUPPRESS, prog="hmem")
    groups: dict[str, list[tuple[str, str]]] = {"the main path": [], "side studies and tools": []}
    main_verb = _adder(sub, talk, groups["the main path"])
    side = _adder(sub, talk, groups["side studies and tools"])
    _add_run_verbs(main_verb)
    _add_model_verbs(main_verb)
    _add_result_verbs(main_verb)
    add_study_parsers(side)
    _add_tool_verbs(side)
    p.epilog = verb_listing(groups)
    return p


def _talk_parser() -> argparse.ArgumentParser:
    """-q / -v, a parent of the top parser and of every verb's parser: they go before or after the verb."""
    talk = argparse.ArgumentParser(add_help=False)
    g = talk.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings and errors only")
    g.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="libraries' own logs and bars too"
    )
    return talk


def _adder(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    talk: argparse.ArgumentParser,
    listed: list[tuple[str, str]],
) -> Add:
    """-> add(verb, text): a verb's parser (text: its description), listed in `listed` for `hmem --help`."""

    def add(verb: str, text: str) -> argparse.ArgumentParser:
        listed.append((verb, text))
        return sub.add_parser(verb, description=text, parents=[talk])

    return add


def _add_run_verbs(main_verb: Add) -> None:
    """quickstart, data, train."""
    q = main_verb("quickstart", "the default experiment: data, 5 training runs, evaluation, report")
    q.add_argument("--small", action="store_true", help="a two-minute smoke version")
    q.add_argument("--scale", type=float, default=1.0, help="multiply the token budget and the synthetic world")
    q.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="training runs at a time, one process each (default 2; "
        "1 = one after another, in this process, with per-run progress bars)",
    )
    q.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train every run with seeds 0..N-1 (train.seed; runs <name>_seed<k> for k >= 1) and pool them in the "
        "report's confidence intervals (default 1: ~30 min; 3 for the README's numbers)",
    )
    q.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    d = main_verb("data", "data preparation: `hmem data prepare <experiment> [key=value]`")
    d.add_argument("action", choices=["prepare"])
    d.add_argument("experiment", nargs="?", default=None)
    d.add_argument("overrides", nargs="*")
    d.add_argument("--force", action="store_true", help="rebuild every stage")
    add_launcher_args(d)
    t = main_verb("train", "train one run (resumes an incomplete run; no-op on a complete one)")
    t.add_argument("experiment", help="experiment YAML (path or name in experiments/)")
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.add_argument("--force", action="store_true", help="delete an existing run directory and start again")
    add_launcher_args(t, nodes=True)


def _add_model_verbs(main_verb: Add) -> None:
    """eval, generate: a trained run's evaluation and continuations."""
    e = main_verb("eval", "evaluate a run through lm-eval; results under <run_dir>/eval/<memory>/")
    e.add_argument("run_dir")
    e.add_argument("--tasks", nargs="+", default=None, help="task or group names (default: eval.tasks)")
    e.add_argument("--memory", choices=["fetched", "generic", "none", "blocked", "random"], default=None)
    e.add_argument("--limit", type=int, default=None, help="at most N samples per task")
    e.add_argument("--block-level", type=int, default=None, help="blocked mode: tree level to block (1-based)")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    e.add_argument(
        "--rag",
        default=None,
        metavar="KIND",
        help="RAG baseline: prepend training documents retrieved by cluster (the paper's vanilla RAG), bm25 or "
        "dense to each prompt; results under <run_dir>/eval/<memory>-rag-<kind>-k<k>/",
    )
    e.add_argument("--rag-k", type=int, default=1, help="RAG: documents retrieved per prompt (default 1)")
    e.add_argument(
        "--rag-join",
        default="causal",
        metavar="JOIN",
        help="RAG: causal (context + EOT, the prompt attends to it; default) | inline (one document with the prompt) "
        "| separate (its own document: a control)",
    )
    e.add_argument("--force", action="store_true", help="re-evaluate even if results with these settings exist")
    e.add_argument(
        "--include-path",
        action="append",
        default=None,
        metavar="DIR",
        help="your own lm-eval task YAMLs (repeatable); name them with --tasks; results under "
        "<run_dir>/eval/<memory>-<tasks>/",
    )
    e.add_argument(
        "--trust-include-path",
        action="store_true",
        help="let the include path's YAMLs run Python (lm-eval's !function tags); refused without it",
    )
    add_launcher_args(e)
    gen = main_verb(
        "generate",
        "greedy continuations of prompts from a trained run, memory routed as in `hmem eval`",
    )
    gen.add_argument("run_dir", help="a complete run directory")
    gen.add_argument("prompts", nargs="*", help="prompts (or --file)")
    gen.add_argument("--file", default=None, help="prompts, one per line (- = stdin)")
    gen.add_argument(
        "--memory",
        choices=["fetched", "generic", "none", "random"],
        default=None,
        help="fetched: the blocks the prompt routes to (default: the run's eval.memory); generic: the generic block; "
        "none: the anchor alone",
    )
    gen.add_argument("--max-new-tokens", type=int, default=32, help="at most this many new tokens (default 32)")
    gen.add_argument("--until", action="append", default=None, help="stop string (repeatable; default a newline)")
    gen.add_argument("--jsonl", action="store_true", help="one JSON record per prompt: prompt, text, memory, path")
    gen.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")


def _add_result_verbs(main_verb: Add) -> None:
    """report, sweep, list, info, export."""
    r = main_verb("report", "figures, tables and an HTML page from a runs directory or a sweep")
    r.add_argument(
        "target", help="runs directory, or sweep name (sweeps/<name>.yaml; its runs under runs/sweeps/<name>/)"
    )
    r.add_argument("--out", default=None, help="output directory (default analysis/generated/<name>)")
    r.add_argument("--spec", action="append", default=None, help="figure spec YAML (default analysis/*.yaml)")
    w = main_verb(
        "sweep",
        "run a sweep (`hmem sweep sweeps/x.yaml [--workers N] [key=value]`), or "
        "`hmem sweep status <name>` / `hmem sweep plan <name>`",
    )
    w.add_argument("target", help="sweep YAML (path or name in sweeps/), or status / plan")
    w.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        help="key=value (sweep keys like n_trials=4, or config keys); after status/plan: the sweep name first",
    )
    w.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (default 1)")
    add_launcher_args(w, workers=True)
    main_verb("list", "presets, memory types, retrievers, experiments, sweeps")
    i = main_verb("info", "anchor / fetched / bank parameter counts of an experiment (--config: its config)")
    i.add_argument("experiment", nargs="?", default=None)
    i.add_argument("overrides", nargs="*")
    i.add_argument("--config", action="store_true", help="print the resolved config (experiment + key=value) as YAML")
    ex = main_verb("export", "a trained run as a transformers directory (+ memory bank, router, tokenizer)")
    ex.add_argument("run_dir")
    ex.add_argument("--format", default="hf", help="hf (the only format)")
    ex.add_argument("--out", required=True, help="a new directory")


def _add_tool_verbs(side: Add) -> None:
    """merge, bench."""
    m = side("merge", "merge the banks of per-subtree memory runs (train.subtree=k) into one model")
    m.add_argument("run_dirs", nargs="+")
    m.add_argument("--out", required=True, help="output run directory")
    b = side("bench", "run every benchmark and write benchmarks/results/all.json (source checkout only)")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--only", nargs="*", default=None)


_FIXES = {  # errno -> what the user can do (environment faults: one line naming the path, exit status 2)
    errno.ENOSPC: "no space left on the device: free some (a rerun resumes where it stopped) or set out_dir=... / "
    "data.dir=... on another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some, or set out_dir=... / data.dir=... elsewhere",
    errno.EROFS: "the file system is read-only: set out_dir=... / data.dir=... / --out to a writable place",
    errno.EACCES: "permission denied: make it writable, or set out_dir=... / data.dir=... / --out elsewhere",
    errno.EPERM: "operation not permitted: make it writable, or set out_dir=... / data.dir=... / --out elsewhere",
    errno.ENAMETOOLONG: "a file name is too long (255 bytes at most): choose a shorter name=..., experiment=... "
    "or path",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another out_dir=... / data.dir=... / --out",
    errno.EIO: "the device failed to write: check the disk, then rerun (a rerun resumes where it stopped)",
}


def environment_error(e: OSError) -> str | None:
    """An OSError the user fixes in their environment (space, permissions, names) -> one line naming the path and
    the fix; None for anything else (a bug: its traceback is kept)."""
    fix = _FIXES.get(e.errno or -1)
    if fix is None:
        return None
    where = e.filename or "a file"
    extra = f" ({e.strerror})" if e.strerror and e.errno == errno.EIO else ""
    return f"{where}: {fix}{extra}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Lightning warns at every Trainer on a machine with `srun` on PATH (any Slurm login node) that srun is not
    # used: noise beside one-line errors; this suite uses Slurm through --launcher slurm (docs/cluster.md)
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
    args = build_parser().parse_args(argv)
    if args.verb == "sweep":  # -q / -v after the sweep's name land in its REMAINDER
        for flag, name in (("-q", "quiet"), ("--quiet", "quiet"), ("-v", "verbose"), ("--verbose", "verbose")):
            if flag in args.rest:
                args.rest.remove(flag)
                setattr(args, name, True)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    console.setup(console.QUIET if quiet else console.VERBOSE if verbose else None)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a Slurm job runs again (launch/verbs.py)
    try:
        return VERBS[args.verb](args)
    except ConfigError as e:
        print(f"hmem: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # a run that cannot go on (diverged, locked by another process): not bad input
        print(f"hmem: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        line = environment_error(e)
        if line is None:
            raise
        print(f"hmem: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hmem: interrupted; relaunch the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
