"""One step object per policy, behind one interface (documented in steps/base.py):

    step = make_step(config, length=L, vocab=V, eos=[...], backend="auto", device=device)
    n, proposal, span = step(state, dllm, verifier, first=False, noise=None, clock=NO_CLOCK)

apd and dllm_fixed draft a window with the dLLM (window.py), ar samples the verifier alone (ar.py),
diffusion runs the dLLM's own unmasking schedule (diffusion.py), threshold commits every masked
position of the window whose dLLM confidence reaches a threshold (threshold.py, Fast-dLLM's rule);
fast_dllm_v2 and sdar are the released decodings of the block-diffusion dLLMs (native.py).
"""

from apd_ext.decode.config import DecodeConfig
from apd_ext.decode.steps.ar import ArStep
from apd_ext.decode.steps.base import StepBase, commit, keep_row
from apd_ext.decode.steps.diffusion import DiffusionStep
from apd_ext.decode.steps.native import FastDllmV2Step, SdarStep
from apd_ext.decode.steps.threshold import ThresholdStep
from apd_ext.decode.steps.window import ApdStep, DllmFixedStep

STEPS = {"apd": ApdStep, "dllm_fixed": DllmFixedStep, "ar": ArStep, "diffusion": DiffusionStep,
         "threshold": ThresholdStep, "fast_dllm_v2": FastDllmV2Step, "sdar": SdarStep}


def make_step(config: DecodeConfig, *, length: int, vocab: int, eos: list[int], backend: str = "auto",
              device="cpu", parallel=None, filters: tuple[bool, bool] | None = None,
              block: int | None = None) -> StepBase:
    """The step object of config.policy for canvases of `length` positions (prompt + max_new_tokens),
    a shared vocabulary of `vocab` tokens and the EOS ids `eos`, running the ops on `backend`;
    parallel: (TensorParallel, VocabShard) when the logits are this rank's vocabulary slice;
    filters: whether any row's top-k / top-p may be active (read under tensor parallelism only; None:
    the config's own, for states filled without per-row knobs); block: the dLLM's block size when it is
    a block-diffusion model (DllmRunner.block_size), else None."""
    return STEPS[config.policy](config, length=length, vocab=vocab, eos=eos, backend=backend, device=device,
                                parallel=parallel, filters=filters, block=block)


__all__ = ["make_step", "STEPS", "StepBase", "ApdStep", "DllmFixedStep", "ArStep", "DiffusionStep", "ThresholdStep",
           "FastDllmV2Step", "SdarStep",
           "commit", "keep_row"]
