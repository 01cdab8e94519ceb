"""Hugging Face checkpoint files: config.json plus model.safetensors, or shards listed in
model.safetensors.index.json. Loads tensors straight into a model's parameters (no extra copy of
the state dict), converting dtype on the way. A tensor-parallel rank's model lists the parameters
that hold a slice of the checkpoint's tensor (`model.slices`: name -> (dim, start, full size)); only
those rows or columns are read from the file (safetensors get_slice), never the whole tensor, and
shapes are checked against the full model's.

Tensor names: the files use their family's names, the model its own (Hugging Face Qwen2's,
"model.layers.N.self_attn.q_proj.weight"); `checkpoint_names` maps one to the other (LLaDA's
"model.transformer.blocks.N.q_proj.weight", ..., see LLADA_LAYER_NAMES; the identity for Dream,
Qwen2 and Llama), and loading, saving, slices and error messages all go through it, so every
message names the tensor as the file spells it.

Every file is checked before it is read: a missing file raises FileNotFoundError, an unusable one
(empty, truncated, a Git LFS pointer, not safetensors, an index without a weight_map, a tensor
absent or of the wrong shape, a tensor in two shard files) raises CheckpointError (a ValueError)
naming the file, the key or tensor, and what was expected; never a raw safetensors or json error."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from apd_ext.models.config import CheckpointError, ModelConfig, read_json_object

INDEX = "model.safetensors.index.json"
_LFS_POINTER = b"version https://git-lfs"
_FORMAT = "a safetensors file (8-byte little-endian header length, JSON header, tensor data)"

# LLaDA's tensor names (its LLaDAModelLM: model.transformer.{wte, blocks.N.*, ln_f, ff_out}) for
# the native ones: per layer, native suffix -> LLaDA's module (ff_proj is the gate of the SiLU MLP)
LLADA_LAYER_NAMES = {
    "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
    "mlp.down_proj": "ff_out", "input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm",
}
LLADA_TOP_NAMES = {"model.embed_tokens.weight": "model.transformer.wte.weight",
                   "model.norm.weight": "model.transformer.ln_f.weight",
                   "lm_head.weight": "model.transformer.ff_out.weight"}


def _llada_name(name: str) -> str:
    """LLaDA's name for the native parameter `name`."""
    if name in LLADA_TOP_NAMES:
        return LLADA_TOP_NAMES[name]
    parts = name.split(".")  # model.layers.N.<module...>.(weight|bias)
    module = ".".join(parts[3:-1])
    if parts[:2] != ["model", "layers"] or module not in LLADA_LAYER_NAMES:
        raise KeyError(f"no LLaDA tensor name for parameter {name!r}")
    return f"model.transformer.blocks.{parts[2]}.{LLADA_LAYER_NAMES[module]}.{parts[-1]}"


def checkpoint_names(model: torch.nn.Module) -> dict[str, str]:
    """native parameter name -> the tensor's name in the model family's files, for every
    parameter of `model` (a Transformer; its config.model_type picks the names: LLaDA's for
    "llada", the native ones otherwise)."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    family = getattr(getattr(model, "config", None), "model_type", None)
    if isinstance(family, str) and family.lower() == "llada":
        return {n: _llada_name(n) for n in names}
    return {n: n for n in names}


def shard_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, sharded (listed by INDEX) or not."""
    path = Path(path)
    if (path / INDEX).exists():
        files = sorted(set(index_weight_map(path).values()))
    elif (path / "model.safetensors").exists():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path} (expected model.safetensors or {INDEX})")
    return files


def index_weight_map(path: Path) -> dict[str, Path]:
    """tensor name -> shard file, from path/INDEX; its shards must exist."""
    index = path / INDEX
    doc = read_json_object(index)
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: key 'weight_map' must be a non-empty object mapping tensor names to shard "
                              f"files, got {'nothing' if weight_map is None else repr(weight_map)[:80]}")
    bad = [(k, v) for k, v in weight_map.items() if not isinstance(v, str) or not v or Path(v).name != v]
    if bad:
        raise CheckpointError(f"{index}: weight_map[{bad[0][0]!r}] must be a shard file name in the same directory, "
                              f"got {bad[0][1]!r}")
    shards = {name: path / f for name, f in weight_map.items()}
    missing = sorted({f.name for f in shards.values() if not f.is_file()})
    if missing:
        raise FileNotFoundError(f"{index}: its weight_map lists shards that are not in {path}: {missing}")
    return shards


def tensor_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in the safetensors file f, read from its header after checking
    the header and the tensor data against the file's size (catches empty, truncated, garbage and
    Git LFS pointer files before safetensors sees them)."""
    if not f.is_file():
        raise CheckpointError(f"{f}: not a regular file; expected {_FORMAT}")
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(min(size, 64))
        if head.startswith(_LFS_POINTER):
            raise CheckpointError(f"{f}: a Git LFS pointer, not the weights; fetch the file itself "
                                  f"(`git lfs pull` in the checkpoint's repository)")
        if size < 8:
            raise CheckpointError(f"{f}: {size} bytes, too short; expected {_FORMAT}")
        n = int.from_bytes(head[:8], "little")
        if n > size - 8:
            raise CheckpointError(f"{f}: truncated or not safetensors: its header length field says {n} bytes, the "
                                  f"file has {size - 8} after it; expected {_FORMAT}")
        fh.seek(8)
        header = _parse_header(f, fh.read(n))
    shapes, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            offsets, shape = entry["data_offsets"], entry["shape"]
            end = max(end, *(int(o) for o in offsets)) if len(offsets) == 2 else -1
            shapes[name] = tuple(int(s) for s in shape)
        except (TypeError, KeyError, ValueError):
            end = -1
        if end < 0:
            raise CheckpointError(f"{f}: header entry {name!r} lacks valid data_offsets/shape; expected {_FORMAT}")
    if 8 + n + end > size:
        raise CheckpointError(f"{f}: truncated: its tensors need {8 + n + end} bytes, the file has {size} "
                              f"(an interrupted download or copy?)")
    return shapes


def _parse_header(f: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{f}: not safetensors (its header is not a JSON object); expected {_FORMAT}")
    return header


def load_weights(model: torch.nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Copy every tensor of the checkpoint at `path` into its parameter (the one of the same
    name, through checkpoint_names for a family with its own names).

    strict: a tensor with no parameter (rotary inv_freq buffers aside) and a parameter with no
    tensor (tied ones aside) are errors. Raises CheckpointError naming the file and the tensor."""
    path = Path(path)
    names = checkpoint_names(model)
    tied = {names[n] for n in getattr(model, "tied_parameter_names", set())}
    params = {names[n]: p for n, p in model.named_parameters() if names[n] not in tied}  # by the files' names
    slices = {names[n]: spec for n, spec in getattr(model, "slices", {}).items()}
    listed = index_weight_map(path) if (path / INDEX).exists() else None
    headers = {f: tensor_shapes(f) for f in shard_files(path)}
    _check_unique(path, headers, indexed=listed is not None)
    seen: set[str] = set()
    for f, shapes in headers.items():
        if listed is not None:
            absent = sorted(n for n, s in listed.items() if s == f and n not in shapes)
            if absent:
                raise CheckpointError(f"{path / INDEX}: lists tensor {absent[0]!r} in {f.name}, which does not "
                                      f"contain it ({len(absent)} such tensors)")
        seen |= _load_file(f, shapes, params, strict, type(model).__name__, slices)
    missing = [n for n in params if n not in seen and n not in tied]
    if strict and missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: tensors missing from {', '.join(f.name for f in shard_files(path))}: "
                              f"{missing[:5]}{more}")


def _check_unique(path: Path, headers: dict[Path, dict], indexed: bool) -> None:
    """Every tensor name in one file of `headers` (file -> its tensor shapes): two shards holding
    the same tensor leave it undecided which copy is the weight (the file read last would win), so
    that is a CheckpointError naming both files and the tensor."""
    owner: dict[str, Path] = {}
    for f, shapes in headers.items():
        for name in shapes:
            if name in owner:
                how = "" if indexed else f" (no {INDEX} says which one to read)"
                raise CheckpointError(f"{path}: tensor {name!r} is in two files, {owner[name].name} and {f.name}"
                                      f"{how}; a checkpoint holds each tensor once")
            owner[name] = f


def full_shape(param: torch.Tensor, spec: tuple[int, int, int] | None) -> tuple[int, ...]:
    """The checkpoint shape of a parameter that holds the slice `spec` = (dim, start, full size)
    of its tensor (its own shape when spec is None)."""
    shape = tuple(param.shape)
    return shape if spec is None else shape[: spec[0]] + (spec[2],) + shape[spec[0] + 1 :]


def _read(st, name: str, param: torch.Tensor, spec: tuple[int, int, int] | None) -> torch.Tensor:
    """The tensor `name` of the open file st, or only its slice [start, start + local) along dim."""
    if spec is None:
        return st.get_tensor(name)
    dim, start, _ = spec
    index = (slice(None),) * dim + (slice(start, start + param.shape[dim]),)
    return st.get_slice(name)[index]


def _load_file(f: Path, shapes: dict, params: dict, strict: bool, model_name: str,
               slices: dict | None = None) -> set[str]:
    """Copy the tensors of one safetensors file (shapes: its header, from tensor_shapes) into
    `params` (the slice slices[name] of a split parameter's tensor); returns the names copied.
    safetensors' own errors become CheckpointError."""
    slices = slices or {}
    for name, shape in shapes.items():
        if name in params and shape != full_shape(params[name], slices.get(name)):
            raise CheckpointError(f"{f}: tensor {name!r} has shape {shape}; the model built from config.json "
                                  f"expects {full_shape(params[name], slices.get(name))}")
        if name not in params and strict and not name.endswith("rotary_emb.inv_freq"):
            raise CheckpointError(f"{f}: tensor {name!r} has no parameter in {model_name} (a different "
                                  f"architecture than config.json says?)")
    done = set()
    try:
        with safe_open(str(f), framework="pt") as st:
            for name in shapes:
                if name not in params:
                    continue
                t = _read(st, name, params[name], slices.get(name))
                if not t.is_floating_point() and params[name].is_floating_point():
                    raise CheckpointError(f"{f}: tensor {name!r} has dtype {t.dtype}; expected floating-point "
                                          f"weights")
                with torch.no_grad():
                    params[name].copy_(t)
                done.add(name)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{f}: cannot be read as safetensors ({e})") from None
    return done


def save_checkpoint(model: torch.nn.Module, config: ModelConfig, path: str | Path) -> None:
    """Write config.json and model.safetensors (the layout load_weights reads) in the family's own
    format: config.to_dict() and the checkpoint_names of the tensors (a LLaDA model is written
    as LLaDA's files, which LLaDA's own code loads too). `model` is whole (not tensor-parallel)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if getattr(model, "slices", None):
        raise ValueError("save_checkpoint needs the whole model; this one holds a tensor-parallel rank's slices")
    names = checkpoint_names(model)
    tied = getattr(model, "tied_parameter_names", set())
    state = {names[n]: p.detach().contiguous().cpu() for n, p in model.named_parameters() if n not in tied}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")
