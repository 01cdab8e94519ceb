#!/usr/bin/env bash
# `make gpu-check` / `make gpu-suite` on a GPU machine of your own (no time limit per command):
# the three device commands in a row. --suite adds the end-to-end benchmark (3_bench_e2e.sh).
cd "$(dirname "$0")"
status=0
bash 1_tests.sh || status=1
bash 2_bench_ops.sh || status=1
if [[ "${1:-}" == "--suite" ]]; then bash 3_bench_e2e.sh || status=1; fi
exit $status
