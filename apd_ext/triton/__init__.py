"""Triton backend of apd_ext: the ops with the normalised backend signatures of
apd_ext/backends.py (Filter and Noise grouped as the C ABI groups them), computing
apd_ext/reference.py's functions (up to float rounding).

    sample_draft(dllm, vocab, filt, noise) -> tokens int64 [B, K], logprobs float32 [B, K]
    mixture_accept(dllm, verifier, draft, vocab, mixture_weight, greedy_target, valid_lengths, filt, noise)
        -> num_accepted int64 [B], target_tokens int64 [B, K], logp_dllm, logp_verifier, logp_mixture

and the vocabulary-parallel partial ops over a slice of global tokens [vocab_offset, vocab_offset + vocab)
(reference.sample_draft_partial / mixture_accept_partial; apd_ext/parallel/vocab.py combines them):

    sample_draft_partial(dllm, vocab, vocab_offset, filt, noise, threshold)
        -> tokens int64 [B, K] (global ids), stats float32 [B, K, 4] (backends.DRAFT_STATS)
    mixture_accept_partial(dllm, verifier, draft, vocab, vocab_offset, mixture_weight, greedy_target,
                           valid_lengths, filt, noise, threshold)
        -> target_tokens int64 [B, K] (global ids), stats float32 [B, K, 10] (backends.MIXTURE_STATS)

Per-row knobs (issue 19): temperature, top_k, top_p (Filter fields) and mixture_weight may each be
a Python scalar or a per-row [B] tensor on the logits' device (float64; int64 for top_k), in any
mix. Row b then computes, bit for bit, what the call on row b alone with row b's values as
scalars computes: the scalar modes' kernels are unchanged, and a per-row knob selects a ROWS
specialisation (constexpr) that reads each row's knobs on the device (1 / T rounded to float32
from float64, w and 1 - w likewise; T = 0 rows greedy, without noise, inside a sampled launch;
top_k 0 or >= vocab with top_p 1 unfiltered, threshold -inf). Per-row top_k / top_p always run
the threshold pass (filter.py), which decides row by row. No knob value is read on the host.

Inputs are checked by apd_ext/ops.py (the partial ops' vocab_offset and threshold shape here).
Logit rows are read in place through their strides; seed, offset and per-row knob tensors are
read inside the kernels (CUDA-graph safe); nothing syncs with the host.
On machines without a GPU the kernels run through Triton's interpreter (TRITON_INTERPRET=1 set
before triton is imported) on CPU tensors.

Modules: noise.py (Philox4x32-10, fast_log, Gumbel), common.py (shared device helpers, launch
geometry, split plan), filter.py (top-k / top-p thresholds), sample_draft.py, mixture_accept.py,
aot.py (the ahead-of-time compile check for sm_80/sm_90: `python -m apd_ext.triton.aot`; the
interpreter accepts code that the compiler rejects).
"""

from apd_ext.triton.mixture_accept import mixture_accept, mixture_accept_partial
from apd_ext.triton.sample_draft import sample_draft, sample_draft_partial

name = "triton"

__all__ = ["sample_draft", "mixture_accept", "sample_draft_partial", "mixture_accept_partial", "name"]
