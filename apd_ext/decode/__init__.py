"""The decoding loop: the config of every knob (config.py)."""

from apd_ext.decode.config import DIFFUSION_ALGS, POLICIES, DecodeConfig

__all__ = ["DecodeConfig", "POLICIES", "DIFFUSION_ALGS"]
