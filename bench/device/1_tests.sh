#!/usr/bin/env bash
# Device command 1 of 3 (about 4-5 min on an H200): build the extension from source against the
# machine's torch, compile every Triton kernel specialisation for the device, and run the test
# suite on the GPU (CUDA and Triton backends on CUDA tensors, the CUDA-graph step, golden replays).
# The tiny-pair evaluations (test_tiny.py) are CPU-only and run in CI instead.
# Writes $OUT/tests.log, $OUT/build.log, $OUT/triton_aot.log, $OUT/pytest.xml as it goes.
source "$(dirname "$0")/env.sh"
log tests.log
describe_machine
status=0
ensure_built || exit 1

banner "Triton: every kernel specialisation the launchers produce, compiled for this GPU"
timeout 150 "$PYTHON" -m apd_ext.triton.aot --device > "$OUT/triton_aot.log" 2>&1 || status=1
tail -n 40 "$OUT/triton_aot.log"

xdist=()
"$PYTHON" -c 'import xdist' 2>/dev/null && xdist=(-n 8)
timeout_opt=()
"$PYTHON" -c 'import pytest_timeout' 2>/dev/null && timeout_opt=(--timeout 240)
banner "pytest ${xdist[*]} (GPU tests; test_tiny.py left to CI)"
APD_EXT_REQUIRE_EXTENSION=1 timeout 270 "$PYTHON" -m pytest -q -rfEs "${xdist[@]}" "${timeout_opt[@]}" \
    -p no:cacheprovider --junitxml="$OUT/pytest.xml" --durations=15 \
    --ignore=python_tests/test_tiny.py python_tests || status=1
banner "device tests: $([[ $status == 0 ]] && echo OK || echo FAILED)"
exit $status
