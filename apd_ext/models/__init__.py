"""Model runners: Hugging Face checkpoints (config.json + *.safetensors) loaded into native PyTorch
transformers with static KV caches, plus slow adapters for model objects already in memory.

    dllm = DllmRunner.from_pretrained("path/to/Dream-v0-Instruct-7B", device="cuda", dtype=torch.bfloat16)
    verifier = VerifierRunner.from_pretrained("path/to/Qwen2.5-0.5B-Instruct", device="cuda", dtype=torch.bfloat16)
"""

from apd_ext.models.config import ModelConfig
from apd_ext.models.hf_adapter import HFDllm, HFVerifier
from apd_ext.models.runners import DllmRunner, VerifierRunner

__all__ = ["ModelConfig", "DllmRunner", "VerifierRunner", "HFDllm", "HFVerifier"]
