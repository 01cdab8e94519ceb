"""apd_ext in lm-evaluation-harness (`pip install 'apd_ext[eval]'`).

    lm_eval --model apd --tasks apd_tiny_arith                       # the bundled pair, APD's defaults
    lm_eval --model apd --model_args dllm=DIR,verifier=DIR,policy=dllm_fixed,k=1 --tasks gsm8k ...

model.py   ApdLM, registered in the harness as "apd" (generate_until through apd_ext.generate)
data.py    the bundled task's held-out problems as JSONL (tasks/apd_tiny_arith.jsonl) and its loader
tasks/     apd_tiny_arith.yaml: the local task (exact match on the "#### N" answer)

The installed package makes the harness find both by itself (_apd_ext_lm_eval.py, imported at start
by a .pth file). In Python:

    import lm_eval
    from apd_ext.harness import ApdLM, TASKS_DIR
    lm = ApdLM(policy="apd", mixture_weight=0.9)
    out = lm_eval.simple_evaluate(model=lm, tasks=["apd_tiny_arith"], limit=20)
    lm.summary()   # per task: tokens/s, tokens per dLLM forward, forwards per answer

ApdLM is imported lazily: this package's data helpers work without lm_eval installed.
"""

from apd_ext.harness.data import TASKS_DIR, TINY_ARITH_JSONL

__all__ = ["ApdLM", "HarnessError", "TASKS_DIR", "TINY_ARITH_JSONL"]


def __getattr__(name):
    if name in ("ApdLM", "HarnessError"):
        from apd_ext.harness import model

        return getattr(model, name)
    raise AttributeError(f"module 'apd_ext.harness' has no attribute {name!r}")
