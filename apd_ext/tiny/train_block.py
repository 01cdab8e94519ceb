"""A tiny block-diffusion dLLM for the bundled task, by Fast-dLLM v2's recipe (NVlabs, "Fast-dLLM v2:
Efficient Block-Diffusion LLM"): train an autoregressive model, then adapt it into a block-diffusion
LM saved as model_type "Fast_dLLM_Qwen" (Qwen2 architecture and tensor names, shifted logits,
config.json's "bd_size" and "mask_token_id").

Stage 1, AR: a causal qwen2 at the bundled dLLM's size (h192, 6 layers, 6 heads, ffn 512, q/k/v
biases, untied), the tiny tokenizer (train.build_tokenizer), next-token loss on solution + EOS:
train.py's verifier recipe at the dLLM's size, with its own slice of training problems.

Stage 2, block-diffusion adaptation (Fast-dLLM v2's training branch of Fast_dLLM_QwenForCausalLM):
each row is prompt + solution + EOS padding to a random answer-region length (train.make_batch, as the
bundled dLLM). Blocks are aligned at absolute position 0 (block(p) = p // bd_size). Per (row, block)
draw t ~ U(0, 1], p = (1 - eps) t + eps and mask that fraction of the block's answer positions (never
the prompt): independently with probability p, or, with probability `suffix_prob`, the suffix of the
block's answer positions holding a fraction p (the state left-to-right decoding of a block leaves).
A second, complementary copy masks exactly the answer positions the first leaves clean, so every
answer token is supervised once per row. The network reads [x_t ; x_t' ; x_0] (3L tokens, rotary
positions 0..L-1 in each third, cache slots 0..3L-1) under Fast-dLLM v2's block_diff_mask applied to
each noisy copy: block diagonal within a noisy copy, offset block-causal from a noisy copy's block b to
the clean blocks < b, block-causal within x_0; the two noisy copies never see each other, so this is
exactly the two [x_t ; x_0] sequences of Fast-dLLM v2's batch with their identical x_0 half computed
once. Token shift: the logit at i predicts token i + 1 (as the AR model did). Loss: cross-entropy on
the masked answer positions weighted 1 / (masked fraction of the block), the weight capped at
`max_weight`, normalised by the answer-region length; plus `causal_mix` times the cross-entropy of the
clean x_0 logits at block ends (position b * bd_size - 1 predicting the first token of block b, when it
is an answer token): the one next-token question inference asks across blocks (the first token of a
block comes from the previous, complete block's last logit), asked of the same logit.

Inference (`probe_accuracy`, a quality probe that needs none of apd_ext.decode): block-causal
attention (queries attend keys in blocks <= their own), decode one block at a time, one token per
forward, the most confident masked position of the current block (or the leftmost), stop at EOS.

    OMP_NUM_THREADS=1 python -m apd_ext.tiny.train_block --out apd_ext/tiny/assets   # writes OUT/block_dllm
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from apd_ext.models.config import ModelConfig
from apd_ext.models.transformer import Transformer
from apd_ext.tiny import task
from apd_ext.tiny.tokenizer import TinyTokenizer
from apd_ext.tiny.train import (MAX_NEW_TOKENS, TOKENIZER_PROBLEMS, TrainConfig, build_tokenizer, count_params,
                                lr_at, make_batch, save, train)

MODEL_TYPE = "Fast_dLLM_Qwen"
MAX_POSITIONS = 256  # config.json's max_position_embeddings (as the bundled pair)


@dataclass
class BlockConfig:
    bd_size: int = 16
    # stage 1: AR
    ar_steps: int = 800
    ar_lr: float = 2e-3
    ar_warmup: int = 100
    ar_first_problem: int = 300_000  # training problems drawn by index (+ TOKENIZER_PROBLEMS) from here
    # stage 2: block-diffusion adaptation
    steps: int = 600
    lr: float = 7e-4
    warmup: int = 30
    first_problem: int = 400_000
    suffix_prob: float = 0.5  # per block: suffix masking instead of independent masking
    eps: float = 1e-3  # p = (1 - eps) t + eps, as Fast-dLLM v2
    max_weight: float = 10.0  # cap of the 1 / fraction weight
    causal_mix: float = 1.0  # weight of the clean-half block-end next-token term
    complementary: bool = True
    batch_size: int = 32
    weight_decay: float = 0.01
    seed: int = 0
    log_every: int = 50
    probe_problems: int = 30
    # stage 3: more adaptation steps, fresh optimizer and schedule (0: none); the shipped model's
    # stage 3 ran as a second process (--init-from), the same computation
    cont_steps: int = 300
    cont_lr: float = 5e-4
    cont_warmup: int = 20
    cont_first_problem: int = 500_000


def cont_recipe(cfg: BlockConfig) -> BlockConfig:
    """Stage 3 as a BlockConfig for adapt()."""
    return BlockConfig(**{**asdict(cfg), "steps": cfg.cont_steps, "lr": cfg.cont_lr, "warmup": cfg.cont_warmup,
                          "first_problem": cfg.cont_first_problem, "cont_steps": 0})


def ar_recipe(cfg: BlockConfig) -> TrainConfig:
    """Stage 1 as train.py's TrainConfig: the verifier objective (kind "verifier": causal qwen2,
    next-token loss on solution + EOS) at the bundled dLLM's size."""
    return TrainConfig("verifier", hidden_size=192, num_layers=6, num_heads=6, intermediate_size=512,
                       steps=cfg.ar_steps, lr=cfg.ar_lr, warmup=cfg.ar_warmup, batch_size=cfg.batch_size,
                       first_problem=cfg.ar_first_problem, seed=cfg.seed, log_every=cfg.log_every)


def block_model_config(tok: TinyTokenizer, bd_size: int, max_positions: int = MAX_POSITIONS) -> ModelConfig:
    """The Fast_dLLM_Qwen config: Qwen2 keys, bd_size, mask_token_id, Fast-dLLM v2's architecture name."""
    return ModelConfig(
        model_type=MODEL_TYPE, vocab_size=tok.vocab_size, hidden_size=192, intermediate_size=512,
        num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=max_positions, tie_word_embeddings=False,
        attention_bias=True, bos_token_id=None, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
        mask_token_id=tok.mask_id,
        extra={"bd_size": bd_size, "architectures": ["Fast_dLLM_QwenForCausalLM"]},
    )


def block_diff_train_mask(L: int, bd_size: int, noisy: int = 1, start: int = 0) -> torch.Tensor:
    """bool [noisy (L - start) + L, same]: the attention of [x_t^1 ; ... ; x_t^noisy ; x_0], x_0 L
    long (positions 0..L-1), each noisy copy holding positions start..L-1 (start a multiple of
    bd_size: the leading all-prompt blocks, identical to x_0's, need no noisy copy). With noisy=1,
    start=0 this is Fast-dLLM v2's block_diff_mask(q, kv, block_size=bd_size, n=L); each further
    noisy copy attends itself and x_0 by the same rule and never another copy."""
    if start % bd_size:
        raise ValueError(f"start {start} is not a multiple of bd_size {bd_size}")
    n = L - start
    seg = torch.cat([torch.full((n,), c) for c in range(noisy)] + [torch.full((L,), noisy)])
    pos = torch.cat([torch.arange(start, L)] * noisy + [torch.arange(L)])
    blk = pos // bd_size
    clean = seg == noisy
    sq, sk = seg[:, None], seg[None, :]
    bq, bk = blk[:, None], blk[None, :]
    cq, ck = clean[:, None], clean[None, :]
    diagonal = (sq == sk) & (bq == bk) & ~cq  # block diagonal within a noisy copy
    offset = ~cq & ck & (bq > bk)  # noisy block b -> clean blocks < b
    causal = cq & ck & (bq >= bk)  # block-causal within x_0
    return diagonal | offset | causal


def block_causal_mask(S: int, bd_size: int) -> torch.Tensor:
    """bool [S, S]: the inference mask (Fast-dLLM v2's eval_block_diff_mask), blocks aligned at 0."""
    b = torch.arange(S) // bd_size
    return b[:, None] >= b[None, :]


def _has_rope_positions() -> bool:
    return "rope_positions" in inspect.signature(Transformer.forward).parameters


def forward_split(model: Transformer, ids: torch.Tensor, mask: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Logits [B, S, V] of ids [B, S] under mask bool [B, 1, S, S]; cache slots 0..S-1, rotary
    positions `rope` int64 [B, S]. Fresh K/V cache tensors (part of this step's graph)."""
    B, S = ids.shape
    model.setup_cache(B, S)
    for layer in model.model.layers:
        a = layer.self_attn
        a.k_cache = torch.zeros_like(a.k_cache)
        a.v_cache = torch.zeros_like(a.v_cache)
    pos = torch.arange(S).expand(B, S)
    if _has_rope_positions():
        return model(ids, pos, mask, rope_positions=rope)
    # the same computation as Transformer.forward, rotary tables indexed by `rope` (older transformer.py)
    x = model.embed(ids)
    cos, sin = model.rope_cos[rope].unsqueeze(1), model.rope_sin[rope].unsqueeze(1)
    bias = model.attention_bias(mask, x.dtype, S)
    rows = torch.arange(B).unsqueeze(1)
    for layer in model.model.layers:
        x = layer(x, cos, sin, pos, bias, rows)
    return model.lm_head(model.model.norm(x))


def draw_masks(plen, rlen, L: int, cfg: BlockConfig, gen: torch.Generator):
    """(masked bool [B, L], fraction float [B, L]): the first copy's masked answer positions and, at
    each position, the masked fraction of its block's answer positions (for the 1 / t weight)."""
    B, bd = len(plen), cfg.bd_size
    nb = -(-L // bd)
    j = torch.arange(L).view(1, -1)
    region = (j >= plen.view(-1, 1)) & (j < (plen + rlen).view(-1, 1))
    blk = (j // bd).expand(B, L)
    t = 1.0 - torch.rand(B, nb, generator=gen)  # (0, 1]
    p = (1 - cfg.eps) * t + cfg.eps
    suffix = torch.rand(B, nb, generator=gen) < cfg.suffix_prob
    u = torch.rand(B, L, generator=gen)
    # the block's answer positions: [lo, hi)
    starts = torch.arange(nb).view(1, -1) * bd
    lo = torch.maximum(starts, plen.view(-1, 1)).clamp(max=starts + bd)
    hi = torch.minimum(starts + bd, (plen + rlen).view(-1, 1)).clamp(min=lo)
    n = (hi - lo).clamp(min=1)
    count = torch.ceil(p * n).to(torch.int64)  # suffix masking: the last `count` of them
    pb, cb, hib = p.gather(1, blk), count.gather(1, blk), hi.gather(1, blk)
    ind = u < pb
    suf = j >= hib - cb
    masked = torch.where(suffix.gather(1, blk), suf, ind) & region
    frac = torch.where(suffix, count.float() / n, p).gather(1, blk)
    return masked, frac, region


def block_loss(model: Transformer, ids, keys, plen, rlen, tok: TinyTokenizer, cfg: BlockConfig,
               gen: torch.Generator):
    """The adaptation loss of one batch (module docstring). Returns (loss, stats): stats holds the
    unweighted masked-token CE ("masked_ce") and the block-end next-token CE of the clean half
    ("block_end_ce")."""
    B, L = ids.shape
    bd = cfg.bd_size
    masked, frac, region = draw_masks(plen, rlen, L, cfg, gen)
    copies = [(masked, frac)]
    if cfg.complementary:
        copies.append((region & ~masked, 1.0 - frac))
    k = len(copies)
    # the noisy copies start at the block before the one holding the earliest answer's first token's
    # predictor (logit plen - 1): the blocks before it are all prompt, the same as x_0's
    c0 = int((plen.min() - 1) // bd) * bd
    n = L - c0
    x = torch.cat([torch.where(m, tok.mask_id, ids)[:, c0:] for m, _ in copies] + [ids], dim=1)
    S = k * n + L
    valid = torch.cat([keys[:, c0:]] * k + [keys], dim=1)
    mask = block_diff_train_mask(L, bd, k, c0)[None] & valid[:, None, :]
    mask = (mask | torch.eye(S, dtype=torch.bool))[:, None]  # padding rows attend themselves
    rope = torch.cat([torch.arange(c0, L)] * k + [torch.arange(L)]).expand(B, S)
    logits = forward_split(model, x, mask, rope)
    tgt = ids[:, c0 + 1:]
    loss = torch.zeros(())
    ce_sum, ce_n = 0.0, 0
    for c, (m, f) in enumerate(copies):
        pred = logits[:, c * n: (c + 1) * n - 1]  # logit i predicts token i + 1 (positions c0..L-2)
        ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1), reduction="none").view(B, n - 1)
        mm = m[:, c0 + 1:]
        w = (1.0 / f[:, c0 + 1:].clamp(min=1e-6)).clamp(max=cfg.max_weight)
        loss = loss + ((ce * mm * w).sum(1) / rlen).mean() / k
        ce_sum += float((ce.detach() * mm).sum())
        ce_n += int(mm.sum())
    tgt = ids[:, 1:]
    stats = {"masked_ce": ce_sum / max(ce_n, 1)}
    # clean half: logit at a block end (i + 1 = b * bd) predicting the block's first token, an answer token
    j = torch.arange(L - 1).view(1, -1)
    ends = ((j + 1) % bd == 0) & region[:, 1:]
    pred0 = logits[:, k * n: k * n + L - 1]
    ce0 = F.cross_entropy(pred0.reshape(-1, pred0.shape[-1]), tgt.reshape(-1), reduction="none").view(B, L - 1)
    n_ends = ends.sum()
    end_ce = (ce0 * ends).sum() / n_ends.clamp(min=1)
    stats["block_end_ce"] = float(end_ce.detach())
    if cfg.causal_mix:
        loss = loss + cfg.causal_mix * end_ce
    return loss, stats


def adapt(model: Transformer, tok: TinyTokenizer, cfg: BlockConfig, log=print) -> dict:
    """Stage 2 on `model` (in place): cfg.steps AdamW steps of block_loss. Returns the loss curves."""
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    sched = TrainConfig("dllm", 0, 0, 0, 0, steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    model.train()
    curve, acc, st, t0 = [], [], {"masked_ce": [], "block_end_ce": []}, time.perf_counter()
    first = cfg.first_problem + TOKENIZER_PROBLEMS
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(sched, step)
        problems = task.train_problems(first + step * cfg.batch_size, cfg.batch_size)
        ids, keys, plen, rlen = make_batch(tok, problems, "dllm", gen)
        loss, stats = block_loss(model, ids, keys, plen, rlen, tok, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc.append(loss.item())
        for key in st:
            st[key].append(stats[key])
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.perf_counter() - t0
            n = len(acc)
            rec = (step + 1, sum(acc) / n, sum(st["masked_ce"][-n:]) / n, sum(st["block_end_ce"][-n:]) / n)
            curve.append(rec)
            log(f"[block] step {step + 1}/{cfg.steps} loss {rec[1]:.4f} masked CE {rec[2]:.4f} "
                f"block-end CE {rec[3]:.4f} lr {lr_at(sched, step):.2e} {el:.0f}s ({el / (step + 1):.2f} s/step)")
            acc = []
    model.eval()
    return {"columns": ["step", "loss", "masked_ce", "block_end_ce"], "curve": curve}


@torch.no_grad()
def decode_block(model: Transformer, tok: TinyTokenizer, prompt: list[int], bd_size: int,
                 order: str = "confidence", max_new: int = MAX_NEW_TOKENS) -> tuple[list[int], int]:
    """Greedy block decoding, one token per forward: (answer tokens before the first EOS, forwards).
    Each forward reads [prompt + committed + current block] under the block-causal mask; the current
    block's masked positions j are predicted by logit j - 1 (shifted); `order` "confidence" commits
    the one with the highest probability, "left" the leftmost. Stops when an EOS has no mask before it."""
    P, end_limit = len(prompt), len(prompt) + max_new
    seq, forwards = list(prompt), 0
    while len(seq) < end_limit:
        s = len(seq)
        e = min((s // bd_size + 1) * bd_size, end_limit)
        seq += [tok.mask_id] * (e - s)
        ids = torch.tensor([seq])
        model.setup_cache(1, e)
        mask = block_causal_mask(e, bd_size)[None, None]
        while True:
            todo = [j for j in range(s, e) if seq[j] == tok.mask_id]
            if not todo:
                break
            rows = torch.tensor([[j - 1 for j in todo]])
            logits = model(ids, torch.arange(e)[None], mask, logit_rows=rows)[0].float()  # [len(todo), V]
            forwards += 1
            probs = logits.softmax(-1)
            conf, tokens = probs.max(-1)
            i = int(conf.argmax()) if order == "confidence" else 0
            seq[todo[i]] = int(tokens[i])
            ids[0, todo[i]] = seq[todo[i]]
            answer = seq[P:e]
            if tok.eos_id in answer:
                stop = answer.index(tok.eos_id)
                if tok.mask_id not in answer[:stop]:
                    return answer[:stop], forwards
    return seq[P:end_limit], forwards


def probe_accuracy(model: Transformer, tok: TinyTokenizer, n: int = 30, bd_size: int | None = None,
                   order: str = "confidence", seed: int = 0) -> dict:
    """Accuracy on task.py's held-out problems (eval seed `seed`, the first n), greedy block decoding
    at one token per forward (decode_block); the answer is scored as apd_ext.tiny.evaluate does."""
    bd_size = bd_size or model.config.extra["bd_size"]
    model.eval()
    correct, forwards, tokens, failures, t0 = 0, 0, 0, [], time.perf_counter()
    for p in task.eval_problems(seed, n):
        out, f = decode_block(model, tok, tok.encode(p.prompt), bd_size, order)
        text = tok.decode(out)
        ok = task.extract_answer(text) == p.answer
        correct += ok
        forwards += f
        tokens += len(out)
        if not ok and len(failures) < 3:
            failures.append({"seed": p.seed, "expected": p.answer, "got": text})
    return {"accuracy": correct / n, "problems": n, "order": order, "eval_seed": seed, "forwards": forwards,
            "tokens": tokens, "seconds": round(time.perf_counter() - t0, 1), "failures": failures}


def run(cfg: BlockConfig, out: str | Path, log=print, ar_dir: str | Path | None = None,
        init_from: str | Path | None = None) -> dict:
    """Both stages; writes OUT (config.json, model.safetensors, tokenizer.json, generation_config.json,
    training.json). The AR stage's checkpoint goes to ar_dir (default: a temporary directory).
    init_from: a block checkpoint to continue (no AR stage; cfg.steps more adaptation steps with a
    fresh optimizer and schedule; its training.json is kept under "previous")."""
    if init_from is not None:
        return _continue(cfg, out, Path(init_from), log)
    t_all = time.perf_counter()
    tok = build_tokenizer()
    with tempfile.TemporaryDirectory(prefix="apd_tiny_block_ar_") as tmp:
        ar_out = Path(ar_dir) if ar_dir is not None else Path(tmp) / "ar"
        t0 = time.perf_counter()
        ar_model, _, _ = train(ar_recipe(cfg), tok, ar_out, log=log)
        ar_seconds = time.perf_counter() - t0
        ar_record = json.loads((ar_out / "training.json").read_text())
    mc = block_model_config(tok, cfg.bd_size)
    # training reads 3L tokens (two noisy copies and x_0): a config with room for them
    model = Transformer(block_model_config(tok, cfg.bd_size, 4 * MAX_POSITIONS))
    model.load_state_dict(ar_model.state_dict())
    probes, n_probe = {}, cfg.probe_problems  # 0: no probes (tests)
    if n_probe:  # block size 1 is plain causal decoding: the AR model's own accuracy (the ceiling to keep)
        probes["ar_causal"] = probe_accuracy(model, tok, n_probe, 1, "left")
        log(f"[probe] AR model, causal greedy: {probes['ar_causal']['accuracy']:.2f}")
        probes["ar_init_confidence"] = probe_accuracy(model, tok, n_probe, cfg.bd_size, "confidence")
        log(f"[probe] AR weights as a block model (confidence): {probes['ar_init_confidence']['accuracy']:.2f}")
    log(f"[block] {count_params(model):,} parameters, {cfg.steps} steps of {cfg.batch_size}, bd_size {cfg.bd_size}")
    t0 = time.perf_counter()
    curves = adapt(model, tok, cfg, log)
    adapt_seconds = time.perf_counter() - t0
    for order in ("confidence", "left") if n_probe else ():
        probes[f"block_{order}"] = probe_accuracy(model, tok, n_probe, cfg.bd_size, order)
        log(f"[probe] block dLLM ({order}): {probes[f'block_{order}']['accuracy']:.2f}")
    stages = {"ar": {"recipe": ar_record["recipe"], "train_seconds": round(ar_seconds, 1),
                     "loss_curves": ar_record["loss_curves"]},
              "block_diffusion": {"train_seconds": round(adapt_seconds, 1), "loss_curves": curves}}
    if cfg.cont_steps:
        log(f"[block] stage 3: {cfg.cont_steps} more steps, lr {cfg.cont_lr}")
        t0 = time.perf_counter()
        curves = adapt(model, tok, cont_recipe(cfg), log)
        stages["block_diffusion_cont"] = {"train_seconds": round(time.perf_counter() - t0, 1), "loss_curves": curves}
        for order in ("confidence", "left") if n_probe else ():
            probes[f"cont_{order}"] = probe_accuracy(model, tok, n_probe, cfg.bd_size, order)
            log(f"[probe] block dLLM after stage 3 ({order}): {probes[f'cont_{order}']['accuracy']:.2f}")
    info = dict(recipe=asdict(cfg), stages=stages,
        probe=probes, parameters=count_params(model), total_seconds=round(time.perf_counter() - t_all, 1),
        torch=torch.__version__, threads=torch.get_num_threads())
    model.config = mc
    save(model, mc, tok, out, info)
    return info


def _continue(cfg: BlockConfig, out: Path, init_from: Path, log) -> dict:
    from apd_ext.models.checkpoint import load_weights

    t_all = time.perf_counter()
    tok = build_tokenizer()
    previous = json.loads((init_from / "training.json").read_text())
    mc = block_model_config(tok, cfg.bd_size)
    model = Transformer(block_model_config(tok, cfg.bd_size, 4 * MAX_POSITIONS))
    load_weights(model, init_from)
    log(f"[block] continuing {init_from}: {cfg.steps} steps of {cfg.batch_size}, bd_size {cfg.bd_size}, "
        f"problems from {cfg.first_problem}")
    t0 = time.perf_counter()
    curves = adapt(model, tok, cfg, log)
    adapt_seconds = time.perf_counter() - t0
    probes = {}  # (cont_* fields unused here: --init-from runs cfg.steps, cfg.lr, cfg.first_problem)
    for order in ("confidence", "left") if cfg.probe_problems else ():
        probes[f"block_{order}"] = probe_accuracy(model, tok, cfg.probe_problems, cfg.bd_size, order)
        log(f"[probe] block dLLM ({order}): {probes[f'block_{order}']['accuracy']:.2f}")
    info = dict(recipe=asdict(cfg), init_from=str(init_from), previous=previous,
                stages={"block_diffusion": {"train_seconds": round(adapt_seconds, 1), "loss_curves": curves}},
                probe=probes, parameters=count_params(model), total_seconds=round(time.perf_counter() - t_all, 1),
                torch=torch.__version__, threads=torch.get_num_threads())
    model.config = mc
    save(model, mc, tok, out, info)
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m apd_ext.tiny.train_block", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "assets"), help="writes OUT/block_dllm")
    p.add_argument("--ar-dir", default=None, help="keep the AR stage's checkpoint here (default: a temp dir)")
    p.add_argument("--init-from", default=None, help="continue this block checkpoint (no AR stage)")
    p.add_argument("--threads", type=int, default=1)
    for f in ("bd_size", "ar_steps", "steps", "first_problem", "warmup", "batch_size", "probe_problems", "log_every"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None)
    p.add_argument("--cont-steps", type=int, default=None, help="stage 3 steps (0: none)")
    for f in ("ar_lr", "lr", "suffix_prob", "causal_mix"):
        p.add_argument("--" + f.replace("_", "-"), type=float, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = BlockConfig(**{k: v for k, v in vars(args).items() if k in BlockConfig.__dataclass_fields__ and v is not None})
    run(cfg, Path(args.out) / "block_dllm", log=lambda s: print(s, flush=True), ar_dir=args.ar_dir,
        init_from=args.init_from)


if __name__ == "__main__":
    main()
