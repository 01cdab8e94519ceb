"""Test setup: Triton runs through its interpreter on machines without a GPU, so that the Triton
kernels are exercised here too (the variable must be set before triton is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
