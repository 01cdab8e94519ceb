"""The ops' modes for the Triton kernels: the Python mirror of csrc/include/apd/modes.h, the one
table that the CPU and CUDA kernels use (python_tests/test_ops_modes.py checks that the values
agree). A mode is fixed per call from the normalised arguments and selects which value the
kernels take the first argmax of (apd_ext/reference.py is the spec).
"""

from __future__ import annotations

import torch
import triton.language as tl

# mixture_accept: how the target token of a window position is chosen (apd_target_mode).
TARGET_ARGMAX_MIX = tl.constexpr(0)  # greedy_target: argmax of the raw mixture, whole vocabulary
TARGET_ARGMAX_KEPT = tl.constexpr(1)  # T == 0: argmax of the mixture over the kept entries
TARGET_PHILOX = tl.constexpr(2)  # T > 0: argmax of kept mixture / T + g, g from the Philox generator
TARGET_UNIFORM = tl.constexpr(3)  # T > 0: the same, g = -log(-log(u)) of explicit uniforms u

# sample_draft: how the draft token is chosen (apd_draft_mode).
DRAFT_ARGMAX = tl.constexpr(0)  # T == 0: argmax of the kept D
DRAFT_PHILOX = tl.constexpr(1)  # T > 0: argmax of kept D / T + g, g from the Philox generator
DRAFT_UNIFORM = tl.constexpr(2)  # T > 0: the same with g from explicit uniforms


def draft_mode(temperature, has_uniform: bool) -> int:
    """apd_draft_mode_of: the sample_draft mode (a plain int) of one call. Per-row temperatures
    (a [B] tensor) choose the sampled mode; the kernels then leave a row with T = 0 greedy."""
    if not isinstance(temperature, torch.Tensor) and temperature == 0:
        return DRAFT_ARGMAX.value
    return DRAFT_UNIFORM.value if has_uniform else DRAFT_PHILOX.value


def target_mode(greedy_target: bool, temperature, has_uniform: bool) -> int:
    """apd_target_mode_of: the mixture_accept mode (a plain int) of one call (per-row temperatures:
    the sampled modes, as in draft_mode)."""
    if greedy_target:
        return TARGET_ARGMAX_MIX.value
    if not isinstance(temperature, torch.Tensor) and temperature == 0:
        return TARGET_ARGMAX_KEPT.value
    return TARGET_UNIFORM.value if has_uniform else TARGET_PHILOX.value


def filter_active(top_k, top_p, vocab: int) -> bool:
    """apd_filter_active: whether top_k or top_p may remove entries from a row of `vocab` entries,
    i.e. whether a threshold must be computed (top_k >= vocab keeps everything, like 0). Per-row
    top_k / top_p ([B] tensors) count as active: the threshold pass decides row by row, without
    reading their values on the host."""
    if isinstance(top_k, torch.Tensor) or isinstance(top_p, torch.Tensor):
        return True
    return 0 < top_k < vocab or top_p < 1.0
