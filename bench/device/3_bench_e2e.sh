#!/usr/bin/env bash
# Device command 3 of 3 (about 4-5 min on an H200): one APD step at Dream-7B / Qwen2.5-0.5B shapes and
# the block step at Fast-dLLM-v2-7B / Qwen2.5-0.5B shapes (APD and fast_dllm_v2; random weights, bf16),
# eager vs CUDA graph, the dLLM forward against its weight-bandwidth floor, which attention kernel ran
# and its share of the step, peak memory, projected tokens/s. The models share --budget-s (their rows
# interleaved; rows estimated to end past it are skipped).
# Rows are appended to $OUT/e2e_cuda.csv as they are measured; the table goes to $OUT/bench_e2e.log.
source "$(dirname "$0")/env.sh"
log bench_e2e.log
describe_machine
ensure_built || exit 1
banner "bench_e2e"
timeout 330 "$PYTHON" bench/bench_e2e.py --device cuda --out "$OUT" --budget-s 240
