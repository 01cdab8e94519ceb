"""Model runners: Hugging Face checkpoints (config.json + *.safetensors) loaded into native PyTorch
transformers with static KV caches, plus slow adapters for model objects already in memory.

    dllm = DllmRunner.from_pretrained("path/to/Dream-v0-Instruct-7B", device="cuda", dtype=torch.bfloat16)
    verifier = VerifierRunner.from_pretrained("path/to/Qwen2.5-0.5B-Instruct", device="cuda", dtype=torch.bfloat16)
    llada = DllmRunner.from_pretrained("path/to/LLaDA-8B-Instruct", device="cuda")  # bf16: its "precision"

The family comes from config.json's model_type (apd_ext.models.config): dLLMs "Dream" (Dream and
derivatives keeping its architecture; shifted logits) and "llada" (LLaDA's own config keys and
tensor names, mapped onto the same native transformer; unshifted logits), verifiers "qwen2" and
"llama". Any other model_type raises CheckpointError listing these.

Tensor parallelism (one process per rank, under torchrun): every rank loads its part, and the
logits of both runners are the rank's slice of the shared vocabulary (see runners.py):

    tp = apd_ext.parallel.TensorParallel.init()
    dllm = DllmRunner.from_pretrained(dream_path, device=tp.device, tp=tp, vocab_size=151936)
    verifier = VerifierRunner.from_pretrained(qwen_path, device=tp.device, tp=tp, vocab_size=151936)

A missing file raises FileNotFoundError; a present but unusable one (config.json, index, shard)
raises CheckpointError, a ValueError naming the file and key or tensor.
"""

from apd_ext.models.config import CheckpointError, ModelConfig
from apd_ext.models.hf_adapter import HFDllm, HFVerifier
from apd_ext.models.runners import DllmRunner, VerifierRunner

__all__ = ["CheckpointError", "ModelConfig", "DllmRunner", "VerifierRunner", "HFDllm", "HFVerifier"]
