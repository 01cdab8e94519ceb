"""The held-out problems of the bundled pair's task as a local dataset for lm-evaluation-harness.

tasks/apd_tiny_arith.jsonl holds the first TINY_ARITH_COUNT problems of held-out set 0
(apd_ext.tiny.task.eval_problems(0, n), the problems `python -m apd_ext eval-tiny` decodes, in the
same order), one JSON object per line: {"seed", "question", "solution", "answer"}. The file is
written by the problem generator and checked against it by the tests:

    python -m apd_ext.harness.data            # rewrites apd_ext/harness/tasks/apd_tiny_arith.jsonl

The task YAML (tasks/apd_tiny_arith.yaml) reads it through `load_tiny_arith`: no hub access.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from apd_ext.tiny import task

TASKS_DIR = Path(__file__).parent / "tasks"
TINY_ARITH_JSONL = TASKS_DIR / "apd_tiny_arith.jsonl"
TINY_ARITH_SEED = 0  # eval-tiny's default held-out set
TINY_ARITH_COUNT = 200


def problem_record(p: task.Problem) -> dict:
    return {"seed": p.seed, "question": p.question, "solution": p.solution, "answer": p.answer}


def problems_jsonl(seed: int = TINY_ARITH_SEED, count: int = TINY_ARITH_COUNT) -> str:
    """The JSONL text of held-out set `seed`'s first `count` problems."""
    return "".join(json.dumps(problem_record(p), sort_keys=True) + "\n" for p in task.eval_problems(seed, count))


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file; ValueError naming the file and line for a bad one."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def load_tiny_arith(path: str | Path | None = None, **_metadata):
    """lm-eval's `custom_dataset` for apd_tiny_arith: {"test": the JSONL's problems} as a
    datasets.DatasetDict. `path` (task metadata / dataset_kwargs) replaces the bundled file; the
    harness's other metadata (version, ...) is ignored."""
    import datasets

    rows = read_jsonl(TINY_ARITH_JSONL if path is None else path)
    missing = [k for k in ("question", "answer") if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"{path}: records lack {missing}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="write the held-out problems as the task's JSONL")
    p.add_argument("--out", default=str(TINY_ARITH_JSONL))
    p.add_argument("--seed", type=int, default=TINY_ARITH_SEED)
    p.add_argument("--count", type=int, default=TINY_ARITH_COUNT)
    args = p.parse_args(argv)
    tmp = f"{args.out}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(problems_jsonl(args.seed, args.count))
    os.replace(tmp, args.out)
    print(f"wrote {args.count} problems of held-out set {args.seed} to {args.out}")


if __name__ == "__main__":
    main()
