#!/usr/bin/env bash
# Device command 2 of 3 (about 3-5 min on an H200): the sampling ops on (B, K, V) in
# {1, 8} x {16, 100, 256} x {151936}, bf16 and fp32 logits: CUDA vs Triton vs the authors' eager
# step, effective GB/s against the device copy bandwidth measured in the same run.
# Rows are appended to $OUT/ops_cuda.csv as they are measured; the table goes to $OUT/bench_ops.log.
source "$(dirname "$0")/env.sh"
log bench_ops.log
describe_machine
ensure_built || exit 1
banner "bench_ops"
timeout 360 "$PYTHON" bench/bench_ops.py --device cuda --out "$OUT" \
    --shapes 1x16x151936,1x100x151936,1x256x151936,8x16x151936,8x100x151936,8x256x151936 \
    --dtypes bf16,fp32
