"""`hmem-lm-eval`: lm-eval's own command line with the `hmem` model registered (a console-script entry point;
lm-eval 0.4 discovers no third-party models by itself). Everything after the command is lm-eval's:

    hmem-lm-eval run --model hmem --model_args run_dir=runs/quickstart/memory,memory=fetched \\
        --tasks my_task --include_path my_tasks/

Routing follows the same rules as `hmem eval` (evaluation/routing.py): a document's `route_text` field if it
has one, else the text shared by a document's requests.
"""

from __future__ import annotations


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    import hmem_lit.evaluation.adapter  # noqa: F401  (registers model "hmem" with lm-eval)

    cli_evaluate()


if __name__ == "__main__":
    main()
