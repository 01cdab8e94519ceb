"""Fake (meta) implementations of torch.ops.apd_ext.*: output shapes and dtypes only, so that
torch.compile and CUDA-graph tracing can see through the ops. Kept in sync with the schemas in
csrc/torch_ops/bindings.cpp."""

import torch


@torch.library.register_fake("apd_ext::sample_draft")
def _sample_draft_fake(dllm_logits, vocab_size, temperature, top_k, top_p, temperature_rows, top_k_rows, top_p_rows,
                       seed, seed_value, offset, offset_value, noise):
    B, K, _ = dllm_logits.shape
    return (dllm_logits.new_empty((B, K), dtype=torch.int64),
            dllm_logits.new_empty((B, K), dtype=torch.float32))


@torch.library.register_fake("apd_ext::mixture_accept")
def _mixture_accept_fake(dllm_logits, verifier_logits, draft_tokens, vocab_size, mixture_weight, mixture_weight_rows,
                         temperature, top_k, top_p, temperature_rows, top_k_rows, top_p_rows, valid_lengths, greedy_target, seed, seed_value, offset, offset_value,
                         noise):
    B, K, _ = dllm_logits.shape
    logp = [dllm_logits.new_empty((B, K), dtype=torch.float32) for _ in range(3)]
    return (dllm_logits.new_empty((B,), dtype=torch.int64),
            dllm_logits.new_empty((B, K), dtype=torch.int64), *logp)


@torch.library.register_fake("apd_ext::sample_draft_partial")
def _sample_draft_partial_fake(dllm_logits, vocab_size, vocab_offset, temperature, top_k, top_p, temperature_rows,
                               top_k_rows, top_p_rows, seed, seed_value, offset, offset_value, noise, threshold):
    B, K, _ = dllm_logits.shape
    return (dllm_logits.new_empty((B, K), dtype=torch.int64),
            dllm_logits.new_empty((B, K, 4), dtype=torch.float32))  # backends.DRAFT_STATS


@torch.library.register_fake("apd_ext::mixture_accept_partial")
def _mixture_accept_partial_fake(dllm_logits, verifier_logits, draft_tokens, vocab_size, vocab_offset,
                                 mixture_weight, mixture_weight_rows, temperature, top_k, top_p, temperature_rows,
                                 top_k_rows, top_p_rows, valid_lengths, greedy_target, seed, seed_value, offset,
                                 offset_value, noise, threshold):
    B, K, _ = dllm_logits.shape
    return (dllm_logits.new_empty((B, K), dtype=torch.int64),
            dllm_logits.new_empty((B, K, 10), dtype=torch.float32))  # backends.MIXTURE_STATS
