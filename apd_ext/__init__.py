"""apd_ext: fused Adaptive Parallel Decoding sampling ops for diffusion LLMs.

    tokens, logprobs = apd_ext.sample_draft(dllm_logits, seed=s, offset=o)
    n, target, lp_d, lp_v, lp_m = apd_ext.mixture_accept(dllm_logits, verifier_logits, tokens,
                                                         mixture_weight=0.7, seed=s, offset=o)

Backends: "cpu" and "cuda" (the compiled extension apd_ext._C), "triton", and "reference"
(apd_ext/reference.py, the executable spec). See apd_ext/backends.py for how "auto" chooses.
sample_draft_partial / mixture_accept_partial run the ops on one slice of the vocabulary for engines
that shard the LM head; apd_ext.parallel does tensor parallelism with them on torch.distributed.

    dllm, verifier = apd_ext.DllmRunner.from_pretrained(d), apd_ext.VerifierRunner.from_pretrained(v)
    out = apd_ext.generate(dllm, verifier, input_ids, max_new_tokens=256, mixture_weight=0.7)
    out = apd_ext.generate(dllm, verifier, input_ids, apd_ext.DecodeConfig.from_spec("apd:kv_window=none"))
"""

from apd_ext.backends import available as available_backends
from apd_ext.ops import mixture_accept, mixture_accept_partial, sample_draft, sample_draft_partial
from apd_ext.decode.driver import GenerateOutput, generate
from apd_ext.decode.graphs import clear_graph_cache
from apd_ext.decode.config import DecodeConfig
from apd_ext.models import DllmRunner, HFDllm, HFVerifier, VerifierRunner

__all__ = ["sample_draft", "mixture_accept", "sample_draft_partial", "mixture_accept_partial", "generate", "GenerateOutput", "DecodeConfig", "clear_graph_cache",
           "available_backends", "DllmRunner", "VerifierRunner", "HFDllm", "HFVerifier"]
__version__ = "0.1.0"
