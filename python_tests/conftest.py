"""Test setup: Triton runs through its interpreter on machines without a GPU, so that the Triton
kernels are exercised here too (the variable must be set before triton is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module, the process's count restored afterwards: the tiny models
    decode fastest on one thread, as eval-tiny runs them (two threads on a busy 2-core machine are
    several times slower). Use: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
