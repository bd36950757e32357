#!/usr/bin/env bash
# The one prepared device run of issue 21, for a session that is lent a GPU machine (a few minutes in all):
# benchmarks/bench_gpu.py (MFU of 160M / 410M, memory/anchor, offload with and without prefetch, disk), then the CUDA
# tests (`pytest -m gpu`: FlexAttention vs sdpa, compiled vs eager, side-stream prefetch, async row updates).
#
# The device machine has its own python3 with torch, lightning, pytest and safetensors, and no registry: the one
# pure-Python package hmem_lit needs beyond that image, omegaconf, travels as a wheel in .gpu_wheels/
# (`make gpu-wheels` here, then carry .gpu_wheels). Results go to $OUT (gpu.json, the logs), else to ./gpu_out.
#   run: bash benchmarks/gpu_session.sh            carry: [".gpu_wheels"]         timeout_s: 590
#   here, without CUDA: SMOKE=1 bash benchmarks/gpu_session.sh   (the same steps; bench_gpu --smoke)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
site="$(mktemp -d)"
if ! "$py" -c "import omegaconf" 2>/dev/null; then
  "$py" -m pip install -q --no-deps --no-index --find-links .gpu_wheels --target "$site" omegaconf || exit 2
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import torch, hmem_lit; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$out/env.txt" 2>/dev/null
# the bench first (the issue's numbers; gpu.json is rewritten after every variant, so a cut keeps what it measured),
# then the CUDA tests (skipped without CUDA; the repository's addopts deselect them, so reset addopts).
# 330 + 200 s of timeouts leave ~60 s of the 590 s for the imports, the wheel and nvidia-smi.
if [ "${SMOKE:-0}" = 1 ]; then
  "$py" benchmarks/bench_gpu.py --smoke --out "$out/gpu.json" > "$out/bench_gpu.log" 2>&1
else
  timeout 330 "$py" benchmarks/bench_gpu.py --out "$out/gpu.json" > "$out/bench_gpu.log" 2>&1
fi
echo "bench_gpu rc=$?" | tee -a "$out/env.txt"
tail -12 "$out/bench_gpu.log"
timeout 200 "$py" -m pytest -m gpu -p no:cacheprovider -o addopts="" -q --timeout=120 \
  tests/test_attention.py tests/test_compile.py tests/test_prefetch.py tests/test_writeback.py > "$out/gpu_tests.log" 2>&1
echo "gpu tests rc=$?" | tee -a "$out/env.txt"
tail -3 "$out/gpu_tests.log"
