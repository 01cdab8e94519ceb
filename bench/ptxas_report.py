"""Register / spill report of every CUDA kernel instantiation (ptxas -v), one row per kernel and arch.

    python bench/ptxas_report.py [--archs 80,90] [--jobs 2] [--keep DIR]

Compiles each csrc/cuda/*.cu with the flags setup.py gives nvcc (objects under a temporary
directory, never in the tree), parses ptxas's resource report and prints one table: registers,
stack frame, spill stores / loads (bytes) and static shared memory. Exit status: 0 when no kernel spills, 1 when any kernel spills (or a
file fails to compile), 2 when nvcc is missing (--allow-missing-nvcc: 0, with a message).
A stack frame without spills (a local array) is flagged in the table but does not fail.

Takes ~30 s on 2 cores (the 114 instantiations of two archs); stdlib only, no torch import.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# nvcc flags of setup.py / torch's CUDAExtension that change code generation (the torch include
# paths are not needed: csrc/cuda includes only csrc/include and the CUDA headers).
NVCC_FLAGS = [
    "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DAPD_WITH_CUDA",
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__", "-Xcompiler", "-fPIC",
]

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME")
    if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None)


def compile_one(nvcc: str, src: Path, archs: list[str], outdir: Path) -> tuple[Path, int, str]:
    cmd = [nvcc, *NVCC_FLAGS, f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}",
           *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs],
           "-Xptxas", "-v", "-c", str(src), "-o", str(outdir / (src.stem + ".o"))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return src, r.returncode, r.stdout + r.stderr


def parse(log: str) -> list[dict]:
    """Rows {mangled, arch, stack, spill_st, spill_ld, regs, smem} in the order ptxas printed them."""
    rows, cur = [], None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = dict(mangled=m.group(1), arch=m.group(2), stack=0, spill_st=0, spill_ld=0, regs=0, smem=0)
            rows.append(cur)
        elif cur is not None and (m := _FRAME.search(line)):
            cur.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        elif cur is not None and (m := _USED.search(line)):
            cur["regs"] = int(m.group(1))
            if s := _SMEM.search(line):
                cur["smem"] = int(s.group(1))
    return rows


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short(name: str) -> str:
    """'void apd::cuda::mixture_partial_kernel<apd::cuda::BF16, ..., 0, true>(apd::cuda::MixParams)'
    -> 'mixture_partial_kernel<BF16,BF16,0,true>'."""
    name = name.replace("apd::cuda::", "").removeprefix("void ")
    name = re.sub(r"\(.*\)$", "", name)
    return name.replace(" ", "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="80,90", help="comma-separated SM versions (default %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="parallel nvcc processes (default %(default)s)")
    p.add_argument("--sources", nargs="*", default=None, help="the .cu files (default csrc/cuda/*.cu)")
    p.add_argument("--keep", default=None, help="write the objects and ptxas logs to this directory")
    p.add_argument("--allow-missing-nvcc", action="store_true", help="exit 0 (with a message) without nvcc")
    a = p.parse_args(argv)
    archs = [x.strip() for x in a.archs.split(",") if x.strip()]
    nvcc = find_nvcc()
    if nvcc is None:
        print("ptxas_report: nvcc not found (set CUDA_HOME or put nvcc on PATH)", file=sys.stderr)
        return 0 if a.allow_missing_nvcc else 2
    sources = [Path(s) for s in a.sources] if a.sources else sorted((ROOT / "csrc" / "cuda").glob("*.cu"))

    with tempfile.TemporaryDirectory(prefix="apd_ptxas_") as tmp:
        outdir = Path(a.keep) if a.keep else Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
            results = list(ex.map(lambda s: compile_one(nvcc, s, archs, outdir), sources))

    failed, rows = [], []
    for src, rc, log in results:
        if a.keep:
            (Path(a.keep) / (src.stem + ".ptxas.log")).write_text(log)
        if rc != 0:
            failed.append(src.name)
            print(f"== {src.name}: nvcc exit {rc}\n{log[-4000:]}", file=sys.stderr)
            continue
        for r in parse(log):
            r["file"] = src.name
            rows.append(r)
    names = demangle(sorted({r["mangled"] for r in rows}))
    for r in rows:
        r["kernel"] = short(names[r["mangled"]])
    rows.sort(key=lambda r: (r["file"], r["kernel"], r["arch"]))

    heads = ("file", "kernel", "arch", "regs", "stack", "spill st", "spill ld", "smem", "")
    cells = [(r["file"], r["kernel"], r["arch"], str(r["regs"]),
              str(r["stack"]), str(r["spill_st"]), str(r["spill_ld"]), str(r["smem"]),
              "SPILL" if r["spill_st"] or r["spill_ld"] else ("stack" if r["stack"] else ""))
             for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip())
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
    spills = [r for r in rows if r["spill_st"] or r["spill_ld"]]
    print(f"\n{len(rows)} kernel instantiations ({', '.join('sm_' + x for x in archs)}) in {len(sources)} files; "
          f"max registers {max((r['regs'] for r in rows), default=0)}; "
          f"{len(spills)} spill; {sum(1 for r in rows if r['stack'])} with a stack frame"
          + (f"; compile FAILED: {', '.join(failed)}" if failed else ""))
    if not rows and not failed:
        print("no kernels found in the ptxas output", file=sys.stderr)
        return 1
    return 1 if spills or failed else 0


if __name__ == "__main__":
    sys.exit(main())
