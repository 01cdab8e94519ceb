"""What scripts/make_{fastdllm_v2,sdar,qwen3}_golden.py share: importing released modelling files
from a directory as a package at run time, the shims that let that code (written for transformers
4.5x with flash-attn and einops installed) run under the transformers 5 of .venv on CPU, the seeded
redraw of a model's parameters (`randomise`), the writing of config.json in the released layout
(`released_config`), the reload check's `copy_rope_buffers`, and `Margins`, the closeness of a
recorded decoding's decisions.

Every shim is installed only in this process and never edits a released file:
- `stub_einops()`: einops is not installed; the released files call only `rearrange` with the two
  patterns 'b h l d -> b l (h d)' and 'b l h d -> b l (h d)', which the stub implements (any other
  pattern raises; `repeat`, imported by Fast-dLLM's file but not called, raises too);
- `stub_flash_attn()`: flash-attn is not installed (no CUDA here). SDAR imports
  `flash_attn.ops.triton.layer_norm.rms_norm_fn` for every RMSNorm and calls `flash_attn_func`
  when a block's attention mask is all True. The stubs compute what those kernels compute, in
  float32: rms_norm_fn(x, w, None, eps) = (x * rsqrt(mean(x^2) + eps) * w) cast to x's dtype (the
  float32 formula SDAR's own file keeps commented out under it), flash_attn_func(q, k, v,
  causal=False, softmax_scale) = softmax(q k^T * scale) v over [B, L, H, D] tensors with grouped
  K/V heads (torch's scaled_dot_product_attention, enable_gqa). The stub modules carry a ModuleSpec
  without a file, so transformers' availability checks still report flash-attn absent;
- `transformers5()`: transformers 5 dropped RoPE type "default" from ROPE_INIT_FUNCTIONS (the
  released rotary classes look it up): registered again as the plain RoPE inverse frequencies
  1 / theta^(2i / head_dim) with attention scaling 1.0, as transformers 4.5x's
  `_compute_default_rope_parameters`; and `transformers.utils.LossKwargs` (a TypedDict SDAR's file
  imports) as 4.5x defined it;
- `tied_keys(cls)`: transformers 5 wants `_tied_weights_keys` as a {target: source} dict; the
  released classes give 4.x's list ["lm_head.weight"], set on the class to
  {"lm_head.weight": "model.embed_tokens.weight"} (the same tying);
- `LegacyCache`: transformers 5's DynamicCache is no longer indexable; the released attention
  reads `past_key_value[layer_idx]` -> (keys, values) as 4.x's DynamicCache allowed, so this
  subclass adds that `__getitem__` (nothing else differs). It is put in the released module's
  namespace in place of DynamicCache where the released code makes its own cache.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import math
import sys
import types
import typing
from pathlib import Path

import torch
import torch.nn.functional as F


def _module(name: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)  # no origin: find_spec finds it, no version
    sys.modules[name] = m
    return m


def import_package(directory: Path, package: str, modules: typing.Sequence[str]) -> list[types.ModuleType]:
    """The modules `modules` (file stems) of `directory`, imported as submodules of a package named
    `package` registered in sys.modules (their relative imports need one)."""
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [str(directory)]
        sys.modules[package] = pkg
    return [importlib.import_module(f"{package}.{m}") for m in modules]


def stub_einops() -> None:
    def rearrange(t: torch.Tensor, pattern: str) -> torch.Tensor:
        if pattern == "b h l d -> b l (h d)":
            t = t.transpose(1, 2)
        elif pattern != "b l h d -> b l (h d)":
            raise NotImplementedError(f"einops stub: pattern {pattern!r}")
        return t.reshape(*t.shape[:2], -1)

    def repeat(*unused, **kw):
        raise NotImplementedError("einops stub: repeat")

    e = _module("einops")
    e.rearrange, e.repeat = rearrange, repeat


def stub_flash_attn() -> None:
    import transformers.modeling_utils  # noqa: F401  (its flash-attn probes run before the stub exists)

    def rms_norm_fn(x, weight, bias=None, eps=1e-6, **unused):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **unused):
        if dropout_p or unused.get("window_size", (-1, -1)) != (-1, -1):
            raise NotImplementedError("flash_attn stub: dropout / window")
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=causal, scale=softmax_scale, enable_gqa=True)
        return o.transpose(1, 2)

    fa = _module("flash_attn")
    fa.flash_attn_func = flash_attn_func
    fa.ops = _module("flash_attn.ops")
    fa.ops.triton = _module("flash_attn.ops.triton")
    fa.ops.triton.layer_norm = _module("flash_attn.ops.triton.layer_norm")
    fa.ops.triton.layer_norm.rms_norm_fn = rms_norm_fn


def transformers5() -> None:
    import transformers.modeling_rope_utils as rope
    import transformers.utils as tu

    def default_rope(config, device=None, seq_len=None, **unused):
        base = config.rope_theta
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
                                   / dim))
        return inv_freq, 1.0

    rope.ROPE_INIT_FUNCTIONS.setdefault("default", default_rope)
    if not hasattr(tu, "LossKwargs"):
        class LossKwargs(typing.TypedDict, total=False):
            num_items_in_batch: typing.Optional[torch.Tensor]

        tu.LossKwargs = LossKwargs


def tied_keys(cls) -> None:
    cls._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}


def legacy_cache_class():
    from transformers.cache_utils import DynamicCache

    class LegacyCache(DynamicCache):
        """DynamicCache indexable by layer as in transformers 4.x: cache[i] -> (keys, values)."""

        def __getitem__(self, layer_idx: int):
            layer = self.layers[layer_idx]
            return layer.keys, layer.values

    return LegacyCache


def randomise(model: torch.nn.Module, seed: int, head_std: float, mask_token_id: int | None,
              resid: float = 1.0) -> None:
    """Redraw every parameter (sorted by name) from one generator: matrices N(0, 1/fan_in), except
    o_proj and down_proj N(0, resid^2/fan_in) (the layers' share of the residual stream: with a
    tied head, the input embedding's share of the last hidden state makes the model repeat its
    input token); norm weights (RMSNorm, q/k norms) 1 + N(0, 0.2^2), biases N(0, 0.1^2); the
    embedding N(0, 1), or, tied, N(0, head_std^2 / hidden) like a head; the output head ("peaky")
    N(0, head_std^2 / hidden), so that logits spread with a standard deviation of about head_std
    and softmax confidences cover (0, 1). The head row of the mask token (the embedding row when
    tied) is then scaled by 0.02: the model never predicts the mask token (a released decoder that
    commits its argmax would commit a mask and loop); RMSNorm makes the scale of an input
    embedding row irrelevant."""
    g = torch.Generator().manual_seed(seed)
    tied = getattr(model.config, "tie_word_embeddings", False)
    hidden = model.config.hidden_size
    with torch.no_grad():
        params = dict(model.named_parameters())  # a tied head is the embedding (one entry)
        for name in sorted(params):
            p = params[name]
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight" or (name == "model.embed_tokens.weight" and tied):
                p.copy_(torch.randn(p.shape, generator=g) * head_std / math.sqrt(hidden))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * resid / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        if mask_token_id is not None:
            model.get_output_embeddings().weight[mask_token_id] *= 0.02


def copy_rope_buffers(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """transformers 5's from_pretrained builds the model on the meta device and leaves the
    non-persistent buffers of a class it does not know (the rotary inv_freq of remote code)
    uninitialised: the reload check copies them from the model that was saved."""
    for (name, b), (_, b2) in zip(src.named_buffers(), dst.named_buffers()):
        if name.endswith("inv_freq"):
            b2.copy_(b)


class Margins:
    """The smallest margins of a decoding's decisions (to judge how safely a float32 replay can
    reproduce it): "argmax", the top-1 minus top-2 logit of every row whose argmax is taken;
    "threshold", |confidence - threshold| of every masked position compared with a threshold;
    "order", where a step ranks the masked positions by confidence to take its k most confident
    (when fewer than k are above the threshold, or always without one), the gap between the k-th
    and the (k+1)-th confidence."""

    def __init__(self):
        self.m = {"argmax": math.inf, "threshold": math.inf, "order": math.inf}

    def _min(self, key: str, value) -> None:
        value = torch.as_tensor(value)
        if value.numel():
            self.m[key] = min(self.m[key], float(value.min()))

    def argmax(self, logits: torch.Tensor) -> None:
        top = logits.float().topk(2, dim=-1).values
        self._min("argmax", top[..., 0] - top[..., 1])

    def step(self, logits: torch.Tensor, masked: torch.Tensor, threshold: float | None, k: int) -> None:
        """logits [L, V] of one step's candidate positions, masked [L] the masked ones; the step
        takes the masked positions above `threshold` when there are at least k of them (never
        without a threshold), else its k most confident."""
        lg = logits[masked].float()
        self.argmax(lg)
        conf = torch.softmax(lg, -1).amax(-1)
        if threshold is not None:
            self._min("threshold", (conf - threshold).abs())
            if int((conf > threshold).sum()) >= k:
                return
        c = conf.sort(descending=True).values
        if c.numel() > k:
            self._min("order", c[k - 1] - c[k])

    def result(self) -> dict:
        return {k: (round(v, 6) if v != math.inf else None) for k, v in self.m.items()}


def sha256(directory: Path, files: typing.Iterable[str]) -> dict[str, str]:
    return {f"sha256:{f}": hashlib.sha256((Path(directory) / f).read_bytes()).hexdigest() for f in files}


def released_config(saved: Path, keys: typing.Iterable[str], fixed: dict) -> None:
    """Rewrite saved/config.json (as transformers 5's save_pretrained wrote it) with the keys of the
    released config.json files: `keys` in that order taken from the saved file (missing ones from
    `fixed`), then `fixed` overriding. transformers 5 writes "dtype" (4.x: "torch_dtype"),
    "rope_parameters" (4.x: "rope_theta" and "rope_scaling") and generic keys; and a
    generation_config.json, which is removed (the eos id is in config.json)."""
    path = saved / "config.json"
    d = json.loads(path.read_text())
    out = {k: d[k] for k in keys if k in d}
    out.update(fixed)
    path.write_text(json.dumps(dict(sorted(out.items())), indent=2) + "\n")
    gen = saved / "generation_config.json"
    if gen.exists():
        gen.unlink()


def base_metadata(names: typing.Iterable[str], **extra: str) -> dict[str, str]:
    """The metadata every reference.safetensors starts with: versions, dtype, device, threads, the
    checkpoint names, and `extra`."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "dtype": "float32",
            "device": "cpu", "threads": "1", **extra, "names": json.dumps(list(names))}


def write_reference(out: Path, meta: dict, parts: typing.Iterable[tuple[dict, dict]]) -> None:
    """out/reference.safetensors from each checkpoint's (tensors, metadata), after `meta`."""
    from safetensors.torch import save_file

    tensors = {}
    for t, m in parts:
        tensors.update(t)
        meta.update(m)
    save_file(tensors, str(Path(out) / "reference.safetensors"), metadata=meta)
    print(f"wrote {out} (torch {meta['torch']}, transformers {meta['transformers']})")


def record_case(tensors: dict, meta: dict, name: str, i: int, prompt: torch.Tensor, output: torch.Tensor,
                args: dict, **lists) -> None:
    """Generate case i of checkpoint `name`: its prompt and output tensors, its arguments and the
    JSON lists `lists` (commits, margins, ...) in the metadata."""
    tensors[f"{name}.gen.{i}.prompt"] = prompt.clone()
    tensors[f"{name}.gen.{i}.output"] = output.clone()
    meta[f"{name}.gen.{i}.args"] = json.dumps(args, sort_keys=True)
    for key, value in lists.items():
        meta[f"{name}.gen.{i}.{key}"] = json.dumps(value)


def check_cases(tensors: dict, meta: dict, name: str, count: int, eos: int) -> None:
    """Case 0 ends on eos; some step commits several tokens and some exactly one."""
    assert eos in tensors[f"{name}.gen.0.output"].tolist(), "case 0 must end on eos"
    steps = [n for i in range(count) for block in json.loads(meta[f"{name}.gen.{i}.commits"]) for n in block]
    assert max(steps) > 1 and min(steps) == 1, "no step committing several tokens, or none just one"
