"""Write the Fast-dLLM v2 golden data (python_tests/data/fastdllm_v2_tiny/) with Fast-dLLM v2's own
modelling code.

    python scripts/make_fastdllm_v2_golden.py --modeling /tmp/refsrc/fastdllm_v2 [--out python_tests/data/fastdllm_v2_tiny]

--modeling: a directory holding Fast-dLLM v2's released `modeling.py` (here under the name
`modeling_ori.py`, as the public copy used keeps the original beside a fork's edit; `modeling.py` is
read when `modeling_ori.py` is absent) and `configuration.py` (as on the Hugging Face repository
Efficient-Large-Model/Fast_dLLM_v2_7B; NVlabs, adapted from Qwen2.5). They are imported from there as
a package at run time and never copied into this repository.

Two small random checkpoints are built by Fast-dLLM's own classes (`Fast_dLLM_QwenConfig`,
`Fast_dLLM_QwenForCausalLM`) and saved by their save_pretrained: config.json with model_type
"Fast_dLLM_Qwen" and the block size `bd_size`, model.safetensors with Qwen2's tensor names (q/k/v
biases always: the released attention builds them whatever the config says):

    bd4/  bd_size 4; hidden 48, 4 heads of 12, 2 K/V heads, 2 layers, MLP 96, untied head,
          rope_theta 10000
    bd8/  bd_size 8; hidden 64, 8 heads of 8, 2 K/V heads, 2 layers, MLP 128, tied embeddings
          (tie_word_embeddings: no lm_head tensor), rope_theta 1000000

Both: vocabulary 256, mask 250 (written into config.json as `mask_token_id`: the released code
hard-codes 151665 as generate's default `mask_id` and has no config key for it), bos 251, and
eos_token_id a token the model generates (chosen at run time from the answer of generate case 0
run without a stop token: a token first produced after its first block, near 40% of the answer,
preferably in no prompt; printed). Every parameter is redrawn from one seeded generator
(golden_shims.randomise: norms 1 + N(0, 0.2^2), a "peaky" head of logit std about 3 so that
confidences spread over (0, 1), the mask token's head row scaled down so that it is never
predicted, o_proj / down_proj scaled by 2 (bd4) and 8 (bd8, tied: a smaller share of the input
embedding in the last hidden state, else a tied head mostly repeats tokens)). float32, CPU, one
thread. The saved checkpoint is loaded back by the released class (from_pretrained) and must give
the same logits bit for bit.

reference.safetensors, per checkpoint <name>:
- `<name>.input_ids` int64 [3, S] (S = 16 for bd4, 24 for bd8: whole blocks; mask tokens in every
  row) and `<name>.logits` float32 [3, S, 256]: the released forward in eval mode,
  `model(input_ids, block_size=bd_size)`: block-causal attention (`eval_block_diff_mask`: the
  query at p sees keys k with k // bd_size <= p // bd_size), positions arange(S), no cache. Logits
  are SHIFTED: row j predicts token j + 1 (Qwen2's AR head; the released generate shifts them back
  by one inside a block, see below).
- `<name>.cached_logits` float32 [3, bd_size, 256]: the first `cached_k` blocks prefilled into the
  released cache (`use_cache=True, update_past_key_values=True, block_size=bd_size`), then block
  cached_k + 1's rows read through it (`past_key_values=..., update_past_key_values=False`); equal
  to the full forward's rows of that block (checked here, printed). Metadata `<name>.cached_k`.
- The released `generate` (Fast_dLLM_QwenForCausalLM.generate), greedy (temperature 0), batch 1,
  per case i: `<name>.gen.<i>.prompt` int64 [P], `<name>.gen.<i>.output` int64 [N] (generate's
  whole return row: prompt, answer, truncated after the first stop token), metadata
  `<name>.gen.<i>.args` (JSON: every argument generate was called with, so a test can replay it)
  and `<name>.gen.<i>.commits` (JSON: per block, how many tokens each denoising step committed;
  derived from the step's sub-block, its masks and the threshold rule, as generate computes it) and
  `<name>.gen.<i>.margins` (JSON, golden_shims.Margins: the smallest top-1 - top-2 logit gap of
  every argmax taken, |confidence - threshold| of the masked positions, and the gap between the
  two most confident when none is above the threshold, over the whole call: how far a float32
  replay is from a different decision).
  The cases cover prompts shorter than a block, longer and not a multiple of it, a multiple of it
  (prefill + the AR token), thresholds 0.9, 0.5, 0.3, 0.2 and 1.0 (one token a step), both
  small_block_size < bd_size and = bd_size, and case 0 ends on eos mid-way.

What the released generate does (read from the code; the cases avoid the first quirk):
- A prompt of exactly bd_size tokens is never seen: prefill runs only when P > block_size, so for
  P == block_size the first block is x_t[:, -block_size:] = the bd_size masks alone, with no cache
  (and the completed block is cached at positions 0..bd_size-1). The cases use P != bd_size.
- When P > block_size and P % block_size == 0 it prefills the prompt and appends the argmax of the
  last row (an AR token) as the first token of the next block; otherwise the first block is the
  prompt's tail plus masks. After each completed block the block is forwarded once more with
  update_past_key_values=True (cache write) and the argmax of its last row is appended: every
  block's first position is an AR token, never a mask.
- Inside a block, the logits of position p are the row of p - 1 (`cat([logits[:, :1],
  logits[:, :-1]])`, block-local; the block's first row is only ever used for a position that is
  not masked). A step commits every masked position of the current sub-block whose probability is
  > threshold (strict), and at least the most confident one.
- Denoising forwards pass no block_size, so their mask uses forward's default 32: all True for a
  block aligned to bd_size when bd_size divides 32 (4 and 8 here), i.e. the same as bd_size's.
- Stop: the stop token counts once no mask precedes it in the block; the block is then left
  uncompleted (not cached) and the output cut after the first stop token of the answer.
- num_blocks = max_new_tokens // block_size blocks are decoded, the first one counting from the
  prompt's tail, and the AR token after the last one is appended too: the answer has
  num_blocks * block_size - P % block_size (+ 1) tokens, not max_new_tokens.
- Batch > 1 is not supported as written (the stop checks take the first hit's column of whichever
  row has one; sampling at temperature > 0 draws row 0 only). use_block_cache (the approximate
  sub-block cache) is left at its default False.

Shims (golden_shims.py; nothing in the released files is edited): the modelling file imports its
configuration absolutely (`from configuration import ...`), so sys.modules["configuration"] is the
package's configuration module; einops stub (imported, unused in eval); RoPE "default" for
transformers 5; `_tied_weights_keys` as a dict; LegacyCache (indexable DynamicCache) put in the
modelling module's namespace as `DynamicCache`, which its forward instantiates; transformers 5
no longer defaults pad_token_id, so the config is given pad_token_id=None (4.x's default);
config.json rewritten with the keys of the released config.json layout (Qwen2.5's keys, bd_size,
auto_map, layer_types, torch_dtype) plus mask_token_id, without transformers 5's generic keys
(golden_shims.released_config); for the reload check, the loaded config's pad_token_id is set to
None and the rotary inv_freq buffers, which transformers 5's from_pretrained leaves uninitialised
for remote code, are copied from the saved model (golden_shims.copy_rope_buffers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_shims as shims  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "python_tests" / "data" / "fastdllm_v2_tiny"
CONFIG_FILE = "configuration.py"
MASK, BOS = 250, 251
PROMPT_VOCAB = 240  # prompts draw tokens below this (not mask, bos)

COMMON = dict(vocab_size=256, num_hidden_layers=2, rms_norm_eps=1e-6, max_position_embeddings=128,
              hidden_act="silu", use_sliding_window=False, max_window_layers=28, attention_dropout=0.0,
              initializer_range=0.02, pad_token_id=None, bos_token_id=BOS)
MODELS = {
    "bd4": dict(COMMON, hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, bd_size=4,
                rope_theta=10000.0, tie_word_embeddings=False),
    "bd8": dict(COMMON, hidden_size=64, intermediate_size=128, num_attention_heads=8, num_key_value_heads=2,
                bd_size=8, rope_theta=1000000.0, tie_word_embeddings=True),
}
SEED = {"bd4": 2024, "bd8": 4202}
HEAD_STD = {"bd4": 3.0, "bd8": 3.0}
RESID = {"bd4": 2.0, "bd8": 8.0}  # o_proj / down_proj scale (golden_shims.randomise)
SEQ = {"bd4": 16, "bd8": 24}
CACHED_K = {"bd4": 2, "bd8": 1}
# generate cases: prompt length, threshold, small_block_size, max_new_tokens (case 0 ends on eos)
CASES = {
    "bd4": [(6, 0.9, 2, 20), (3, 0.9, 4, 16), (8, 0.5, 2, 16), (10, 0.2, 4, 20), (5, 1.0, 4, 12), (13, 0.3, 4, 16)],
    "bd8": [(11, 0.9, 4, 32), (5, 0.9, 8, 24), (16, 0.5, 4, 24), (12, 0.2, 8, 24), (19, 1.0, 4, 16), (3, 0.3, 4, 24)],
}
# the keys of the released config.json (Qwen2.5's layout + bd_size, auto_map, layer_types, mask)
KEYS = ("architectures", "attention_dropout", "bd_size", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size",
        "initializer_range", "intermediate_size", "layer_types", "max_position_embeddings", "max_window_layers",
        "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_theta",
        "sliding_window", "tie_word_embeddings", "transformers_version", "use_cache", "use_sliding_window",
        "vocab_size")


def import_fastdllm(modeling: Path):
    """(configuration module, modelling module) of the released files in `modeling`."""
    model_file = "modeling_ori.py" if (modeling / "modeling_ori.py").is_file() else "modeling.py"
    missing = [f for f in (model_file, CONFIG_FILE) if not (modeling / f).is_file()]
    if missing:
        raise SystemExit(f"{modeling}: missing {missing}; expected Fast-dLLM v2's modeling.py and configuration.py")
    shims.stub_einops()
    shims.transformers5()
    (cfg_mod,) = shims.import_package(modeling, "fastdllm_ref", ["configuration"])
    sys.modules["configuration"] = cfg_mod  # the modelling file's `from configuration import ...`
    (mod,) = shims.import_package(modeling, "fastdllm_ref", [model_file[:-3]])
    shims.tied_keys(mod.Fast_dLLM_QwenForCausalLM)
    mod.DynamicCache = shims.legacy_cache_class()
    return cfg_mod, mod, model_file


def batch(S: int, bs: int, seed: int) -> torch.Tensor:
    """int64 [3, S]: a prompt then masks, masks scattered over the row, masks in the last block."""
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, PROMPT_VOCAB, (3, S), generator=g)
    ids[0, bs + bs // 2:] = MASK
    ids[1, torch.randperm(S, generator=g)[: S // 2]] = MASK
    ids[2, S - bs + 1:] = MASK
    return ids


class Recorder:
    """Wraps a model's forward and sample_with_top_p (instance attributes, which generate's
    self.forward / self.sample_with_top_p find first) to count what each denoising step commits."""

    def __init__(self, model, mask_id: int, block_size: int, small: int, threshold: float):
        self.model, self.mask, self.bs, self.small, self.thr = model, mask_id, block_size, small, threshold
        self.blocks: list[list[int]] = []
        self.last_input = None
        self.new_block = True
        self.margins = shims.Margins()
        forward, sample = model.forward, model.sample_with_top_p

        def rec_forward(*a, **kw):
            ids = kw.get("input_ids", a[0] if a else None)
            if not kw.get("update_past_key_values"):
                self.last_input = ids.clone()
            out = forward(*a, **kw)
            if kw.get("update_past_key_values"):
                self.new_block = True  # prefill or a completed block's cache write: its last row's argmax
                self.margins.argmax(out.logits[0, -1])
            return out

        def rec_sample(logits, **kw):
            x_1, p_1t = sample(logits, **kw)
            block = self.last_input[0, -self.bs:]
            masked = block == self.mask
            j = next(j for j in range(self.bs // self.small) if masked[j * self.small:(j + 1) * self.small].any())
            sub = masked[j * self.small:(j + 1) * self.small]
            p = torch.gather(p_1t[0], -1, x_1[0].unsqueeze(-1)).squeeze(-1)
            n = int((sub & (p > self.thr)).sum())
            self.margins.step(logits[0], sub, self.thr, 1)  # > threshold, else the most confident
            if self.new_block:
                self.blocks.append([])
                self.new_block = False
            self.blocks[-1].append(max(n, 1))
            return x_1, p_1t

        model.forward, model.sample_with_top_p = rec_forward, rec_sample

    def close(self):
        del self.model.forward, self.model.sample_with_top_p


def run_generate(model, prompt: torch.Tensor, args: dict) -> tuple[torch.Tensor, list, dict]:
    """(output row, commits per block, decision margins) of one generate call."""
    rec = Recorder(model, args["mask_id"], args["block_size"], args["small_block_size"], args["threshold"])
    try:
        out = model.generate(prompt.view(1, -1), **args)
    finally:
        rec.close()
    return out[0], rec.blocks, rec.margins.result()


def choose_eos(model, prompts: list[torch.Tensor], case0: dict, bs: int) -> int:
    """A token that generate case 0 (run without a stop token) first produces in its answer's
    second block or later, as near 40% of the answer as there is one, preferably in no prompt:
    with it as the stop token, case 0 ends mid-way."""
    out, _, _ = run_generate(model, prompts[0], dict(case0, stop_token=-1))
    answer = out[len(prompts[0]):].tolist()
    in_prompts = set().union(*(set(p.tolist()) for p in prompts))
    first = {}
    for i, t in enumerate(answer):
        first.setdefault(t, i)
    ok = [(t in in_prompts, abs(i - 0.4 * len(answer)), t) for t, i in first.items() if i > bs and t != MASK]
    if not ok:
        raise SystemExit(f"no eos candidate in case 0's answer {answer}; change the seed")
    return min(ok)[2]


def build(cfg_mod, mod, name: str, out: Path) -> tuple[dict, dict]:
    kw = dict(MODELS[name])
    bs = kw["bd_size"]
    config = cfg_mod.Fast_dLLM_QwenConfig(**kw, eos_token_id=BOS)
    torch.manual_seed(SEED[name])
    model = mod.Fast_dLLM_QwenForCausalLM(config).float().eval()
    shims.randomise(model, SEED[name], HEAD_STD[name], MASK, RESID[name])

    g = torch.Generator().manual_seed(SEED[name] + 7)
    prompts = [torch.randint(0, PROMPT_VOCAB, (P,), generator=g) for P, *_ in CASES[name]]
    cases = [dict(mask_id=MASK, threshold=thr, small_block_size=small, block_size=bs, max_new_tokens=n,
                  temperature=0, top_p=0.95, use_block_cache=False)
             for _, thr, small, n in CASES[name]]
    eos = choose_eos(model, prompts, cases[0], bs)
    config.eos_token_id = eos

    ckpt = out / name
    model.save_pretrained(ckpt, safe_serialization=True)
    shims.released_config(ckpt, KEYS, {
        "mask_token_id": MASK, "torch_dtype": "float32", "eos_token_id": eos, "rope_scaling": None,
        "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig",
                     "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"}})
    loaded_config = cfg_mod.Fast_dLLM_QwenConfig.from_pretrained(ckpt)
    loaded_config.pad_token_id = None  # transformers 5 no longer defaults it
    reloaded = mod.Fast_dLLM_QwenForCausalLM.from_pretrained(ckpt, config=loaded_config).float().eval()
    shims.copy_rope_buffers(model, reloaded)

    tensors, meta = {}, {}
    S, k = SEQ[name], CACHED_K[name]
    ids = batch(S, bs, SEED[name])
    with torch.no_grad():
        logits = model(input_ids=ids, block_size=bs).logits.float()
        again = reloaded(input_ids=ids, block_size=bs).logits.float()
        prefill = model(input_ids=ids[:, : k * bs], use_cache=True, update_past_key_values=True, block_size=bs)
        cached = model(input_ids=ids[:, k * bs:(k + 1) * bs], past_key_values=prefill.past_key_values,
                       use_cache=True, update_past_key_values=False, block_size=bs).logits.float()
    assert torch.equal(logits, again), "the saved checkpoint reloads to other logits"
    diff = (cached - logits[:, k * bs:(k + 1) * bs]).abs().max().item()
    p = torch.softmax(logits, -1).amax(-1)
    print(f"{name}: {sum(t.numel() for t in model.state_dict().values())} parameters, logits {tuple(logits.shape)}, "
          f"|logits| max {logits.abs().max():.2f}, max-prob quartiles "
          f"{[round(q, 2) for q in torch.quantile(p.flatten(), torch.tensor([.25, .5, .75])).tolist()]}, "
          f"cached block {k + 1} vs full forward max|diff| {diff:.2e}, eos {eos}")
    tensors.update({f"{name}.input_ids": ids, f"{name}.logits": logits.contiguous(),
                    f"{name}.cached_logits": cached.contiguous()})
    meta[f"{name}.cached_k"] = str(k)

    for i, (prompt, args) in enumerate(zip(prompts, cases)):
        args = dict(args, stop_token=eos)
        output, commits, margins = run_generate(model, prompt, args)
        stopped = eos in output[len(prompt):].tolist()
        print(f"  gen {i}: P={len(prompt)} thr={args['threshold']} small={args['small_block_size']} "
              f"N={args['max_new_tokens']} -> {len(output) - len(prompt)} tokens{' (eos)' if stopped else ''}; "
              f"commits per step {commits}; margins {margins}")
        shims.record_case(tensors, meta, name, i, prompt, output, args, commits=commits, margins=margins)
    shims.check_cases(tensors, meta, name, len(cases), eos)
    return tensors, meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modeling", type=Path, required=True,
                    help="directory with Fast-dLLM v2's modeling_ori.py (or modeling.py) and configuration.py")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    modeling = args.modeling.resolve()
    cfg_mod, mod, model_file = import_fastdllm(modeling)
    meta = shims.base_metadata(MODELS, modeling_file=model_file)
    meta.update(shims.sha256(modeling, (model_file, CONFIG_FILE)))
    shims.write_reference(args.out, meta, (build(cfg_mod, mod, name, args.out) for name in MODELS))


if __name__ == "__main__":
    main()
