#!/usr/bin/env bash
# The checks run on a CUDA machine (BENCHMARKS.md, "GPU"): the GPU tests, then the learner at
# the Qwen3-VL-2B shape. Optional: a folder of an older checkout to benchmark beside this one.
# Results go to ${OUT:-bench} (gpu_tests.log, results_gpu.json).
set -uo pipefail
out=${OUT:-bench}
old=${1:-}
export PYTHONUNBUFFERED=1
python3 -m pytest -q -s -m gpu -p no:cacheprovider -W ignore::FutureWarning tests/learner/test_learner_cuda.py 2>&1 | tee "$out/gpu_tests.log"
timeout 300 python3 -m bench.learner_gpu --out "$out/results_gpu.json" --setting 4:0 --setting 4:1 --setting 8:1 2>&1 | grep -v "Loading weights\|Writing model"
if [ -n "$old" ]; then
  cp bench/learner_gpu.py "$old/bench/"
  (cd "$old" && PYTHONPATH="$PWD:${PYTHONPATH:-}" timeout 150 python3 -m bench.learner_gpu --out "$out/results_gpu.json" --setting 4:0 --tag "before_" 2>&1 | grep -v "Loading weights\|Writing model")
fi
