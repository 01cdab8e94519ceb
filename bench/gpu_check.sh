#!/usr/bin/env bash
# `make gpu-check`: on a GPU machine with torch, triton and nvcc installed (no package registry needed):
# build the extension from source against the installed torch, run every test (CUDA ones included)
# and the op benchmark on the GPU. Everything goes to bench/results/gpu_check_<date>.log, and to
# $OUT/ as well when OUT is set (with the benchmark CSV). Exits non-zero when the build, the tests
# or the benchmark fail (a failed build skips the rest; failed tests still run the benchmark).
# `make gpu-suite` (bench/gpu_check.sh --suite) adds the end-to-end benchmark at Dream-7B /
# Qwen2.5-0.5B shapes (bench/bench_e2e.py: APD step eager vs CUDA graphs, AR baseline, bandwidth).
set -uo pipefail
SUITE=0
[[ "${1:-}" == "--suite" ]] && SUITE=1

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p bench/results
LOG=bench/results/gpu_check_${STAMP}.log
LOGS=("$LOG")
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    LOGS+=("$OUT/gpu_check_${STAMP}.log")
fi

run() {
    echo "=== apd_ext gpu-check $STAMP (UTC) in $(pwd)"
    echo "=== git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (dirty)')"
    nvidia-smi || echo "nvidia-smi not found"
    if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null; then
        # The toolkit root: nvcc reports its real bin/ (also through wrapper scripts such as
        # /usr/local/bin/nvcc -> exec /usr/local/cuda-X/bin/nvcc); else the directory above nvcc's.
        local here
        here=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n1)
        [[ -n "$here" ]] || here=$(dirname "$(readlink -f "$(command -v nvcc)")")
        CUDA_HOME=$(readlink -f "$here/..")
        export CUDA_HOME
    fi
    echo "=== CUDA_HOME=${CUDA_HOME:-<unset>}"
    nvcc --version || echo "nvcc not found"
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
        "| torch CUDA", torch.version.cuda, "| GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
    "$PYTHON" -c 'import triton; print("triton", triton.__version__)' || echo "triton not importable"
    lscpu | grep -m1 'Model name' || true

    echo "=== build: APD_EXT_CUDA=1 MAX_JOBS=$(nproc) $PYTHON setup.py build_ext --inplace"
    if ! APD_EXT_CUDA=1 MAX_JOBS=$(nproc) "$PYTHON" setup.py build_ext --inplace; then
        echo "=== BUILD FAILED"
        return 1
    fi
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
    local status=0

    echo "=== tests: $PYTHON -m pytest -q python_tests"
    if APD_EXT_REQUIRE_EXTENSION=1 "$PYTHON" -m pytest -q python_tests; then
        echo "=== tests passed"
    else
        echo "=== TESTS FAILED"
        status=1
    fi

    echo "=== benchmark: $PYTHON bench/bench_ops.py --device cuda"
    if "$PYTHON" bench/bench_ops.py --device cuda; then
        [[ -n "${OUT:-}" ]] && cp bench/results/ops_cuda.csv "$OUT/"
    else
        echo "=== BENCHMARK FAILED"
        status=1
    fi
    if [[ $SUITE == 1 ]]; then
        echo "=== end-to-end: $PYTHON bench/bench_e2e.py --device cuda --json bench/results/e2e_cuda.json"
        if "$PYTHON" bench/bench_e2e.py --device cuda --json bench/results/e2e_cuda.json; then
            [[ -n "${OUT:-}" ]] && cp bench/results/e2e_cuda.json bench/results/e2e_cuda.csv "$OUT/"
        else
            echo "=== END-TO-END BENCHMARK FAILED"
            status=1
        fi
    fi
    echo "=== gpu-check done: $([[ $status == 0 ]] && echo OK || echo FAILED)"
    return $status
}

run 2>&1 | tee "${LOGS[@]}"
exit "${PIPESTATUS[0]}"
