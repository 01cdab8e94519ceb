"""Training of the bundled tiny pair on the arithmetic word problems (apd_ext/tiny/task.py), on CPU,
deterministic (fixed seeds, one thread, problems drawn by index from the training seeds).

- dLLM: a Dream-style masked diffusion LM, bidirectional Qwen2 architecture (model_type "Dream":
  the logit at position i predicts token i + 1). As Dream starts from Qwen2.5's weights, the
  network is first trained `ar_init_steps` steps as a causal LM (next-token loss, causal mask; with
  the shifted convention the logit at i predicts i + 1 in both phases), then with the
  masked-diffusion objective: each sequence is prompt + solution + EOS padding up to a random
  answer-region length (<= MAX_NEW_TOKENS; Dream's and LLaDA's SFT pad with EOS); pick t ~ U(0, 1],
  mask that fraction of the answer region (never the prompt), take the cross-entropy on the masked
  positions weighted 1 / t, normalised by the region length; attention bidirectional.
  Which positions are masked: with probability 1 - `suffix_prob` each answer position is masked
  independently with probability t (the standard objective); with probability `suffix_prob` the
  masked set is the suffix of the region holding a fraction t of it (the state left-to-right
  decoding produces: committed prefix, masked rest). Both are masked-diffusion ELBO terms for
  their masking process; the suffix part matches what `dllm_fixed` / APD decoding shows the model.
  A diffusion step may also add `causal_mix` times the causal next-token loss of the same batch
  (causal mask, prompt + solution + EOS): a suffix-masked sequence gives the diffusion loss one
  next-token signal (its first masked position) where a causal pass gives one per position, and
  with the shifted convention both objectives ask the same logit for the same token.
  The shipped dLLM is `DLLM_STAGES`: 800 causal + 450 diffusion steps, 650 diffusion steps, 2,000
  diffusion + causal steps. After the second stage it solved 10% of held-out problems at one token
  per step; the third took it to 94% (apd_ext/tiny/assets/README.md has the curve and what else was
  tried).
- Verifier: a causal Qwen2 (model_type "qwen2"), about a quarter of the dLLM's parameters,
  next-token cross-entropy on the solution and its EOS.

Both use apd_ext.models.Transformer (fresh K/V cache tensors per step so that autograd sees a new
graph) and are written with apd_ext.models.checkpoint.save_checkpoint plus tokenizer.json.

    OMP_NUM_THREADS=1 python -m apd_ext.tiny.train --out apd_ext/tiny/assets    # both models, the shipped recipe
    python -m apd_ext.tiny.train --models dllm --out /tmp/x --ar-init-steps 1600 --dllm-steps 1400 \
        --causal-mix 1.0                                                          # one custom run

Duration of the shipped recipe on one thread of an AMD EPYC core: verifier 341 s (1,600 steps,
0.21 s/step); dLLM about 85 minutes: 800 causal steps at 0.76 s, 450 diffusion steps at 0.87 s,
650 at 0.84 s, 2,000 diffusion + causal steps at 1.72 s. Each checkpoint's training.json records
its recipe, time and loss curves (the dLLM's: one record per stage).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from apd_ext.models.checkpoint import load_weights, save_checkpoint
from apd_ext.models.config import ModelConfig
from apd_ext.models.transformer import Transformer
from apd_ext.tiny import task
from apd_ext.tiny.tokenizer import TinyTokenizer, train_tokenizer

MAX_NEW_TOKENS = 64  # the answer region: longest solution (58 tokens) + EOS fits
TOKENIZER_PROBLEMS = 4000  # training problems 0..3999 train the tokenizer


@dataclass
class TrainConfig:
    kind: str  # "dllm" or "verifier"
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    steps: int
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    suffix_prob: float = 0.7
    seed: int = 0
    first_problem: int = 0  # training problems are drawn by index from here on
    log_every: int = 50
    save_every: int = 0  # also write the checkpoint every N steps (0: only at the end)
    ar_init_steps: int = 0  # dLLM: causal next-token steps before the diffusion objective
    ar_init_lr: float = 2e-3
    causal_mix: float = 0.0  # dLLM diffusion phase: loss = diffusion + causal_mix * causal next-token loss
    init_from: str | None = None  # start from this checkpoint's weights
    extra: dict = field(default_factory=dict)


# The shipped dLLM: three stages, each starting from the last one's weights with a fresh optimizer,
# its own learning-rate schedule and its own slice of training problems (history: the first two
# were an earlier recipe that stopped at 10% accuracy; the third added the causal term).
_DLLM = dict(kind="dllm", hidden_size=192, num_layers=6, num_heads=6, intermediate_size=512, warmup=30,
             suffix_prob=0.85)
DLLM_STAGES = [
    TrainConfig(**_DLLM, steps=450, lr=5e-4, ar_init_steps=800),  # causal start, then diffusion
    TrainConfig(**_DLLM, steps=650, lr=3e-4, first_problem=100_000),  # diffusion
    TrainConfig(**_DLLM, steps=2000, lr=1e-3, first_problem=200_000, causal_mix=1.0),  # diffusion + causal
]
DLLM_RECIPE = DLLM_STAGES[0]  # the base of single runs (python -m apd_ext.tiny.train --dllm-steps ...)
VERIFIER_RECIPE = TrainConfig("verifier", hidden_size=128, num_layers=3, num_heads=4, intermediate_size=384,
                              steps=1600)


def build_tokenizer() -> TinyTokenizer:
    return TinyTokenizer(train_tokenizer(p.text for p in task.train_problems(0, TOKENIZER_PROBLEMS)))


def model_config(cfg: TrainConfig, tok: TinyTokenizer) -> ModelConfig:
    dream = cfg.kind == "dllm"
    return ModelConfig(
        model_type="Dream" if dream else "qwen2",
        vocab_size=tok.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attention_bias=True,
        bos_token_id=None,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
        mask_token_id=tok.mask_id if dream else None,
        extra={"architectures": ["DreamModel" if dream else "Qwen2ForCausalLM"]},
    )


def new_model(cfg: TrainConfig, tok: TinyTokenizer) -> tuple[Transformer, ModelConfig]:
    torch.manual_seed(cfg.seed)
    mc = model_config(cfg, tok)
    model = Transformer(mc)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
    return model, mc


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward(model: Transformer, ids: torch.Tensor, keys: torch.Tensor, causal: bool) -> torch.Tensor:
    """Logits [B, S, V] of a full sequence; keys bool [B, S]: real (non-padding) positions."""
    B, S = ids.shape
    model.setup_cache(B, S)
    for layer in model.model.layers:  # fresh tensors: the cache is part of this step's graph
        a = layer.self_attn
        a.k_cache = torch.zeros_like(a.k_cache)
        a.v_cache = torch.zeros_like(a.v_cache)
    pos = torch.arange(S).expand(B, S)
    mask = keys[:, None, None, :].expand(B, 1, S, S)
    if causal:
        mask = mask & torch.ones(S, S, dtype=torch.bool).tril()
    mask = mask | torch.eye(S, dtype=torch.bool)  # padding rows attend themselves (never all-masked)
    return model(ids, pos, mask)


def make_batch(tok: TinyTokenizer, problems: list[task.Problem], kind: str, gen: torch.Generator):
    """ids int64 [B, S] (right-padded with pad), keys bool [B, S], prompt_len [B], region_len [B].
    dLLM rows: prompt + solution + EOS up to a random region length in [len + 1, MAX_NEW_TOKENS];
    verifier rows: prompt + solution + one EOS."""
    prompts = tok.encode_batch([p.prompt for p in problems])
    sols = tok.encode_batch([p.solution for p in problems])
    rows, plen, rlen = [], [], []
    for p, s in zip(prompts, sols):
        n = len(s) + 1
        if n > MAX_NEW_TOKENS:
            raise ValueError("a solution exceeds MAX_NEW_TOKENS")
        r = n if kind == "verifier" else n + int(torch.randint(0, MAX_NEW_TOKENS - n + 1, (1,), generator=gen))
        rows.append(p + s + [tok.eos_id] * (r - len(s)))
        plen.append(len(p))
        rlen.append(r)
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), tok.pad_id, dtype=torch.int64)
    keys = torch.zeros(len(rows), S, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        keys[b, : len(r)] = True
    return ids, keys, torch.tensor(plen), torch.tensor(rlen)


def dllm_loss(model, ids, keys, plen, rlen, mask_id: int, suffix_prob: float, gen: torch.Generator):
    """Masked-diffusion loss (module docstring); returns (loss, next-token CE). The second is a
    diagnostic: the mean cross-entropy at the first masked position of the suffix-masked rows (what
    one-token-per-step left-to-right decoding asks of the model), nan if the batch has none."""
    B, S = ids.shape
    j = torch.arange(S).view(1, -1)
    region = (j >= plen.view(-1, 1)) & (j < (plen + rlen).view(-1, 1))
    t = 1.0 - torch.rand(B, generator=gen)  # (0, 1]
    suffix = torch.rand(B, generator=gen) < suffix_prob
    # independent masking with probability t
    masked_ind = (torch.rand(B, S, generator=gen) < t.view(-1, 1)) & region
    # suffix masking: the last ceil(t * region) positions
    count = torch.ceil(t * rlen).clamp(min=1).to(torch.int64)
    masked_suf = region & (j >= (plen + rlen - count).view(-1, 1))
    masked = torch.where(suffix.view(-1, 1), masked_suf, masked_ind)
    # at least one masked position per row (the region's last one if none was drawn)
    none = ~masked.any(1)
    masked[none, (plen + rlen - 1)[none]] = True
    frac = torch.where(suffix, count.float() / rlen, t)
    x = torch.where(masked, mask_id, ids)
    logits = _forward(model, x, keys, causal=False)  # Dream: logits at i predict token i + 1
    pred = logits[:, :-1]  # predicts positions 1..S-1
    tgt = ids[:, 1:]
    m = masked[:, 1:]
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1), reduction="none").view(B, S - 1)
    per_row = (ce * m).sum(1) / frac / rlen
    first = (plen + rlen - count - 1).clamp(min=0)  # logit index predicting the first masked position
    nxt = ce.detach().gather(1, first.view(-1, 1)).squeeze(1)[suffix]
    return per_row.mean(), float(nxt.mean()) if len(nxt) else float("nan")


def verifier_loss(model, ids, keys, plen, rlen):
    B, S = ids.shape
    logits = _forward(model, ids, keys, causal=True)
    j = torch.arange(1, S).view(1, -1)
    m = (j >= plen.view(-1, 1)) & (j < (plen + rlen).view(-1, 1))
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                         reduction="none").view(B, S - 1)
    return (ce * m).sum() / m.sum()


def _trim(ids, keys, plen, rlen, tok):
    """A dLLM batch (solution + EOS padding) as a causal batch: the region cut after the first EOS."""
    sol = (ids == tok.eos_id) & (torch.arange(ids.shape[1]).view(1, -1) >= plen.view(-1, 1))
    n = sol.to(torch.int64).argmax(1) - plen + 1  # solution + one EOS
    j = torch.arange(ids.shape[1]).view(1, -1)
    keep = j < (plen + n).view(-1, 1)
    return ids, keys & keep, plen, n


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _phase(model, cfg: TrainConfig, tok, objective: str, first_problem: int, gen, log, label: str,
           out=None, mc=None, time_budget_s=None):
    """cfg.steps AdamW steps of one objective ("diffusion" or "causal"); returns (curve, steps done)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    curve, acc, nxt, t0 = [], [], [], time.perf_counter()
    step = 0
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        problems = task.train_problems(first_problem + step * cfg.batch_size, cfg.batch_size)
        if objective == "diffusion":
            ids, keys, plen, rlen = make_batch(tok, problems, "dllm", gen)
            loss, next_ce = dllm_loss(model, ids, keys, plen, rlen, tok.mask_id, cfg.suffix_prob, gen)
            if not math.isnan(next_ce):
                nxt.append(next_ce)
            if cfg.causal_mix:
                loss = loss + cfg.causal_mix * verifier_loss(model, *_trim(ids, keys, plen, rlen, tok))
        else:
            ids, keys, plen, rlen = make_batch(tok, problems, "verifier", gen)
            loss = verifier_loss(model, ids, keys, plen, rlen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean = sum(acc) / len(acc)
            curve.append((step + 1, mean))
            el = time.perf_counter() - t0
            extra = f" next-token CE {sum(nxt) / len(nxt):.4f}" if nxt else ""
            log(f"[{label}] step {step + 1}/{cfg.steps} loss {mean:.4f}{extra} lr {lr_at(cfg, step):.2e} "
                f"{el:.0f}s ({el / (step + 1):.2f} s/step)")
            acc, nxt = [], []
        if out is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save(model, mc, tok, out, dict(phase=label, steps_done=step + 1, partial=True))
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            log(f"[{label}] time budget reached after {step + 1} steps")
            break
    return curve, step + 1


def train(cfg: TrainConfig, tok: TinyTokenizer, out: str | Path | None = None, log=print,
          time_budget_s: float | None = None) -> tuple[Transformer, ModelConfig, list[tuple[int, float]]]:
    """Train one model; returns (model, config, [(step, mean loss over the last log_every steps)]).
    dLLM with ar_init_steps > 0: first that many steps of the causal next-token objective on the same
    network (Dream's AR initialisation: with the shifted convention the logit at i predicts i + 1 in
    both), then cfg.steps of the masked-diffusion objective, bidirectional, with a fresh optimizer."""
    model, mc = new_model(cfg, tok)
    if cfg.init_from:  # continue from a checkpoint (no causal start)
        load_weights(model, cfg.init_from)
        cfg = TrainConfig(**{**cfg.__dict__, "ar_init_steps": 0})
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    t0 = time.perf_counter()
    log(f"[{cfg.kind}] {count_params(model):,} parameters, "
        f"{(str(cfg.ar_init_steps) + ' causal + ') if cfg.kind == 'dllm' and cfg.ar_init_steps else ''}"
        f"{cfg.steps} steps of {cfg.batch_size}")
    first = cfg.first_problem + TOKENIZER_PROBLEMS
    curves = {}
    if cfg.kind == "dllm" and cfg.ar_init_steps:
        ar = TrainConfig(**{**cfg.__dict__, "steps": cfg.ar_init_steps, "lr": cfg.ar_init_lr, "save_every": 0})
        curves["causal_init"], done = _phase(model, ar, tok, "causal", first, gen, log, "dllm causal init")
        first += done * cfg.batch_size
        if out is not None and cfg.save_every:
            save(model, mc, tok, Path(str(out) + "_causal_init"), dict(phase="causal init", steps_done=done))
    objective = "diffusion" if cfg.kind == "dllm" else "causal"
    curve, done = _phase(model, cfg, tok, objective, first, gen, log, cfg.kind, out, mc, time_budget_s)
    curves[objective] = curve
    model.eval()
    elapsed = time.perf_counter() - t0
    if out is not None:
        save(model, mc, tok, out, dict(recipe=cfg.__dict__, steps_done=done, train_seconds=round(elapsed, 1),
                                       parameters=count_params(model), loss_curves=curves,
                                       torch=torch.__version__, threads=torch.get_num_threads()))
    return model, mc, curve


def save(model: Transformer, mc: ModelConfig, tok: TinyTokenizer, out: str | Path, info: dict | None = None,
         dtype: torch.dtype = torch.float32) -> None:
    out = Path(out)
    model = model.to(dtype)
    mc.dtype = dtype
    save_checkpoint(model, mc, out)
    tok.save(out / "tokenizer.json")
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": mc.eos_token_id, "pad_token_id": mc.pad_token_id, "max_new_tokens": MAX_NEW_TOKENS}, indent=2) + "\n")
    if info is not None:
        (out / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


def train_stages(stages: list[TrainConfig], tok: TinyTokenizer, out: str | Path, log=print,
                 stage_dir: str | Path | None = None) -> None:
    """Run `stages` in order, each continuing from the previous one's checkpoint. The intermediate
    checkpoints go to stage_dir/stageN (default: a temporary directory, removed at the end); OUT
    gets the last, its training.json listing every stage's record."""
    import tempfile

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="apd_tiny_stages_") as tmp:
        where = Path(stage_dir) if stage_dir is not None else Path(tmp)
        records, prev = [], None
        for i, cfg in enumerate(stages, 1):
            cfg = TrainConfig(**{**cfg.__dict__, "init_from": prev})
            dest = out if i == len(stages) else where / f"stage{i}"
            log(f"[stage {i}/{len(stages)}] -> {dest}")
            train(cfg, tok, dest, log=log)
            records.append(json.loads((dest / "training.json").read_text()))
            prev = str(dest)
    (out / "training.json").write_text(json.dumps({"stages": records}, indent=2, default=str) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m apd_ext.tiny.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "assets"), help="writes OUT/dllm and OUT/verifier")
    p.add_argument("--models", default="verifier,dllm")
    p.add_argument("--dllm-steps", type=int, default=None,
                   help="dLLM: one run of this many diffusion steps instead of the staged recipe")
    p.add_argument("--verifier-steps", type=int, default=VERIFIER_RECIPE.steps)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--init-from", default=None, help="dLLM: continue from this checkpoint (skips the causal start)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--first-problem", type=int, default=None, help="index of the first training problem drawn")
    p.add_argument("--causal-mix", type=float, default=None,
                   help="dLLM: weight of a causal next-token loss added to each diffusion step")
    p.add_argument("--ar-init-steps", type=int, default=None, help="dLLM: causal steps before the diffusion phase")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per model (stops early; not deterministic)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer()
    single = any(v is not None for v in (args.dllm_steps, args.init_from, args.lr, args.first_problem,
                                          args.batch_size, args.causal_mix, args.ar_init_steps, args.time_budget))
    for kind in args.models.split(","):
        if kind == "dllm" and not single:  # the shipped dLLM
            train_stages(DLLM_STAGES, tok, Path(args.out) / kind, log=lambda s: print(s, flush=True))
            continue
        base = DLLM_RECIPE if kind == "dllm" else VERIFIER_RECIPE
        cfg = TrainConfig(**{**base.__dict__})
        cfg.steps = (args.dllm_steps or base.steps) if kind == "dllm" else args.verifier_steps
        cfg.save_every = args.save_every
        if kind == "dllm" and args.init_from:
            cfg.init_from = args.init_from
        if args.lr:
            cfg.lr = args.lr
        if args.first_problem is not None:
            cfg.first_problem = args.first_problem
        if args.batch_size:
            cfg.batch_size = args.batch_size
        if kind == "dllm" and args.causal_mix is not None:
            cfg.causal_mix = args.causal_mix
        if kind == "dllm" and args.ar_init_steps is not None:
            cfg.ar_init_steps = args.ar_init_steps
        train(cfg, tok, Path(args.out) / kind, log=lambda s: print(s, flush=True), time_budget_s=args.time_budget)


if __name__ == "__main__":
    main()
