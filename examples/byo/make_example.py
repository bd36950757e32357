"""A bring-your-own example: writes a user-style corpus (JSONL with a key field) and a user-style lm-eval probe
task into --out (default ./byo_example, under the working directory), from the built-in airports corpus (so it
runs offline). The task YAML names its data file by a path relative to the working directory, so run `hmem eval`
(or lm_eval) from the same directory, or move the folder and run it again. Then follow docs/your_corpus.md
("Your own corpus and probes"):

    .venv/bin/python examples/byo/make_example.py                       # -> byo_example/
    .venv/bin/hmem train experiments/102_qs_memory.yaml data.source=files data.files=[byo_example/corpus.jsonl] \
        data.key_field=entity data.dir=data/byo experiment=byo
    .venv/bin/hmem eval runs/byo/memory --include-path byo_example/tasks --tasks my_airport_codes
    .venv/bin/hmem report runs/byo

Your own data replaces corpus.jsonl (one {"text": ..., "entity": ... or null} per line) and tasks/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from hmem_lit.config import load_config  # noqa: E402
from hmem_lit.data.prepare import prepare  # noqa: E402

TASK = """\
# A user's own probe: generation, exact match on the first word generated. The data path is relative to the
# directory hmem eval / lm_eval runs from (lm-eval resolves it against the working directory, not this file).
# `route_text` is what the hmem model routes (the prompt, without answer options); `entity` (data.key_field) lets
# hmem eval report routing per bucket.
task: my_airport_codes
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
generation_kwargs: {{until: ["\\n"], do_sample: false, max_gen_toks: 6}}
filter_list:
  - name: first_word
    filter: [{{function: regex, regex_pattern: "\\\\w+"}}, {{function: take_first}}]
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
metadata: {{version: 1.0}}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="byo_example", help="output folder (default ./byo_example)")
    out = Path(ap.parse_args(argv).out)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    src = prepare(
        load_config(
            None,
            [
                "data.source=builtin",
                "data.corpus=airports",
                "data.wiki_docs=1000",
                "data.fact_repeats_min=4",
                f"data.dir={out / 'builtin'}",
            ],
        ),
        progress=False,
        verbose=False,
    )
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for line in open(src / "corpus" / "docs.jsonl", encoding="utf-8"):
            d = json.loads(line)
            f.write(json.dumps({"text": d["text"], "entity": d.get("entity")}, ensure_ascii=False) + "\n")
    items = out / "my_airport_codes.jsonl"
    with open(items, "w", encoding="utf-8") as f:
        for line in open(src / "questions" / "airport_code.jsonl", encoding="utf-8"):
            q = json.loads(line)  # no bucket field: hmem eval buckets by the entity's training documents
            f.write(
                json.dumps(
                    {"prompt": q["prompt"], "answer": q["answer"], "entity": q["entity"], "route_text": q["prompt"]}
                )
                + "\n"
            )
    (out / "tasks" / "my_airport_codes.yaml").write_text(TASK.format(items=os.path.relpath(items)))
    print(f"wrote {out / 'corpus.jsonl'}, {items}, {out / 'tasks' / 'my_airport_codes.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
