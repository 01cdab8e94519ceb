"""Speed/quality study of the bundled tiny pair: accuracy against tokens per model forward, one row
per policy (python -m apd_ext sweep; bench/results/sweep_tiny.{csv,png}).

The default grid (greedy, every held-out problem decoded alone, the task's 64 new tokens):
  apd          mixture_weight in {0, 0.1, ..., 1}, no dLLM cache, whole answer region visible
  apd grid     kv_window in {none, 4, 16} x max_lookahead in {4, 8, 16, 64} at mixture_weight 0.7
  dllm_fixed   k in {1, 2, 4, 8} (no cache)
  diffusion    diffusion_steps in {8, 16, 32, 64} (confidence order)
  ar           the verifier alone
  apd_sampled  mixture_weight in {0.3, 0.5, 0.7, 0.9} at `temperature` (0.5), the paper's semantics
  apd_compat   the same with authors_compat (drafts at T^2 with top_k 50, the target is the mixture's
               mode); greedy decoding cannot tell the two apart, so they are compared sampled
and, outside the recorded grid (bench/results/sweep_tiny.csv; `configurations(families=...)` or
`sweep --policies ...` selects it), the dLLM-only baseline of Fast-dLLM (decode/steps/threshold.py):
  threshold         threshold in {0.5, 0.7, 0.8, 0.9, 0.95}, no cache, whole answer region visible
  threshold_cached  the same thresholds with the library's cache defaults (kv_window 16, max_lookahead 100)
  threshold_block   thresholds 0.5, 0.7 and 0.9 in blocks of block_length 4, 8 and 32 (Fast-dLLM's
                    semi-autoregressive variant), no cache; one family per block_length ("B=8")
Knobs that differ from DecodeConfig's defaults are spelled out in each spec, so that a spec means
the same under `eval-tiny`. Tokens count each answer up to its first EOS.

The block-diffusion dLLM (`sweep --block`, bench/results/sweep_tiny_block.csv; no cache knobs: its
cache is exact and its window ends at the block's end) has its own grid, BLOCK_FAMILIES:
  block_apd       mixture_weight in {0, 0.1, ..., 1}
  block_fixed     dllm_fixed k in {1, 2, 4}
  block_ar        the verifier alone
  fast_dllm_v2    its own decoding, threshold in {0.5, 0.7, 0.8, 0.9, 0.95} x small_block_size {4, 8, 16}
  block_threshold confidence-threshold decoding over the window, thresholds as above
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from apd_ext.decode.config import DecodeConfig
from apd_ext.tiny import evaluate as ev

NO_CACHE = ev.NO_CACHE
FIELDS = ["family", "policy", "accuracy", "correct", "num_problems", "tokens_per_dllm_forward",
          "tokens_per_model_forward", "tokens_per_step", "tokens_per_s", "wall_s", "dllm_forwards",
          "verifier_forwards", "generated_tokens", "emitted_tokens"]


# The families of the default grid (the recorded CSV's, in its order) and every family there is.
RECORDED_FAMILIES = ("apd", "apd_grid", "dllm_fixed", "diffusion", "ar", "apd_sampled", "apd_compat")
FAMILIES = RECORDED_FAMILIES + ("threshold",)  # "threshold": threshold, threshold_cached, threshold_block
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
BLOCK_FAMILIES = ("block_apd", "block_fixed", "block_ar", "fast_dllm_v2", "block_threshold")


def block_configurations(quick: bool = False, families: tuple[str, ...] = BLOCK_FAMILIES) -> list[str]:
    """The block-diffusion dLLM's grid (module docstring) for `families` (names of BLOCK_FAMILIES)."""
    unknown = sorted(set(families) - set(BLOCK_FAMILIES))
    if unknown:
        raise ValueError(f"unknown block sweep families {', '.join(unknown)}; families: {', '.join(BLOCK_FAMILIES)}")
    ws = [0.0, 0.5, 0.7, 0.9, 1.0] if quick else [round(0.1 * i, 1) for i in range(11)]
    thresholds = (0.7, 0.9) if quick else THRESHOLDS
    grid = {"block_apd": [f"apd:mixture_weight={w}" for w in ws],
            "block_fixed": [f"dllm_fixed:k={k}" for k in ((1, 4) if quick else (1, 2, 4))],
            "block_ar": ["ar"],
            "fast_dllm_v2": [f"fast_dllm_v2:threshold={t},small_block_size={b}"
                             for b in ((8,) if quick else (4, 8, 16)) for t in thresholds],
            "block_threshold": [f"threshold:threshold={t}" for t in thresholds]}
    return [spec for fam in BLOCK_FAMILIES if fam in families for spec in grid[fam]]


def configurations(quick: bool = False, temperature: float = 0.5,
                   families: tuple[str, ...] = RECORDED_FAMILIES) -> list[str]:
    """The grid's policy specs (quick: a smaller one) for `families` (names of FAMILIES; default:
    the recorded grid's), in FAMILIES order."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown sweep families {', '.join(unknown)}; families: {', '.join(FAMILIES)}")
    grid: dict[str, list[str]] = {}
    ws = [0.0, 0.5, 0.7, 0.9, 1.0] if quick else [round(0.1 * i, 1) for i in range(11)]
    grid["apd"] = [f"apd:mixture_weight={w},{NO_CACHE}" for w in ws]
    kvs = ["none", "16"] if quick else ["none", "4", "16"]
    las = [8, 64] if quick else [4, 8, 16, 64]
    grid["apd_grid"] = [f"apd:mixture_weight=0.7,kv_window={kv},max_lookahead={la}" for kv in kvs for la in las
                        if not (kv == "none" and la == 64)]  # with 64 new tokens that is the w = 0.7 row above
    grid["dllm_fixed"] = [f"dllm_fixed:k={k},{NO_CACHE}" for k in (1, 2, 4, 8)]
    grid["diffusion"] = [f"diffusion:diffusion_steps={s}" for s in ((16, 64) if quick else (8, 16, 32, 64))]
    grid["ar"] = ["ar"]
    sampled = (0.5, 0.9) if quick else (0.3, 0.5, 0.7, 0.9)
    grid["apd_sampled"] = [f"apd:mixture_weight={w},{NO_CACHE},temperature={temperature}" for w in sampled]
    grid["apd_compat"] = [f"apd:mixture_weight={w},{NO_CACHE},temperature={temperature},authors_compat=1"
                          for w in sampled]
    thresholds = (0.7, 0.9) if quick else THRESHOLDS
    grid["threshold"] = ([f"threshold:threshold={t},{NO_CACHE}" for t in thresholds]
                         + [f"threshold:threshold={t}" for t in thresholds]  # the library's cache defaults
                         + [f"threshold:threshold={t},block_length={b},{NO_CACHE}"
                            for b in ((8,) if quick else (4, 8, 32)) for t in ((0.9,) if quick else (0.5, 0.7, 0.9))])
    return [spec for fam in FAMILIES if fam in families for spec in grid[fam]]


def family_of(policy: str | DecodeConfig, block: bool = False) -> str:
    """The plot family: apd (greedy, no cache, whole region), apd_grid (greedy, kv_window or
    max_lookahead set), "apd_sampled T=..." (paper semantics), "apd_compat T=..." (authors_compat);
    threshold (no cache, whole region), threshold_cached (kv_window or max_lookahead set),
    "threshold_block B=..." (block_length set), with " T=..." when sampled; or the policy's name.
    block (a block-diffusion dLLM, whose cache knobs are unused): the policy's name, Fast-dLLM v2's
    with its sub-block size."""
    cfg = ev.policy_config(policy)
    if cfg.policy == "fast_dllm_v2":
        return f"fast_dllm_v2 sub={cfg.small_block_size}"
    if block:
        return cfg.policy + (f" T={cfg.temperature}" if cfg.temperature else "")
    if cfg.policy == "threshold":
        fam = (f"threshold_block B={cfg.block_length}" if cfg.block_length is not None else
               "threshold_cached" if cfg.kv_window is not None or cfg.max_lookahead is not None else "threshold")
        return f"{fam} T={cfg.temperature}" if cfg.temperature else fam
    if cfg.policy != "apd":
        return cfg.policy
    if cfg.authors_compat:
        return f"apd_compat T={cfg.temperature}"
    if cfg.temperature:
        return f"apd_sampled T={cfg.temperature}"
    return "apd_grid" if cfg.kv_window is not None or cfg.max_lookahead is not None else "apd"


DEFAULT_NAME = "sweep_tiny"  # the file name of OUT when --out names a directory


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """(OUT.csv, OUT.png) for the output name `out`: the suffixes are appended to its name as it
    is (a dot in it stays: run_T0.5 -> run_T0.5.csv), a .csv or .png suffix given with it dropped
    first (runs.csv -> runs.csv, runs.png); a directory (an existing one, or a path ending in "/")
    holds DEFAULT_NAME.csv and DEFAULT_NAME.png. ValueError for an empty `out`."""
    text = str(out)
    if not text.strip():
        raise ValueError(f"{text!r}: an empty output name (a file path without its suffix, e.g. "
                         f"bench/results/{DEFAULT_NAME}, or a directory)")
    base = Path(text)
    if text.endswith(("/", os.sep)) or base.is_dir():
        base = base / DEFAULT_NAME
    elif base.suffix.lower() in (".csv", ".png"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".csv"), base.with_name(base.name + ".png")


def partial_path(csv_path: Path) -> Path:
    """Where rows go while the sweep runs: OUT.partial.csv, renamed to OUT.csv when it completes."""
    return csv_path.with_name(csv_path.stem + ".partial.csv")


def run(pair, problems, policies, csv_path: Path, seed: int = 0, on_row=None) -> list[dict]:
    """Evaluate each policy, appending its row to partial_path(csv_path) as measured; the file is
    renamed to `csv_path` once every policy is done, so an interrupted sweep never leaves a CSV
    that looks complete. on_row(row) is called after each policy."""
    csv_path = Path(csv_path)
    tmp = partial_path(csv_path)
    rows = []
    block = getattr(getattr(pair, "dllm", None), "block_size", None) is not None
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for spec in policies:
            r = ev.evaluate(pair, problems, spec, seed=seed)
            r["family"] = family_of(spec, block=block)
            r["tokens_per_model_forward"] = r["tokens_per_dllm_forward"] or (
                r["generated_tokens"] / max(1, r["verifier_forwards"]))
            rows.append(r)
            writer.writerow(r)
            f.flush()
            if on_row:
                on_row(r)
    os.replace(tmp, csv_path)
    return rows


def read_rows(csv_path: Path) -> list[dict]:
    """A sweep CSV's rows, numbers parsed, for plot(); the recorded family column is kept (older
    CSVs spell their specs in the former syntax, w=, T=, compat=)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"policy", "accuracy", "num_problems", "tokens_per_model_forward", "tokens_per_s"} - set(
        rows[0] if rows else FIELDS)
    if not rows or missing:
        why = "no rows" if not rows else "no column " + ", ".join(sorted(missing))
        raise ValueError(f"{csv_path}: not a sweep CSV ({why})")
    return [{**r, "family": r.get("family") or family_of(r["policy"]), "num_problems": int(r["num_problems"]),
             **{k: float(r[k]) for k in ("accuracy", "tokens_per_model_forward", "tokens_per_s")}} for r in rows]


def short_label(policy: str) -> str:
    """A point's label on the plot: the knobs, shortened ("mixture_weight=0.7,kv_window=16,
    max_lookahead=8" -> "w=0.7,kv16,M8"); the no-cache knobs, temperature and authors_compat,
    which the family names, are left out. Reads the former syntax too."""
    text = policy.split(":", 1)[-1]
    text = re.sub(r",?(temperature|T)=[^,]*|,?(authors_compat|compat)=[^,]*", "", text)
    if "kv_window=none,max_lookahead=none" in text:
        text = text.replace(",kv_window=none,max_lookahead=none", "").replace("kv_window=none,max_lookahead=none", "")
    for long, short in (("mixture_weight=", "w="), ("kv_window=", "kv"), ("max_lookahead=", "M"),
                        ("diffusion_steps=", "steps="), ("threshold=", "thr="), ("block_length=", "B")):
        text = text.replace(long, short)
    return text.strip(",")


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against tokens per model forward (dLLM; verifier for ar) and against tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for ax, key, xlabel in ((axes[0], "tokens_per_model_forward", "generated tokens per model forward "
                             "(dLLM; verifier for ar)"), (axes[1], "tokens_per_s", "tokens/s (CPU, batch 1)")):
        _plot_axis(ax, rows, key)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("accuracy (final answer)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"tiny dLLM + verifier, {rows[0]['num_problems']} held-out problems "
                 f"(greedy unless the family is sampled)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_MARKERS = {"apd": "o", "apd_grid": "s", "dllm_fixed": "^", "diffusion": "v", "ar": "*", "apd_sampled": "P",
            "apd_compat": "X", "threshold": "D"}
_LINES = ("apd", "dllm_fixed", "diffusion", "apd_sampled", "apd_compat", "threshold")


def _plot_axis(ax, rows: list[dict], key: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    xs = [r[key] for r in rows if r[key] > 0]
    narrow = max(xs) < 4 * min(xs)  # under two octaves: label the minor ticks too
    for fam in dict.fromkeys(r["family"] for r in rows):  # in order of appearance
        base = max((k for k in _MARKERS if fam.startswith(k)), key=len, default="ar")
        pts = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["tokens_per_model_forward"])
        ax.plot([r[key] for r in pts], [r["accuracy"] for r in pts], _MARKERS[base] + ("-" if base in _LINES else ""),
                label=fam, markersize=9 if fam == "ar" else 6, alpha=0.85)
        for r in pts:
            ax.annotate(short_label(r["policy"]), (r[key], r["accuracy"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(LogLocator(base=2, subs=(1.25, 1.5, 1.75)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _, narrow=narrow: f"{x:.3g}" if narrow else ""))
    ax.grid(alpha=0.3)
