"""Write the SDAR golden data (python_tests/data/sdar_tiny/) with SDAR's own modelling and decoding
code.

    python scripts/make_sdar_golden.py --modeling /tmp/refsrc/sdar [--out python_tests/data/sdar_tiny]

--modeling: a directory holding SDAR's released `modeling_sdar.py`, `configuration_sdar.py`,
`fused_linear_diffusion_cross_entropy.py` (imported by the modelling file; training only),
`generate.py` (`block_diffusion_generate`, the released decoding) and a released `config.json`
(SDAR-4B-Chat's: its key layout is copied), as on the Hugging Face repositories JetLM/SDAR-*-Chat
(JetLM, adapted from Qwen3). They are imported from there as a package at run time and never copied
into this repository.

Two small random checkpoints are built by SDAR's own classes (`SDARConfig`, `SDARForCausalLM`) and
saved by their save_pretrained: config.json with model_type "sdar", the block size `block_size`,
`mask_token_id` and an explicit `head_dim`, model.safetensors with Qwen3's tensor names (q_norm /
k_norm: RMSNorm over each head's head_dim, no attention biases, as every released SDAR):

    bs4/  block_size 4; hidden 48, 4 heads of head_dim 16 (not 48 / 4), 2 K/V heads, 2 layers,
          MLP 96, untied head, rope_theta 1000000 (SDAR-4B's)
    bs8/  block_size 8; hidden 64, 4 heads of head_dim 24 (not 64 / 4), 1 K/V head, 2 layers,
          MLP 128, tied embeddings (no lm_head tensor), rope_theta 10000

Both: vocabulary 256, mask 250, bos 251, eos_token_id a token the model generates (chosen at run
time from the answer of generate case 0 run without a stop id: a token first produced after the
first decoded block, near 40% of the answer, preferably in no prompt; printed). Every parameter is
redrawn from one seeded generator (golden_shims.randomise: norms 1 + N(0, 0.2^2), a "peaky" head
of logit std about 3 so that confidences spread over (0, 1), the mask token's head row scaled
down so that it is never predicted, o_proj / down_proj scaled by 2 (bs4) and 8 (bs8, tied)).
float32, CPU, one thread.

reference.safetensors, per checkpoint <name>:
- `<name>.input_ids` int64 [3, S] (S = 16 for bs4, 24 for bs8: whole blocks; mask tokens in every
  row) and `<name>.logits` float32 [3, S, 256]: the released forward in eval mode with the mask its
  generate builds, `tril(ones(nb, nb)).repeat_interleave(bs, 0).repeat_interleave(bs, 1)[None]`
  (block-causal: the query at p sees keys k with k // bs <= p // bs), position_ids arange(S), no
  cache. Logits are UNSHIFTED: row j is the distribution of token j.
- `<name>.cached_logits` float32 [3, bs, 256]: the first `cached_k` blocks prefilled into a
  DynamicCache (`use_cache=True, store_kv=True`, mask and positions sliced as generate slices
  them), then block cached_k + 1 read through it (`store_kv=False`, mask rows of that block over
  keys [0, (cached_k + 1) * bs): all True, the decoding branch); equal to the full forward's rows
  of that block (checked here, printed). Metadata `<name>.cached_k`.
- The released `block_diffusion_generate` (generate.py), batch 1, per case i:
  `<name>.gen.<i>.prompt` int64 [P], `<name>.gen.<i>.output` int64 [T] (generate's whole return
  row: T = ceil((P + gen_length) / bs) * bs, prompt included, mask tokens left in blocks never
  decoded after a stop), metadata `<name>.gen.<i>.args` (JSON: every argument generate was called
  with but the model and prompt), `<name>.gen.<i>.commits` (JSON: per decoded block, how many mask
  tokens each denoising step committed) and `<name>.gen.<i>.overwrites` (JSON: [block, step,
  position, old, new] for every position that held a token (prompt or committed) and was
  rewritten, see below; [] in most cases) and `<name>.gen.<i>.margins` (JSON,
  golden_shims.Margins: the smallest top-1 - top-2 logit gap, |confidence - threshold| (dynamic)
  and the gap at the topk boundary (num_transfer_tokens[step]) of the masked positions'
  confidences where topk decides, over the call: how far a float32 replay is from a different
  decision). Cases: low_confidence_dynamic (thresholds 0.9, 0.5, 0.2) and low_confidence_static,
  denoising_steps = block_size and smaller; prompts shorter than a block, longer and not a
  multiple of it, a multiple of it; case 0 ends on eos mid-way.

Greedy decoding: the released sampler divides the logits by the temperature, so temperature 0
divides by zero. The cases run at temperature 1.0, top_k 0, top_p 1.0 with `torch.multinomial`
replaced, in generate.py's module namespace only (its global `torch` is a proxy of torch whose
multinomial(probs, 1) is probs.argmax(-1, keepdim=True)), by the argmax: then x0 = argmax of the
logits and its confidence x0_p = its softmax probability, the greedy limit of the released sampler.

What the released decoding does (read from the code, seen in the data):
- Prompt blocks are prefilled whole; decoding starts at block P // bs, whose first P % bs positions
  are prompt tokens (not masks). Each decoded block runs at most denoising_steps forwards of the
  block alone over the cache (store_kv=False), then one store_kv=True forward of the finished
  block; get_num_transfer_tokens spreads block_length over the steps (base + remainder first).
- low_confidence_static commits exactly num_transfer_tokens[step] positions a step by topk over the
  confidences, with -inf at positions that are not masks; low_confidence_dynamic commits every mask
  above confidence_threshold (strict >) when there are at least num_transfer_tokens[step] of them,
  else the topk. When fewer masks remain than num_transfer_tokens[step] (a block starting with
  prompt tokens, or a dynamic step that committed more than its share), topk also picks -inf
  positions, and `cur_x[transfer_index] = x0[transfer_index]` OVERWRITES those tokens (prompt
  tokens too, written back into x) with the model's argmax at that position. Which -inf positions
  topk picks is torch's tie order (CPU here). Such rewrites are recorded in `overwrites`.
- Stop: after each finished block, any stopping_criteria_idx token anywhere in x[:, P:] ends
  decoding; the block is kept whole (tokens after eos included), later blocks stay masks.
- Batch 1 only: x is torch.full((1, total_length)); the topk / threshold loops run per row.

Shims (golden_shims.py; nothing in the released files is edited): flash_attn stub (rms_norm_fn,
used by every SDARRMSNorm, and flash_attn_func, used when a block's mask is all True) computing the
same float32 math; einops stub (rearrange); RoPE "default" and LossKwargs for transformers 5;
`_tied_weights_keys` as a dict; LegacyCache (indexable DynamicCache) as the cache of the cached
path and, in generate.py's namespace, as `DynamicCache`; the config is given pad_token_id=None
(transformers 5 no longer defaults it; SDAR-4B's config.json has none) and SDAR-4B's other
config.json values (fuse_cross_entropy, which its forward reads, ...) with this model's sizes;
config.json rewritten with exactly SDAR-4B's keys (sizes and ids of this model, torch_dtype
float32), without transformers 5's generic keys (golden_shims.released_config); the saved
checkpoint is loaded back by SDARForCausalLM.from_pretrained and must give the same logits bit for
bit (its config's pad_token_id set to None, the rotary inv_freq buffers, which transformers 5
leaves uninitialised for remote code, copied: golden_shims.copy_rope_buffers).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_shims as shims  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "python_tests" / "data" / "sdar_tiny"
FILES = ("modeling_sdar.py", "configuration_sdar.py", "fused_linear_diffusion_cross_entropy.py", "generate.py",
         "config.json")
MASK, BOS = 250, 251
PROMPT_VOCAB = 240

COMMON = dict(vocab_size=256, num_hidden_layers=2, rms_norm_eps=1e-6, max_position_embeddings=128, hidden_act="silu",
              attention_bias=False, use_sliding_window=False, sliding_window=None, attention_dropout=0.0,
              pad_token_id=None, bos_token_id=BOS, mask_token_id=MASK)
MODELS = {
    "bs4": dict(COMMON, hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                block_size=4, rope_theta=1000000, tie_word_embeddings=False),
    "bs8": dict(COMMON, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
                head_dim=24, block_size=8, rope_theta=10000.0, tie_word_embeddings=True),
}
SEED = {"bs4": 3033, "bs8": 3303}
HEAD_STD = {"bs4": 3.0, "bs8": 3.0}
RESID = {"bs4": 2.0, "bs8": 8.0}
SEQ = {"bs4": 16, "bs8": 24}
CACHED_K = {"bs4": 2, "bs8": 1}
D, S_ = "low_confidence_dynamic", "low_confidence_static"
# generate cases: prompt length, strategy, denoising_steps, confidence_threshold, gen_length
CASES = {
    "bs4": [(6, D, 4, 0.9, 16), (3, D, 4, 0.2, 16), (8, S_, 4, 0.9, 12), (10, S_, 2, 0.9, 12), (5, D, 2, 0.5, 16),
            (13, D, 4, 0.5, 12)],
    "bs8": [(11, D, 8, 0.9, 24), (5, D, 8, 0.2, 24), (16, S_, 8, 0.9, 16), (12, S_, 4, 0.9, 20), (19, D, 4, 0.5, 16),
            (3, D, 2, 0.5, 24)],
}


def import_sdar(modeling: Path):
    """(configuration module, modelling module, generate module) of the released files."""
    missing = [f for f in FILES if not (modeling / f).is_file()]
    if missing:
        raise SystemExit(f"{modeling}: missing {missing}; expected SDAR's {', '.join(FILES)}")
    shims.stub_einops()
    shims.stub_flash_attn()
    shims.transformers5()
    cfg_mod, mod, gen = shims.import_package(modeling, "sdar_ref", ["configuration_sdar", "modeling_sdar", "generate"])
    shims.tied_keys(mod.SDARForCausalLM)
    gen.DynamicCache = shims.legacy_cache_class()
    gen.torch = _ArgmaxTorch()
    return cfg_mod, mod, gen


class _ArgmaxTorch(types.ModuleType):
    """torch for generate.py's namespace: every attribute is torch's but multinomial, which takes
    the argmax (the greedy limit of the released sampler)."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def multinomial(probs, num_samples=1, **unused):
        assert num_samples == 1
        return probs.argmax(-1, keepdim=True)


def block_mask(n_blocks: int, bs: int) -> torch.Tensor:
    """The released generate's block-diffusion attention mask [1, n_blocks * bs, n_blocks * bs]."""
    m = torch.tril(torch.ones(n_blocks, n_blocks))
    return m.repeat_interleave(bs, dim=0).repeat_interleave(bs, dim=1).unsqueeze(0)


def batch(S: int, bs: int, seed: int) -> torch.Tensor:
    """int64 [3, S]: a prompt then masks, masks scattered over the row, masks in the last block."""
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, PROMPT_VOCAB, (3, S), generator=g)
    ids[0, bs + bs // 2:] = MASK
    ids[1, torch.randperm(S, generator=g)[: S // 2]] = MASK
    ids[2, S - bs + 1:] = MASK
    return ids


def run_generate(gen, model, prompt: torch.Tensor, args: dict) -> tuple[torch.Tensor, list, list, dict]:
    """(output row, commits per block, overwrites, decision margins) of one block_diffusion_generate
    call; its forwards are recorded (an instance attribute `forward`, which nn.Module.__call__
    finds)."""
    calls = []
    forward = model.forward
    margins = shims.Margins()
    dynamic = args["remasking_strategy"] == "low_confidence_dynamic"
    transfer = gen.get_num_transfer_tokens(args["block_length"], args["denoising_steps"]).tolist()
    step = [0]

    def recording(input_ids, *a, **kw):
        calls.append((input_ids.clone(), bool(kw.get("store_kv"))))
        out = forward(input_ids, *a, **kw)
        if kw.get("store_kv"):
            step[0] = 0
        else:
            masked = input_ids[0] == args["mask_id"]
            k = min(transfer[step[0]], int(masked.sum()))  # more: topk reaches the -inf positions
            margins.step(out.logits[0], masked, args["confidence_threshold"] if dynamic else None, k)
            step[0] += 1
        return out

    model.forward = recording
    try:
        x = gen.block_diffusion_generate(model, {"input_ids": prompt.view(1, -1)}, **args)
    finally:
        del model.forward
    commits, overwrites, block, steps = [], [], 0, []
    mask = args["mask_id"]
    for i, (ids, store) in enumerate(calls):
        if store:
            if steps:
                commits.append(steps)
                block, steps = block + 1, []
            continue
        before, after = ids[0], calls[i + 1][0][0]  # a denoising forward is always followed by another
        steps.append(int((before == mask).sum() - (after == mask).sum()))
        start = (len(prompt) // args["block_length"] + block) * args["block_length"]
        for j in ((before != mask) & (after != before)).nonzero().flatten().tolist():
            overwrites.append([block, len(steps) - 1, start + j, int(before[j]), int(after[j])])
    return x[0], commits, overwrites, margins.result()


def choose_eos(gen, model, prompts: list[torch.Tensor], case0: dict, bs: int) -> int:
    """A token that generate case 0 (run without a stop id) first produces after its first decoded
    block, as near 40% of the answer as there is one, preferably in no prompt."""
    out, _, _, _ = run_generate(gen, model, prompts[0], dict(case0, stopping_criteria_idx=None))
    P = len(prompts[0])
    answer = out[P:].tolist()
    first_block_end = (P // bs + 1) * bs - P
    in_prompts = set().union(*(set(p.tolist()) for p in prompts))
    first = {}
    for i, t in enumerate(answer):
        first.setdefault(t, i)
    ok = [(t in in_prompts, abs(i - 0.4 * len(answer)), t) for t, i in first.items()
          if i >= first_block_end and t != MASK]
    if not ok:
        raise SystemExit(f"no eos candidate in case 0's answer {answer}; change the seed")
    return min(ok)[2]


def build(cfg_mod, mod, gen, template: dict, name: str, out: Path) -> tuple[dict, dict]:
    kw = dict(MODELS[name])
    bs = kw["block_size"]
    # SDAR-4B's config.json with this model's sizes and ids (minus the keys transformers handles)
    meta_keys = ("architectures", "auto_map", "model_type", "transformers_version", "torch_dtype",
                 "attn_implementation")
    base = {k: v for k, v in template.items() if k not in meta_keys}
    config = cfg_mod.SDARConfig(**dict(base, **kw, eos_token_id=BOS))
    torch.manual_seed(SEED[name])
    model = mod.SDARForCausalLM(config).float().eval()
    shims.randomise(model, SEED[name], HEAD_STD[name], MASK, RESID[name])

    g = torch.Generator().manual_seed(SEED[name] + 7)
    prompts = [torch.randint(0, PROMPT_VOCAB, (P,), generator=g) for P, *_ in CASES[name]]
    cases = [dict(mask_id=MASK, gen_length=n, block_length=bs, denoising_steps=steps, temperature=1.0, top_k=0,
                  top_p=1.0, remasking_strategy=strategy, confidence_threshold=thr, eb_threshold=None)
             for _, strategy, steps, thr, n in CASES[name]]
    eos = choose_eos(gen, model, prompts, cases[0], bs)
    config.eos_token_id = eos

    ckpt = out / name
    model.save_pretrained(ckpt, safe_serialization=True)
    fixed = {k: v for k, v in template.items() if k in ("attn_implementation", "auto_map", "rope_scaling")}
    fixed.update(torch_dtype="float32", eos_token_id=eos)
    shims.released_config(ckpt, template, fixed)
    loaded_config = cfg_mod.SDARConfig.from_pretrained(ckpt)
    loaded_config.pad_token_id = None  # transformers 5 no longer defaults it
    reloaded = mod.SDARForCausalLM.from_pretrained(ckpt, config=loaded_config).float().eval()
    shims.copy_rope_buffers(model, reloaded)

    tensors, meta = {}, {}
    S, k = SEQ[name], CACHED_K[name]
    ids = batch(S, bs, SEED[name])
    m, pos = block_mask(S // bs, bs), torch.arange(S).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids, attention_mask=m, position_ids=pos).logits.float()
        again = reloaded(ids, attention_mask=m, position_ids=pos).logits.float()
        cache = gen.DynamicCache()
        n = k * bs
        model(ids[:, :n], attention_mask=m[:, :n, :n], position_ids=pos[:, :n], past_key_values=cache, use_cache=True,
              store_kv=True)
        cached = model(ids[:, n:n + bs], attention_mask=m[:, n:n + bs, :n + bs], position_ids=pos[:, n:n + bs],
                       past_key_values=cache, use_cache=True, store_kv=False).logits.float()
    assert torch.equal(logits, again), "the saved checkpoint reloads to other logits"
    diff = (cached - logits[:, n:n + bs]).abs().max().item()
    p = torch.softmax(logits, -1).amax(-1)
    print(f"{name}: {sum(t.numel() for t in model.state_dict().values())} parameters, logits {tuple(logits.shape)}, "
          f"|logits| max {logits.abs().max():.2f}, max-prob quartiles "
          f"{[round(q, 2) for q in torch.quantile(p.flatten(), torch.tensor([.25, .5, .75])).tolist()]}, "
          f"cached block {k + 1} vs full forward max|diff| {diff:.2e}, eos {eos}")
    tensors.update({f"{name}.input_ids": ids, f"{name}.logits": logits.contiguous(),
                    f"{name}.cached_logits": cached.contiguous()})
    meta[f"{name}.cached_k"] = str(k)

    for i, (prompt, args) in enumerate(zip(prompts, cases)):
        args = dict(args, stopping_criteria_idx=[eos])
        output, commits, overwrites, margins = run_generate(gen, model, prompt, args)
        P = len(prompt)
        stopped = eos in output[P:].tolist()
        print(f"  gen {i}: P={P} {args['remasking_strategy'][15:]} steps={args['denoising_steps']} "
              f"thr={args['confidence_threshold']} gen_length={args['gen_length']} -> {len(output)} positions, "
              f"{int((output[P:] == MASK).sum())} masks left{' (eos)' if stopped else ''}; commits per step {commits}"
              f"{'; overwrites ' + str(overwrites) if overwrites else ''}; margins {margins}")
        shims.record_case(tensors, meta, name, i, prompt, output, args, commits=commits, overwrites=overwrites,
                          margins=margins)
    shims.check_cases(tensors, meta, name, len(cases), eos)
    return tensors, meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modeling", type=Path, required=True,
                    help="directory with SDAR's modeling_sdar.py, configuration_sdar.py, "
                         "fused_linear_diffusion_cross_entropy.py, generate.py and a config.json")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    modeling = args.modeling.resolve()
    cfg_mod, mod, gen = import_sdar(modeling)
    template = json.loads((modeling / "config.json").read_text())
    meta = shims.base_metadata(
        MODELS, sampler="temperature 1.0, top_k 0, top_p 1.0, torch.multinomial -> argmax in generate.py's namespace")
    meta.update(shims.sha256(modeling, FILES))
    shims.write_reference(args.out, meta, (build(cfg_mod, mod, gen, template, name, args.out) for name in MODELS))


if __name__ == "__main__":
    main()
