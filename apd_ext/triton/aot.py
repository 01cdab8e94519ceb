"""Ahead-of-time compile check of the Triton kernels, for CUDA GPUs, without a GPU.

    python -m apd_ext.triton.aot                       # sm_80 and sm_90: compile everything, print resources
    python -m apd_ext.triton.aot --device              # on a GPU machine: for its GPU's architecture
    python -m apd_ext.triton.aot --arch 90 --list      # only the specialisations (JSON lines)

The Triton interpreter (TRITON_INTERPRET=1, the tests on machines without a GPU) accepts code that
the compiler rejects, so this check compiles, for each target architecture, every kernel
specialisation the ops can launch:

1. Enumerate. The real host functions (sample_draft, mixture_accept, their vocabulary-parallel
   partial forms, compute_tau) run on a grid of options with tensors on the "meta" device, which
   the launchers plan as on a GPU (common.META_GPU: 132 SMs, 50 MB of L2). Per-row knobs ([B]
   temperature / top_k / top_p / mixture_weight tensors, issue 19) are meta tensors too: their ROWS
   kernels are enumerated, and a launcher that read a knob's value on the host would fail here. A stand-in Triton driver reports a CUDA target of the
   requested architecture, and Triton's jit_cache_hook receives what Triton itself derived from
   the actual arguments (signature, constexprs, pointer/int alignment attributes, options) and
   skips the compile and the launch. Identical specialisations are recorded once.
   Integer/alignment attributes depend on shapes and strides, not on the modes, so the full grid
   of modes runs on two shapes (rows split and not split) and a few odd shapes (odd vocabulary,
   strided and misaligned logits, a verifier with a shorter vocabulary) run on fewer modes.
2. Compile. Each recorded specialisation goes through JITFunction.preload (Triton's own path from
   serialized specialisation data to a CompiledKernel), in parallel worker processes, with the
   Triton cache under build/triton-aot-cache. ptxas's -v log (TRITON_DUMP_PTXAS_LOG) gives
   registers and spills, Triton's metadata the shared memory; the figures are kept next to the
   cache so that a cached kernel is reported without recompiling.
3. Report one line per kernel, specialisation and architecture (registers, spill bytes, stack,
   shared memory, warps, occupancy), then the range per kernel; exit status 1 if any compile
   failed (with Triton's error), any kernel spills (unless --allow-spills) or its ptxas figures
   could not be read, 0 otherwise.

Works with Triton 3.6 and 3.8 (the hook, the preload path and the ptxas log exist in both). It
runs without TRITON_INTERPRET (with it, @triton.jit returns interpreted functions: main() restarts
itself without it). On a machine with a GPU it compiles the same way (the stand-in driver replaces
the real one meanwhile); "--arch native" adds the current device's architecture.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

DEFAULT_CACHE = os.path.join("build", "triton-aot-cache")


# ---------------------------------------------------------------------------------------------
# Capture: what Triton would compile for a launch, on a stand-in CUDA device


class _StandInDriver:
    """Stands in for triton.runtime.driver.active: a CUDA device of one architecture with no
    hardware behind it. Launches never reach it (the cache hook stops them before)."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)
        self.device = f"aot-sm{arch}"  # JITFunction caches its binder (and target) per device key

    def get_current_device(self):
        return self.device

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        import torch

        return torch.device("meta")

    def is_active(self):
        return False


@contextlib.contextmanager
def stand_in_driver(arch: int):
    from triton.runtime.driver import driver

    prev = driver._active
    driver.set_active(_StandInDriver(arch))
    try:
        yield
    finally:
        driver._active = prev


@dataclass(frozen=True)
class Spec:
    """One kernel specialisation for one architecture, as Triton serialises it for preload()."""

    kernel: str  # "module:qualname" of the @triton.jit function
    arch: int
    data: str  # Triton's specialization_data (JSON)

    @property
    def name(self) -> str:
        return self.kernel.rsplit(":", 1)[1]

    def constexprs(self) -> dict:
        """Constexpr parameters by name (Triton's integer == 1 specialisations included)."""
        d = json.loads(self.data)
        names = list(d["signature"].keys())
        out = {}
        for k, v in zip(d["constant_keys"], d["constant_vals"]):
            out[names[k[0]]] = v["constexpr"] if isinstance(v, dict) and "constexpr" in v else v
        return out

    def pointers(self) -> dict:
        """Element type of each pointer parameter ("bf16", "fp32", ...)."""
        sig = json.loads(self.data)["signature"]
        return {n: t.lstrip("*") for n, t in sig.items() if str(t).startswith("*")}

    def describe(self) -> str:
        d = json.loads(self.data)
        sig = d["signature"]
        attrs = {tuple(k): v for k, v in zip(d["attrs_keys"], d["attrs_vals"])}
        names = list(sig)
        const = self.constexprs()
        parts = [f"{k}={v}" for k, v in const.items()]
        ptrs = [f"{n}:{t}" for n, t in self.pointers().items()]
        aligned = [n for i, n in enumerate(names) if attrs.get((i,)) and n not in const]
        opts = d["options"]
        parts.append("ptr=" + ",".join(ptrs))
        parts.append("div16=" + ",".join(aligned))
        parts.append(f"warps={opts['num_warps']}")
        if opts.get("maxnreg"):
            parts.append(f"maxnreg={opts['maxnreg']}")
        return " ".join(parts)


@contextlib.contextmanager
def capture(arch: int):
    """Within the block, kernel launches on meta tensors record their specialisation (into the
    yielded dict, keyed by kernel and Triton's cache key) instead of compiling and launching."""
    from triton import knobs

    found: dict[tuple[str, str], Spec] = {}

    def hook(*, key, fn, compile, **_):
        jf = fn.jit_function
        name = f"{jf.module}:{jf.fn.__qualname__}"
        found.setdefault((name, str(key)), Spec(name, arch, compile["specialization_data"]))
        return True  # skip the compile; run() then returns before launching

    prev = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = hook
    try:
        with stand_in_driver(arch):
            yield found
    finally:
        knobs.runtime.jit_cache_hook = prev


# ---------------------------------------------------------------------------------------------
# The grid of launches


def _meta_inputs(shape, dtype, width=None, lead=0):
    """[B, K, V] logits on the meta device; `width` > V and `lead` > 0 make a strided view whose
    base is `lead` rows into a [B, K + lead, width] buffer (misaligned when width * size % 16)."""
    import torch

    B, K, V = shape
    if width is None and lead == 0:
        return torch.empty(B, K, V, dtype=dtype, device="meta")
    buf = torch.empty(B, K + lead, width or V, dtype=dtype, device="meta")
    return buf[:, lead:, :V]


FILTERS = [  # (top_k, top_p): none, top-k (<= and > the filter's chunk), top-p (pruned or not), both
    (0, 1.0), (50, 1.0), (5000, 1.0), (0, 0.9), (0, 0.9999),
    (50, 0.9), (5000, 0.9), (50, 0.9999), (5000, 0.9999),
]
SEEDS = ["int", "tensor1", "tensorB"]
PARTIAL_OFFSET = 151936  # vocab_offset of the partial ops' launches (a runtime value: any multiple of 4)
OFFSETS = ["int", "tensor"]


ROWS = "rows"  # a knob of the grid given per row: a [B] meta tensor (float64; int64 for top_k)


def _knob(value, B, dtype):
    import torch

    return torch.empty(B, dtype=dtype, device="meta") if value == ROWS else value


def _seed_offset(kind_s, kind_o, B):
    import torch

    n = 1 if kind_s == "tensor1" else B
    seed_t = None if kind_s == "int" else torch.empty(n, dtype=torch.int64, device="meta")
    offset_t = None if kind_o == "int" else torch.empty(1, dtype=torch.int64, device="meta")
    return seed_t, 123456789, offset_t, 2**40 + 3


def launch_grid():
    """Calls the host functions on the grid of options (meta tensors); yields a label per call."""
    import torch

    from apd_ext.backends import Filter, Noise
    from apd_ext.triton import mixture_accept, mixture_accept_partial, sample_draft, sample_draft_partial
    from apd_ext.triton.modes import filter_active

    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    V = 151936
    # (label, (B, K, V), buffer width, lead rows, verifier vocab): rows split over programs and one
    # program per row (rows >= 4 * 132), then the shapes that change integer/alignment attributes.
    split = ("split", (2, 8, V), None, 0, V)
    nosplit = ("nosplit", (16, 64, V), None, 0, V)
    odd = [("oddV", (3, 7, 32003), None, 0, 32003), ("strided", (3, 7, 152064), 152067, 1, 151936),
           ("K1", (1, 1, V), None, 0, V)]
    noises = [(0.0, None), (0.7, None), (0.7, torch.float64), (0.7, torch.float32)]  # (T, noise tensor dtype)

    def calls(shapes, dtypes, filters, noises, seeds, offsets, weights, greedy, valids):
        for (label, shape, width, lead, Vv), (dd, da) in itertools.product(shapes, dtypes):
            B, K, _ = shape
            D = _meta_inputs(shape, dd, width, lead)
            A = torch.empty(B, K, Vv, dtype=da, device="meta")
            draft = torch.empty(B, K, dtype=torch.int64, device="meta")
            for (tk, tp), (T, ndt), ks, ko in itertools.product(filters, noises, seeds, offsets):
                if ndt is not None and (ks, ko) != (seeds[0], offsets[0]):
                    continue  # explicit noise: seed and offset unused
                noise = None if ndt is None else torch.empty(B, K, Vv, dtype=ndt, device="meta")
                filt = Filter(_knob(T, B, torch.float64), _knob(tk, B, torch.int64), _knob(tp, B, torch.float64))
                rng = Noise(*_seed_offset(ks, ko, B), noise)
                # the partial ops as apd_ext/parallel/vocab.py calls them: a slice at a nonzero
                # offset, the global threshold given exactly when a filter is active
                tau = torch.empty(B, K, device="meta") if filter_active(filt.top_k, filt.top_p, Vv) else None
                sample_draft(D, Vv, filt, rng)
                sample_draft_partial(D, Vv, PARTIAL_OFFSET, filt, rng, tau)
                for w, g, has_valid in itertools.product(weights, greedy, valids):
                    valid = torch.empty(B, dtype=torch.int64, device="meta") if has_valid else None
                    w = _knob(w, B, torch.float64)
                    mixture_accept(D, A, draft, Vv, w, g, valid, filt, rng)
                    mixture_accept_partial(D, A, draft, Vv, PARTIAL_OFFSET, w, g, valid, filt, rng, tau)
                yield f"{label} {dd}/{da} T={T} noise={ndt} top_k={tk} top_p={tp} seed={ks} offset={ko}"

    same = [(f32, f32), (f16, f16), (bf16, bf16)]
    mixed = [(a, b) for a in (f32, f16, bf16) for b in (f32, f16, bf16) if a != b]
    # every mode: dtypes x filters x noise/target x weight x greedy x valid x seed/offset
    yield from calls([split, nosplit], same, FILTERS, noises, SEEDS, OFFSETS, [0.0, 0.5, 1.0], [False, True],
                     [False, True])
    # odd shapes and mixed dLLM/verifier dtypes: fewer modes (they change other attributes)
    yield from calls(odd, [(bf16, bf16), (f32, f32)], [(0, 1.0), (50, 0.9)], noises, ["tensorB"], ["tensor"],
                     [0.5], [False], [True])
    yield from calls([split], mixed, [(50, 0.9)], noises[1:], ["int"], ["int"], [0.5], [False], [False])
    # per-row knobs (the ROWS kernels): per-row temperatures (sampled modes, greedy rows inside), a
    # per-row filter or a scalar one beside them, per-row or scalar weights; a scalar T = 0 or
    # explicit noise beside per-row weights; then the odd shapes and mixed dtypes with fewer modes
    rows_noises = [(ROWS, None), (ROWS, torch.float64), (ROWS, torch.float32), (0.0, None), (0.7, torch.float32)]
    yield from calls([split, nosplit], same, [(0, 1.0), (ROWS, ROWS), (50, 0.9)], rows_noises, ["tensorB"],
                     ["tensor"], [ROWS, 0.5], [False, True], [False, True])
    yield from calls(odd, [(bf16, bf16), (f32, f32)], [(ROWS, ROWS)], rows_noises[:1], ["tensorB"], ["tensor"],
                     [ROWS], [False], [True])
    yield from calls([split], mixed, [(ROWS, ROWS)], rows_noises[:1], ["int"], ["int"], [ROWS], [False], [False])
    # the block-diffusion step (Fast-dLLM v2: a window of its 32-position block over its 152064-wide
    # logits rows, the shared vocabulary of 151936 read): the mixture finalize / stats kernels'
    # BLOCK_K = 32, which the shapes above (K = 8, 64, 7, 1: BLOCK_K 16 and 64) do not reach; its
    # integer/alignment attributes are split's. Every HAS_TAU / W_MODE / ROWS of the same dtypes.
    block = ("block", (2, 32, 152064), None, 0, V)
    yield from calls([block], same, [(0, 1.0), (ROWS, ROWS), (50, 0.9)], rows_noises, ["tensorB"], ["tensor"],
                     [ROWS, 0.0, 0.5, 1.0], [False, True], [True])
    # Dream's steady step at the bench's and the paper's windows, max_lookahead 100 and 200: BLOCK_K
    # 128 and 256, which no shape above reaches; only what generate launches (per-row knobs, tensor
    # seeds and offsets, per-row weights, valid counts, the sampled target), with and without a
    # global filter threshold (tensor parallelism)
    dream = [("dream100", (1, 100, 152064), None, 0, V), ("dream200", (1, 200, 152064), None, 0, V)]
    yield from calls(dream, same, [(0, 1.0), (ROWS, ROWS)], rows_noises[:1], ["tensorB"], ["tensor"], [ROWS],
                     [False], [True])


def enumerate_specs(archs) -> list[Spec]:
    specs: dict = {}
    for arch in archs:
        with capture(arch) as found:
            for _ in launch_grid():
                pass
        specs.update({(arch, k): v for k, v in found.items()})
    return sorted(specs.values(), key=lambda s: (s.name, s.arch, s.data))


# ---------------------------------------------------------------------------------------------
# Compile and report

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _parse_ptxas(log: str) -> dict:
    regs = _PTXAS_REGS.findall(log)
    spill = _PTXAS_SPILL.findall(log)
    if not regs:
        return {}
    out = {"regs": int(regs[-1])}
    if spill:
        stack, st, ld = (int(x) for x in spill[-1])
        out.update(stack=stack, spill_stores=st, spill_loads=ld)
    return out


def _compile(spec: Spec, cache_dir: str) -> dict:
    """Compiles one specialisation (in a worker process). Returns its figures or its error."""
    from triton import knobs

    mod, qual = spec.kernel.split(":")
    fn = importlib.import_module(mod)
    for part in qual.split("."):
        fn = getattr(fn, part)
    res = {"kernel": spec.name, "arch": spec.arch, "desc": spec.describe()}
    t0 = time.time()
    prev_dir, prev_log = knobs.cache.dir, os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v's log printed to stdout
    try:
        with stand_in_driver(spec.arch):
            knobs.cache.dir = cache_dir
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                kernel = fn.preload(spec.data)
            figures = _parse_ptxas(log.getvalue())
            mfile = os.path.join(cache_dir, "aot-figures", f"{kernel.hash}.json")
            if figures:
                os.makedirs(os.path.dirname(mfile), exist_ok=True)
                with open(mfile, "w") as f:
                    json.dump(figures, f)
            elif os.path.exists(mfile):
                with open(mfile) as f:
                    figures = json.load(f)
            else:  # cached by Triton without our figures: compile again in a private cache
                with tempfile.TemporaryDirectory() as tmp:
                    knobs.cache.dir = tmp
                    log = io.StringIO()
                    with contextlib.redirect_stdout(log):
                        kernel = fn.preload(spec.data)
                    figures = _parse_ptxas(log.getvalue())
        res.update(figures)
        md = kernel.metadata
        res.update(shared=int(md.shared), num_warps=int(md.num_warps), ok=True)
    except Exception as e:  # noqa: BLE001 (reported, then the run fails)
        res.update(ok=False, error=f"{type(e).__name__}: {e}")
    finally:
        knobs.cache.dir = prev_dir
        if prev_log is None:
            os.environ.pop("TRITON_DUMP_PTXAS_LOG", None)
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = prev_log
    res["seconds"] = round(time.time() - t0, 2)
    return res


def compile_specs(specs, cache_dir: str, jobs: int) -> list[dict]:
    """Compiles the specialisations (in `jobs` processes) and returns one result dict each, in order."""
    import multiprocessing

    import torch

    cache_dir = os.path.abspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    if jobs <= 1:
        return [_compile(s, cache_dir) for s in specs]
    # fork is fast (the workers inherit the imported modules), but not after CUDA was initialised
    ctx = multiprocessing.get_context("spawn" if torch.cuda.is_initialized() else "fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        return list(pool.map(_compile, specs, [cache_dir] * len(specs), chunksize=1))


def occupancy(regs: int, warps: int, shared: int, arch: int) -> float:
    """Resident warps per SM / 64 (sm_80 and sm_90: 64K registers, 64 warps, 32 blocks per SM;
    shared memory 163 KB (sm_80) or 227 KB (sm_90) per SM)."""
    per_warp = -(-regs * 32 // 256) * 256  # allocated per warp in units of 256 registers
    blocks = min(65536 // max(per_warp * warps, 1), 64 // warps, 32)
    if shared:
        blocks = min(blocks, (227 if arch >= 90 else 163) * 1024 // shared)
    return blocks * warps / 64


def report(results: list[dict], out=sys.stdout, allow_spills: bool = False) -> int:
    """Prints the table; returns the exit status: 1 on a failed compile, a spill (unless
    allow_spills) or a kernel whose ptxas figures could not be read, else 0."""
    failed = [r for r in results if not r["ok"]]
    print(f"{'kernel':<26} {'arch':>4} {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'smem':>6} "
          f"{'warps':>5} {'occ':>4}  specialisation", file=out)
    for r in sorted(results, key=lambda r: (r["kernel"], r["arch"], r["desc"])):
        if not r["ok"]:
            print(f"{r['kernel']:<26} {'sm' + str(r['arch']):>4} FAILED  {r['desc']}", file=out)
            continue
        regs = r.get("regs", -1)
        occ = occupancy(regs, r["num_warps"], r["shared"], r["arch"]) if regs > 0 else float("nan")
        spill = f"{r.get('spill_stores', -1)}/{r.get('spill_loads', -1)}"
        print(f"{r['kernel']:<26} {'sm' + str(r['arch']):>4} {regs:>4} {spill:>11} {r.get('stack', -1):>5} "
              f"{r['shared']:>6} {r['num_warps']:>5} {occ:>4.2f}  {r['desc']}", file=out)
    print(f"\nper kernel and arch (max over specialisations):", file=out)
    groups: dict = {}
    for r in results:
        if r["ok"]:
            groups.setdefault((r["kernel"], r["arch"]), []).append(r)
    for (k, a), rs in sorted(groups.items()):
        regs = [x.get("regs", -1) for x in rs]
        spills = max(x.get("spill_stores", -1) for x in rs)
        print(f"  {k:<26} sm{a}: {len(rs):>3} specs, regs {min(regs)}-{max(regs)}, spill stores max {spills} B, "
              f"smem max {max(x['shared'] for x in rs)} B", file=out)
    for r in failed:
        print(f"\nFAILED {r['kernel']} sm{r['arch']} [{r['desc']}]\n{r['error']}", file=out)
    ok = [r for r in results if r["ok"]]
    spilled = [r for r in ok if r.get("spill_stores", 0) or r.get("spill_loads", 0)]
    unknown = [r for r in ok if "regs" not in r or "spill_stores" not in r]
    for r in spilled:
        print(f"SPILLS {r['kernel']} sm{r['arch']}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded "
              f"[{r['desc']}]", file=out)
    for r in unknown:
        print(f"NO PTXAS FIGURES {r['kernel']} sm{r['arch']} [{r['desc']}]", file=out)
    print(f"\n{len(ok)} compiled, {len(failed)} failed, {len(spilled)} with spills"
          f"{'' if not allow_spills else ' (allowed)'}, {len(unknown)} without ptxas figures", file=out)
    return 1 if failed or unknown or (spilled and not allow_spills) else 0


def _archs(text: str) -> list[int]:
    out = []
    for a in text.split(","):
        a = a.strip()
        if a == "native":
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("apd_ext.triton.aot: --arch native / --device need a CUDA GPU")
            major, minor = torch.cuda.get_device_capability()
            out.append(major * 10 + minor)
        elif a:
            out.append(int(a))
    return sorted(set(out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m apd_ext.triton.aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="80,90", help="comma-separated compute capabilities (80, 90, native)")
    p.add_argument("--device", action="store_true",
                   help="compile for this machine's GPU only (same as --arch native)")
    p.add_argument("--allow-spills", action="store_true", help="report spills without failing")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="Triton cache for the compiled kernels")
    p.add_argument("--list", action="store_true",
                   help="print the specialisations as JSON lines, compile nothing")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":  # the kernels would be interpreted functions
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        os.execve(sys.executable, [sys.executable, "-m", "apd_ext.triton.aot", *(argv or sys.argv[1:])], env)
    import triton

    archs = _archs("native" if args.device else args.arch)
    t0 = time.time()
    specs = enumerate_specs(archs)
    if args.list:
        for s in specs:
            print(json.dumps({"kernel": s.name, "arch": s.arch, "constexprs": s.constexprs(),
                              "pointers": s.pointers(), "desc": s.describe()}))
        return 0
    print(f"triton {triton.__version__}: {len(specs)} specialisations for sm{', sm'.join(map(str, archs))} "
          f"(enumerated in {time.time() - t0:.1f} s), compiling with {args.jobs} jobs", flush=True)
    results = compile_specs(specs, args.cache_dir, args.jobs)
    rc = report(results, allow_spills=args.allow_spills)
    print(f"total {time.time() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
