#!/bin/bash
# Host-side tests of the CUDA kernels (no GPU, no nvcc): builds csrc/cuda's kernels with the
# fiber emulator of include/ (glibc ucontext), links the CPU backend, and runs
#   test_skip_bounds          exactness of the noise-skipping bound
#   test_vs_cpu [cases seed]  kernels vs CPU backend on random cases (default 150 cases)
# Usage: csrc/cuda/emu/run.sh [cases] [seed]. Builds in a temporary directory.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CSRC="$(cd "$HERE/../.." && pwd)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
CXX="${CXX:-g++}"
FL=(-std=c++17 -O1 -ffp-contract=off -I"$HERE/include" -I"$CSRC/include" -I"$CSRC" -I"$CSRC/cuda")
# -ffp-contract=off on both sides: the CPU backend's AVX2+FMA variant would otherwise contract
# fast_log and make the noise differ from the emulated kernels' by an ulp (argmax near-ties).
for f in "$CSRC"/cpu/*.cpp; do "$CXX" -std=c++17 -O2 -ffp-contract=off -I"$CSRC/include" -I"$CSRC" -c "$f" -o "$OUT/cpu_$(basename "${f%.cpp}").o"; done
"$CXX" -std=c++17 -O2 -DAPD_WITH_CUDA -I"$CSRC/include" -c "$CSRC/capi/status.cpp" -o "$OUT/status.o"
"$CXX" "${FL[@]}" -c "$HERE/emu_launch.cpp" -o "$OUT/emu_launch.o"
"$CXX" "${FL[@]}" -x c++ -c "$CSRC/cuda/capi.cu" -o "$OUT/capi.o"
"$CXX" "${FL[@]}" -mf16c "$HERE/test_vs_cpu.cpp" "$OUT"/emu_launch.o "$OUT"/capi.o "$OUT"/cpu_*.o "$OUT"/status.o -o "$OUT/test_vs_cpu"
"$CXX" -std=c++17 -O2 -ffp-contract=off -I"$HERE/include" -I"$CSRC/include" -I"$CSRC/cuda" "$HERE/test_skip_bounds.cpp" -o "$OUT/test_skip_bounds"
"$OUT/test_skip_bounds"
"$OUT/test_vs_cpu" "${1:-150}" "${2:-12345}"
