#!/bin/bash
# Host-side tests of the CUDA kernels (no GPU, no nvcc): builds csrc/cuda's kernels with the
# fiber emulator of include/ (glibc ucontext), links the CPU backend, and runs
#   test_skip_bounds          exactness of the noise-skipping bound
#   test_vs_cpu [cases seed]  kernels vs CPU backend on random cases (default 150 cases)
# Usage: csrc/cuda/emu/run.sh [cases] [seed]. Builds in a temporary directory. The emulator runs on
# one core: the fixed checks run in one process and the random cases are split over EMU_JOBS more
# (default: the cores, at most 4; shard j uses seed + j), all at once; every process's output is
# printed, and any failure fails the run.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CSRC="$(cd "$HERE/../.." && pwd)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
CXX="${CXX:-g++}"
FL=(-std=c++17 -O1 -ffp-contract=off -I"$HERE/include" -I"$CSRC/include" -I"$CSRC" -I"$CSRC/cuda")
# -ffp-contract=off on both sides: the CPU backend's AVX2+FMA variant would otherwise contract
# fast_log and make the noise differ from the emulated kernels' by an ulp (argmax near-ties).
# The translation units compile in parallel (at most BUILD_JOBS at once, default the cores), then link.
BUILD_JOBS="${BUILD_JOBS:-$(nproc)}"
building=()
build() {  # run one compile in the background, at most BUILD_JOBS at once; a failure fails the run
  while [ "$(jobs -rp | wc -l)" -ge "$BUILD_JOBS" ]; do wait -n || exit 1; done
  "$@" &
  building+=($!)
}
for f in "$CSRC"/cpu/*.cpp; do
  build "$CXX" -std=c++17 -O2 -ffp-contract=off -I"$CSRC/include" -I"$CSRC" -c "$f" -o "$OUT/cpu_$(basename "${f%.cpp}").o"
done
build "$CXX" -std=c++17 -O2 -DAPD_WITH_CUDA -I"$CSRC/include" -c "$CSRC/capi/status.cpp" -o "$OUT/status.o"
build "$CXX" "${FL[@]}" -c "$HERE/emu_launch.cpp" -o "$OUT/emu_launch.o"
build "$CXX" "${FL[@]}" -x c++ -c "$CSRC/cuda/capi.cu" -o "$OUT/capi.o"
build "$CXX" "${FL[@]}" -mf16c -c "$HERE/test_vs_cpu.cpp" -o "$OUT/test_vs_cpu.o"
build "$CXX" -std=c++17 -O2 -ffp-contract=off -I"$HERE/include" -I"$CSRC/include" -I"$CSRC/cuda" "$HERE/test_skip_bounds.cpp" -o "$OUT/test_skip_bounds"
for pid in "${building[@]}"; do wait "$pid" || exit 1; done
"$CXX" "$OUT/test_vs_cpu.o" "$OUT"/emu_launch.o "$OUT"/capi.o "$OUT"/cpu_*.o "$OUT"/status.o -o "$OUT/test_vs_cpu"
"$OUT/test_skip_bounds"
CASES="${1:-150}"
SEED="${2:-12345}"
JOBS="${EMU_JOBS:-$(nproc)}"
JOBS=$(( JOBS < 1 ? 1 : JOBS > 4 ? 4 : JOBS ))
# the fixed checks in one process, the random cases split over JOBS more (shard j: seed + j)
"$OUT/test_vs_cpu" 0 "$SEED" fixed > "$OUT/vs_cpu_fixed.log" 2>&1 &
pids=($!)
names=(fixed)
for ((j = 0; j < JOBS; j++)); do
  "$OUT/test_vs_cpu" $(( (CASES + JOBS - 1 - j) / JOBS )) $(( SEED + j )) random > "$OUT/vs_cpu_$j.log" 2>&1 &
  pids+=($!)
  names+=("$j")
done
status=0
for ((i = 0; i < ${#pids[@]}; i++)); do
  wait "${pids[$i]}" || status=1
  n="${names[$i]}"
  if [ "$n" = fixed ]; then echo "fixed checks:"; else echo "random cases, shard $n (seed $(( SEED + n ))):"; fi
  cat "$OUT/vs_cpu_$n.log"
done
exit $status
