#!/usr/bin/env bash
# The GPU checks of fast generation, in one run of about 8 minutes on one H100/H200 (CUDA torch with triton, and the
# project installed with its requirements):
#   1. the Triton kernels against the native references at real sizes, and the fused decode step's timing; the
#      static-cache tests on the GPU (the Triton kernels inside a compiled step, CUDA graphs giving eager's tokens);
#   2. batch-1 decoding of the 350M stack, eager and compiled (CUDA graphs), after prompts of 16 and 4096 tokens,
#      with the compiled model's greedy tokens compared with eager's;
#   3. the xLSTM-7B shape (random bf16 weights), compiled, to 16k generated tokens: the speed over the first and the
#      last 1024 tokens says whether decoding stays flat;
#   4. where vLLM is installed (CUDA wheels, hf_xlstm installed beside it): the vLLM plugin's tests on the GPU, whose
#      blocks take the Triton kernels there, compiled with PIECEWISE CUDA graphs (vLLM's default) and eagerly; and
#      the xLSTM-7B shape served at 1, 16 and 64 requests at a time against batch-1 generate() (target: 64 at a
#      time >= 5x).
# Usage: scripts/gpu_checks.sh [output folder]      (relative to the repository root; default benchmarks/results/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
status=0
step() {  # a failed check is reported and the others still run; the exit status says whether all passed
    echo "== $*"
    "$@" || { echo "FAILED: $*"; status=1; }
}

step python scripts/bench_kernels.py --quick --skip mlstm,slstm --out "$out/kernels_checks.json"
step python -m pytest -q tests/test_static_cache.py -k cuda --junitxml "$out/static_cache_tests.xml"
step python scripts/bench_generate.py --shape 350m --device cuda --dtype bfloat16 --no-builtin --batches 1 \
    --prompts 16,4096 --new-tokens 256 --repeats 1 --json "$out/generate_350m.json"
step python scripts/bench_generate.py --shape 7b --device cuda --dtype bfloat16 --no-builtin --no-eager --batches 1 \
    --prompts 16 --new-tokens 16384 --repeats 1 --json "$out/generate_7b.json"
if python -c "import vllm" 2>/dev/null; then
    step python -m pytest -q tests/test_vllm.py --junitxml "$out/vllm_tests.xml"
    step python scripts/bench_serving.py --shape 7b --device cuda --dtype bfloat16 --concurrency 1 16 64 \
        --json "$out/serving_7b.json"
else
    echo "== vLLM is not installed: the plugin's GPU check did not run"
fi
exit $status
