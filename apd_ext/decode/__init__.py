"""The decoding loop, laid out as its design:

    config.py    DecodeConfig: every knob, one set of defaults, policy specs ("apd:kv_window=16")
    inputs.py    checks of the runners, prompts, seeds and length; the Batch on the canvas
    state.py     State (the device tensors a step updates in place), Progress (what the host knows)
    steps/       one step object per policy (apd, dllm_fixed, threshold, ar, diffusion) behind one interface
    execute.py   how step i runs: eagerly, compiled (compile=True) or as a replayed CUDA graph
    compiled.py  compile_step: the steady step through torch.compile / Inductor
    graphs.py    the CUDA-graph cache
    stats.py     the per-phase Clock and the Stats collector
    driver.py    generate(), the loop
"""

from apd_ext.decode.config import DIFFUSION_ALGS, POLICIES, DecodeConfig
from apd_ext.decode.driver import GenerateOutput, generate
from apd_ext.decode.graphs import clear_graph_cache

__all__ = ["DecodeConfig", "POLICIES", "DIFFUSION_ALGS", "generate", "GenerateOutput", "clear_graph_cache"]
