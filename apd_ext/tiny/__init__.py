"""The embedded default model pair: a tiny Dream-style masked-diffusion LM and a tiny causal Qwen2
verifier, trained in this repository on multi-step arithmetic word problems.

    task.py       the problem generator (deterministic by seed; training and evaluation seeds disjoint)
    tokenizer.py  training of its byte-level BPE tokenizer (digits as single tokens, pad/EOS/mask); read
                  back with apd_ext.tokenizer.HFTokenizer (TinyTokenizer: the same class, tiny defaults)
    train.py      the training recipe (CPU, one thread): python -m apd_ext.tiny.train
    train_block.py  the block-diffusion dLLM (Fast-dLLM v2 layout): python -m apd_ext.tiny.train_block
    evaluate.py   accuracy and speed of decoding policies; load_pair() loads the bundled checkpoints
    sweep.py      the speed/quality sweep over policies (python -m apd_ext sweep): CSV + plot
    assets/       dllm/, block_dllm/ and verifier/: config.json, model.safetensors, tokenizer.json (Hugging
                  Face layout); block_dllm/ is the block-diffusion dLLM the same verifier verifies
"""

from pathlib import Path

# the one definition of the bundled pair's location (the CLI, evaluation and tests import it from here)
ASSETS = Path(__file__).parent / "assets"
DLLM_DIR = ASSETS / "dllm"
VERIFIER_DIR = ASSETS / "verifier"
BLOCK_DLLM_DIR = ASSETS / "block_dllm"
