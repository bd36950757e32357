#!/usr/bin/env bash
# Issue 17's comparisons at the quickstart's scale, on the runs `hmem quickstart` made (runs/quickstart/anchor and
# runs/quickstart/memory), then their report: `make comparisons` (~35 min on 2 shared cores; each step is a no-op
# when its result exists, so a rerun resumes).
#   1. the head to head: PKM (Memory+) at run 102's budget (experiments/105_qs_pkm.yaml), and the same with the
#      qk-norm temperature 1/sqrt(k_dim/2) (memory.pkm.qk_norm_scale) and with the reference code's 10x value LR;
#   2. RAG baselines (hmem eval --rag): the paper's vanilla RAG (cluster, k=1), BM25 top-1/top-4 and dense top-1 on
#      the anchor alone, the same contexts with the memory run's fetched memory (RAG + memory), and the
#      separate-document control (must score as without RAG);
#   3. hmem report runs/quickstart --spec analysis/comparisons.yaml (figures + tables: rag_vs_memory, ffn_vs_pkm).
# Result: experiments/LOG.md 2026-12-01 (third session) "RAG, RAG + memory and PKM head to head".
set -euo pipefail
HMEM=${HMEM:-hmem}
R=${RUNS:-runs/quickstart}
for r in "$R/anchor" "$R/memory"; do
  [ -f "$r/final.json" ] || { echo "comparisons: $r missing; run \`make quickstart\` first" >&2; exit 2; }
done
train() { [ -f "$R/$1/model.safetensors" ] || $HMEM train experiments/105_qs_pkm.yaml name="$1" "${@:2}"; $HMEM eval "$R/$1"; }
train pkm
train pkm_t memory.pkm.qk_norm_scale=0.25
train pkm_vlr optim.value_lr_scale=10 optim.value_grad_clip=1.0
sk() { $HMEM eval "$@" --tasks hmem_sk; }
sk "$R/anchor" --memory none --rag bm25 --rag-k 1 --rag-join separate
for m in none fetched; do
  run=$R/anchor; [ $m = fetched ] && run=$R/memory
  sk "$run" --memory $m --rag cluster --rag-k 1
  sk "$run" --memory $m --rag bm25 --rag-k 1
  sk "$run" --memory $m --rag bm25 --rag-k 4
  sk "$run" --memory $m --rag dense --rag-k 1
done
$HMEM report "$R" --spec analysis/comparisons.yaml --out "${OUT:-docs/comparisons}"
