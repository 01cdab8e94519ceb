# Sourced by the bench/device/*.sh scripts: the environment of one device command.
# Run from anywhere; everything lands under $OUT (the device tool's folder) or bench/results/device/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export OUT=${OUT:-$(pwd)/bench/results/device}
mkdir -p "$OUT"
# The golden data travels inside the checkout (bench/device/prepare.sh copies it to .golden/).
if [[ -z "${APD_EXT_GOLDEN:-}" && -d .golden ]]; then
    export APD_EXT_GOLDEN=$(pwd)/.golden
fi
if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null; then
    # The toolkit root: nvcc reports its real bin/ (also through wrapper scripts); else the
    # directory above nvcc's, links resolved.
    here=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n1)
    [[ -n "$here" ]] || here=$(dirname "$(readlink -f "$(command -v nvcc)")")
    export CUDA_HOME=$(readlink -f "$here/..")
fi

# log NAME: tee everything that follows into $OUT/NAME (a timeout still leaves what was written).
log() { exec > >(tee -a "$OUT/$1") 2>&1; }

banner() {
    echo "=== $(date -u +%H:%M:%S) $*"
}

describe_machine() {
    banner "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (dirty)')"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>/dev/null || echo "nvidia-smi: none"
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
    "$PYTHON" -c 'import triton; print("triton", triton.__version__)' 2>/dev/null || echo "triton: not importable"
    echo "CUDA_HOME=${CUDA_HOME:-<unset>} APD_EXT_GOLDEN=${APD_EXT_GOLDEN:-<unset>} OUT=$OUT"
}

# Builds apd_ext._C against the machine's own torch unless a build with CUDA kernels loads already
# (a warm machine keeps the ignored build outputs between commands).
ensure_built() {
    if "$PYTHON" -c 'from apd_ext import backends; import sys; sys.exit(0 if backends.has_cuda_kernels() else 1)' 2>/dev/null; then
        banner "extension already built with CUDA kernels"
        return 0
    fi
    local archs=${APD_EXT_CUDA_ARCHS:-90}
    banner "build: APD_EXT_CUDA=1 APD_EXT_CUDA_ARCHS=$archs MAX_JOBS=$(nproc) $PYTHON setup.py build_ext --inplace"
    local t0=$SECONDS
    APD_EXT_CUDA=1 APD_EXT_CUDA_ARCHS=$archs MAX_JOBS=$(nproc) "$PYTHON" setup.py -q build_ext --inplace \
        > "$OUT/build.log" 2>&1 || { tail -n 60 "$OUT/build.log"; banner "BUILD FAILED"; return 1; }
    banner "built in $((SECONDS - t0)) s"
}
