"""The authors' released APD loop, run at benchmark time from a checkout of their repository.

Their code (github.com/danielmisrael/apd: dream/modeling_dream.py, dream/generation_utils.py) has no
licence file, so none of it is copied here: it is loaded at run time from a directory the user
gives. To get it:

    git clone https://github.com/danielmisrael/apd /path/to/apd        # --authors-repo /path/to/apd

It needs transformers 4.54 (their requirements.txt pin; under transformers 5.x their Dream model
fails to build: KeyError 'default' in ROPE_INIT_FUNCTIONS). Install it into a side directory, not
the venv, and point --authors-pythonpath (or APD_AUTHORS_PYTHONPATH) there:

    .venv/bin/pip install --target /tmp/tf454 --no-deps transformers==4.54.0 "huggingface_hub<1.0" \\
        "tokenizers>=0.21,<0.22" requests urllib3 idna charset_normalizer certifi

Their loop then runs in a child process (`python bench/authors_loop.py --serve ...`, with that
directory first on PYTHONPATH and --authors-python as the interpreter, default this one), which
loads their Dream model and a transformers Qwen2ForCausalLM from the golden tiny pair and answers
one request per line on stdin: run one golden APD configuration through their unmodified
`diffusion_generate(..., alg="apd")` and report the tokens and the time of every step. The
benchmark (bench/bench_loop.py --golden-pair) alternates requests to it with apd_ext's own runs.

Same uniforms: their loop draws each step's noise with `torch.rand_like(logits, dtype=float64)`
([K, V], the only random draw of a step; golden README section 1). During a request the child
replaces torch.rand_like with a function handing out, in order, the step's rows of the golden run's
recorded `uniform_noise`, which apd_ext gets through generate's noise_fn; the child checks that
every draw had the recorded shape and that all of them were used.

Step times: their `generation_tokens_hook_func(step, x, counts)` is called once before the loop
and once after each step's commit; the child stamps time.perf_counter() and time.process_time()
there (nothing else), so step i's wall and CPU times are the gaps between calls i and i + 1,
loop-level host work included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HOW_TO_GET = ("the authors' loop is not available: pass --authors-repo DIR (a checkout of "
              "https://github.com/danielmisrael/apd; or set APD_AUTHORS_REPO) and, since it needs "
              "transformers 4.54, --authors-pythonpath DIR (or APD_AUTHORS_PYTHONPATH) holding "
              "`pip install --target DIR --no-deps transformers==4.54.0 \"huggingface_hub<1.0\" "
              "\"tokenizers>=0.21,<0.22\" requests urllib3 idna charset_normalizer certifi` "
              "(see bench/authors_loop.py)")
THEIR_FILES = ("dream/modeling_dream.py", "dream/generation_utils.py")


def check_repo(repo: str | os.PathLike | None) -> Path | None:
    """The checkout's path if it holds the authors' Dream code, else None (repo None or empty);
    raises ValueError naming the missing file when the directory is not such a checkout."""
    if not repo:
        return None
    path = Path(repo).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"--authors-repo {path}: not a directory")
    for f in THEIR_FILES:
        if not (path / f).is_file():
            raise ValueError(f"--authors-repo {path}: no {f} (expected a checkout of github.com/danielmisrael/apd)")
    return path


class AuthorsLoop:
    """Client of the child process running the authors' loop (one request at a time)."""

    def __init__(self, repo: Path, golden: Path, *, python: str | None = None, pythonpath: str | None = None,
                 threads: int = 1, timeout_s: float = 600.0):
        env = dict(os.environ)
        if pythonpath:
            rest = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
            env["PYTHONPATH"] = os.pathsep.join([str(pythonpath)] + rest)
        cmd = [python or sys.executable, str(Path(__file__).resolve()), "--serve", "--authors-repo", str(repo),
               "--golden", str(golden), "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.timeout_s = timeout_s
        self.info = self._read()  # {"ready": True, "torch": ..., "transformers": ..., "threads": ...}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=self.timeout_s)
            raise RuntimeError(f"the authors' loop process exited (status {code}) before answering; its error is "
                               f"above. {HOW_TO_GET}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the authors' loop failed: {reply['error']}")
        return reply

    def run(self, file: str, mixture_weight: float, kv_window: int | None, max_lookahead: int | None,
            max_length: int) -> dict:
        """One golden run through their loop: {"sequences": [L], "acceptance_counts": [S],
        "step_s": [S] (each step's wall time), "step_cpu_s": [S] (the process's CPU time in each
        step), "total_s": the diffusion_generate call's wall time}."""
        req = dict(file=file, w=mixture_weight, kv=kv_window, la=max_lookahead, max_length=max_length)
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


# --- the child process ------------------------------------------------------------------------------

class _Uniforms:
    """Stands in for torch.rand_like during one run: hands out the recorded rows step by step."""

    def __init__(self, slabs):
        self.slabs, self.used = slabs, 0

    def __call__(self, like, dtype=None, **kw):
        if self.used >= len(self.slabs):
            raise RuntimeError(f"their loop drew noise {self.used + 1} times; the golden run recorded "
                               f"{len(self.slabs)}")
        u = self.slabs[self.used]
        if tuple(u.shape) != tuple(like.shape):
            raise RuntimeError(f"draw {self.used}: their loop asked for {tuple(like.shape)}, the golden run recorded "
                               f"{tuple(u.shape)}")
        self.used += 1
        return u.to(dtype) if dtype is not None else u


def _serve_one(torch, dllm, verifier, golden: Path, req: dict) -> dict:
    from safetensors.torch import load_file

    t = load_file(str(golden / "apd_runs" / req["file"]))
    km = t["step_num_masked"].tolist()
    starts = [sum(km[:s]) for s in range(len(km))]
    uniforms = _Uniforms([t["uniform_noise"][a: a + k].clone() for a, k in zip(starts, km)])
    stamps: list[float] = []

    def hook(step, x, counts):
        stamps.append((time.perf_counter(), time.process_time()))
        return x

    real = torch.rand_like
    torch.rand_like = uniforms
    try:
        t0 = time.perf_counter()
        out = dllm.diffusion_generate(t["input_ids"], max_length=req["max_length"], alg="apd", verifier_model=verifier,
                                      apd_mixture_weight=req["w"], kv_window=req["kv"], max_lookahead=req["la"],
                                      temperature=1.0, top_k=None, top_p=None, return_dict_in_generate=True,
                                      generation_tokens_hook_func=hook)
        total = time.perf_counter() - t0
    finally:
        torch.rand_like = real
    if uniforms.used != len(km):
        raise RuntimeError(f"{req['file']}: their loop drew {uniforms.used} noise tensors, the run recorded {len(km)}")
    return {"sequences": out.sequences[0].tolist(), "acceptance_counts": list(out.profile.acceptance_counts),
            "step_s": [b[0] - a[0] for a, b in zip(stamps, stamps[1:])],
            "step_cpu_s": [b[1] - a[1] for a, b in zip(stamps, stamps[1:])], "total_s": total}


def serve(repo: Path, golden: Path, threads: int) -> int:
    """The child: load their Dream model and the Qwen2 verifier (float32, CPU), then answer requests."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(repo))
    try:
        import transformers
        from transformers import Qwen2ForCausalLM
        from dream.modeling_dream import DreamModel  # their code, from the checkout

        dllm = DreamModel.from_pretrained(str(golden / "dream_tiny"), torch_dtype=torch.float32).eval()
        verifier = Qwen2ForCausalLM.from_pretrained(str(golden / "qwen2_tiny"), torch_dtype=torch.float32).eval()
    except Exception as e:  # reported to the parent as one line
        version = sys.modules["transformers"].__version__ if "transformers" in sys.modules else "not importable"
        print(json.dumps({"error": f"loading their model failed ({type(e).__name__}: {e}) with transformers {version}; "
                                   f"{HOW_TO_GET}"}), flush=True)
        return 1
    print(json.dumps({"ready": True, "torch": torch.__version__, "transformers": transformers.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        try:
            reply = _serve_one(torch, dllm, verifier, golden, json.loads(line))
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Child process of bench/bench_loop.py --golden-pair: the authors' loop")
    p.add_argument("--serve", action="store_true", help="answer requests on stdin (what the benchmark starts)")
    p.add_argument("--authors-repo", required=True, help="checkout of github.com/danielmisrael/apd")
    p.add_argument("--golden", required=True, help="the golden directory (dream_tiny, qwen2_tiny, apd_runs)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if not a.serve:
        p.error("run through bench/bench_loop.py --golden-pair (this script only serves it, with --serve)")
    try:
        repo = check_repo(a.authors_repo)
    except ValueError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    return serve(repo, Path(a.golden), a.threads)


if __name__ == "__main__":
    sys.exit(main())
