#!/usr/bin/env bash
# The checks run on a CUDA machine (BENCHMARKS.md, "GPU"): the GPU tests, then the learner and
# the embedder at the Qwen3-VL-2B shape. Results go to ${OUT:-bench} (gpu_tests.log,
# results_gpu.json).
set -uo pipefail
out=${OUT:-bench}
export PYTHONUNBUFFERED=1
quiet() { grep -v "Loading weights\|Writing model"; }
python3 -m pytest -q -s -m gpu -p no:cacheprovider -W ignore::FutureWarning tests/learner/test_learner_cuda.py 2>&1 | quiet | tee "$out/gpu_tests.log"
timeout 300 python3 -m bench.learner_gpu --out "$out/results_gpu.json" --setting 4:0 --setting 4:1 --setting 8:1 2>&1 | quiet
timeout 200 python3 -m bench.embedder_gpu --out "$out/results_gpu.json" 2>&1 | quiet
