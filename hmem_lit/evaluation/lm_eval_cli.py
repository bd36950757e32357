"""`hmem-lm-eval`: lm-eval's own command line with the `hmem` model registered. lm-eval 0.4 (checked on 0.4.13)
has no hook for installed packages to add models: its registry knows the models listed in `lm_eval.models` and
whatever was imported before the command line ran (`--include_path` adds tasks, never models), so a plain
`lm_eval --model hmem` cannot work; this console script imports the adapter, then hands over to lm-eval.
Everything after the command is lm-eval's:

    hmem-lm-eval run --model hmem --model_args run_dir=runs/quickstart/memory,memory=fetched \\
        --tasks my_task --include_path my_tasks/ --output_path results/

Two defaults differ from lm-eval's, for the `hmem` model only: the batch size is the run's `eval.batch_size` (as
`hmem eval` uses; lm-eval's default of 1 is ~10x slower) unless `--batch_size` is given, and the output folder is
named after the run directory (lm-eval names it after `pretrained=`, else a random name), because `run_dir=` is
also passed as `pretrained=`. Routing follows `hmem eval`'s rules (evaluation/routing.py): a document's
`route_text` field if it has one, else the text shared by a document's requests.
"""

from __future__ import annotations

import sys


def hmem_argv(argv: list[str]) -> list[str]:
    """lm-eval's arguments with the `hmem` model's defaults added (see the module docstring); others untouched."""
    args = list(argv)
    model = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--model"), None)
    model = model or next((a.split("=", 1)[1] for a in args if a.startswith("--model=")), None)
    if model != "hmem":
        return args
    if not any(a in ("--batch_size", "-b") or a.startswith("--batch_size=") for a in args):
        args += ["--batch_size", "auto"]  # HmemLM reads "auto" as the run's eval.batch_size
    for i, a in enumerate(args):
        value, at = (args[i + 1], i + 1) if a == "--model_args" and i + 1 < len(args) else (None, None)
        if a.startswith("--model_args="):
            value, at = a.split("=", 1)[1], i
        if value is None or value.lstrip().startswith("{"):
            continue
        pairs = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
        if "run_dir" in pairs and "pretrained" not in pairs:
            new = f"{value},pretrained={pairs['run_dir']}"
            args[at] = new if at != i else f"--model_args={new}"  # type: ignore[index]
    return args


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    import hmem_lit.evaluation.adapter  # noqa: F401  (registers model "hmem" with lm-eval)
    from hmem_lit import console
    from hmem_lit.errors import ConfigError

    console.quiet_libraries()
    sys.argv = [sys.argv[0], *hmem_argv(sys.argv[1:])]
    try:
        cli_evaluate()
    except ConfigError as e:  # the hmem model's bad arguments (run_dir=, memory=, ...): one line, not a traceback
        print(f"hmem-lm-eval: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
