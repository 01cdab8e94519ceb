"""Decoding block-diffusion dLLMs (Fast-dLLM v2, SDAR layouts) on the exact block cache: every step's
dLLM logits equal a forward without any cache, a completed block is written once, windows end at the
block's end, rows are independent, and the native policies' rules hold (decode/steps/window.py and
native.py state them). Random small models (block_models.py); the released code's own outputs are
replayed in test_block_golden.py."""

from __future__ import annotations

import pytest
import torch

import apd_ext
from apd_ext.models import DllmRunner, VerifierRunner

from block_models import EOS, MASK, write

PROMPTS = [[1, 2, 3, 4, 9, 10, 11], [7, 8, 9], [12, 13, 14, 15, 16, 17, 18, 19]]  # 7, 3, 8: mid-block, block end
N = 21


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write(tmp_path_factory.mktemp("block"))


def runners(paths, dllm: str, verifier: str = "qwen2"):
    return DllmRunner.from_pretrained(paths[dllm]), VerifierRunner.from_pretrained(paths[verifier])


class Recorder:
    """Wraps DllmRunner.window_logits: keeps each call's canvas, curr, span and logits."""

    def __init__(self, dllm):
        self.calls, self.inner = [], dllm.window_logits
        dllm.window_logits = self

    def __call__(self, canvas, left, right, curr, window, size):
        D = self.inner(canvas, left, right, curr, window, size)
        self.calls.append((canvas.clone(), left.clone(), right.clone(), curr.clone(), window, D.clone()))
        return D


def no_cache_logits(ref: DllmRunner, canvas_row, curr: int, window: int) -> torch.Tensor:
    """[window, V]: the logits for positions curr.. from one forward over the whole prefix up to the
    block's end, no cache reused (a fresh setup)."""
    bs = ref.block_size
    end = (curr // bs + 1) * bs
    ref.setup(1, 64)  # one shape for every call (same tensors); positions >= end are absent
    t = lambda v: torch.tensor([v])  # noqa: E731
    return ref.window_logits(canvas_row[None, :end], t(0), t(end), t(curr), window, end)[0]


@pytest.mark.parametrize("dllm", ["fast", "sdar"])
@pytest.mark.parametrize("spec", ["apd", "dllm_fixed:k=2", "threshold:threshold=0.3", "native"])
def test_every_step_reads_an_exact_cache(paths, dllm, spec):
    """The logits of every step equal a forward over the whole prefix without a cache (fp32, 1e-5),
    for all rows of a batch whose prompts end mid-block and at a block's end; each completed block is
    in the dLLM's input once after it completed (then never again), and the input is at most two
    blocks."""
    if spec == "native":
        spec = "fast_dllm_v2:threshold=0.3,small_block_size=4" if dllm == "fast" else "sdar:threshold=0.3,denoising_steps=2"
    d, v = runners(paths, dllm, "qwen3" if dllm == "sdar" else "qwen2")
    ref = DllmRunner.from_pretrained(paths[dllm])
    rec = Recorder(d)
    out = apd_ext.generate(d, v, PROMPTS, spec, max_new_tokens=N, seed=3, eos_token_id=[])
    bs = d.block_size
    row_end = [len(p) + N for p in PROMPTS]
    refreshed = [set() for _ in PROMPTS]  # blocks before curr's that a steady step recomputed
    for i, (canvas, left, right, curr, window, D) in enumerate(rec.calls):
        for b in range(len(PROMPTS)):
            c = int(curr[b])
            if c >= row_end[b]:
                continue
            valid = min(window, row_end[b] - c, (c // bs + 1) * bs - c)
            want = no_cache_logits(ref, canvas[b], c, window)
            torch.testing.assert_close(D[b, :valid], want[:valid], atol=1e-5, rtol=0)
            assert int(right[b]) == (c // bs + 1) * bs  # the whole current block, nothing after it
            if i:
                lo = int(left[b])
                assert int(right[b]) - lo <= 2 * bs
                # a whole earlier block in the input is the one the previous step completed; a shifted
                # model may also read position curr - 1 alone (its logits predict curr)
                assert lo % bs == 0 or (d.shifted and lo == c - 1)
                for blk in range(-(-lo // bs), c // bs):
                    assert blk not in refreshed[b], f"block {blk} recomputed twice after it completed"
                    refreshed[b].add(blk)
    assert out.num_generated.tolist() == [N] * len(PROMPTS)


@pytest.mark.parametrize("dllm", ["fast", "sdar"])
def test_apd_window_ends_at_the_block_end(paths, dllm):
    """No step commits past the current block's end, and a block's last position is reached by the
    step that drafts it: the per-step counts never exceed block_end(curr) - curr."""
    d, v = runners(paths, dllm)
    bs = d.block_size
    for w in (1.0, 0.5):  # w = 1: the target is the dLLM's own draft: every drafted token is kept
        out = apd_ext.generate(d, v, PROMPTS, "apd", mixture_weight=w, max_new_tokens=N, seed=1, eos_token_id=[])
        counts = out.stats["acceptance_counts"]
        for b, p in enumerate(PROMPTS):
            curr, end = len(p), len(p) + N
            for n in counts[b].tolist():
                if curr >= end:
                    break
                room = min((curr // bs + 1) * bs, end) - curr
                assert (n == room) if w == 1.0 else (1 <= n <= room)
                curr += n


@pytest.mark.parametrize("dllm", ["fast", "sdar"])
@pytest.mark.parametrize("spec", ["apd:temperature=1.0", "threshold:threshold=0.2,temperature=0.7", "native"])
def test_rows_of_a_batch_equal_rows_alone(paths, dllm, spec):
    """Sampled decoding: row b of a batch (prompts of different lengths) equals the one-row call with
    row b's seed, as on whole-canvas models."""
    if spec == "native":
        spec = ("fast_dllm_v2:threshold=0.3,temperature=1.0" if dllm == "fast"
                else "sdar:denoising_steps=3,remasking=low_confidence_static,temperature=1.0")
    d, v = runners(paths, dllm)
    batch = apd_ext.generate(d, v, PROMPTS, spec, max_new_tokens=N, seed=[11, 12, 13])
    for b, p in enumerate(PROMPTS):
        alone = apd_ext.generate(d, v, [p], spec, max_new_tokens=N, seed=[11 + b])
        n = int(alone.num_generated[0])
        assert int(batch.num_generated[b]) == n
        assert batch.sequences[b, : len(p) + n].tolist() == alone.sequences[0, : len(p) + n].tolist()


def _replay_fast(ref, prompt, n_new, threshold, sub):
    """Fast-dLLM v2's decoding re-stated without a cache (greedy): tokens after the prompt."""
    bs, x = ref.block_size, list(prompt) + [MASK] * n_new
    end = len(prompt) + n_new
    while MASK in x[:end]:
        curr = x.index(MASK)
        logits = no_cache_logits(ref, torch.tensor(x + [MASK] * bs), curr, bs)  # rows for positions curr..
        logits[:, MASK] = float("-inf")
        p = logits.softmax(-1)
        conf, tok = p.max(-1)
        if curr % bs == 0:
            x[curr] = int(tok[0])
            continue
        lim = min((curr // sub + 1) * sub, end)
        cand = [j for j in range(curr, lim) if x[j] == MASK]
        best = max(cand, key=lambda j: (float(conf[j - curr]), -j))
        for j in cand:
            if j == best or float(conf[j - curr]) > threshold:
                x[j] = int(tok[j - curr])
        if EOS in x[len(prompt):end] and MASK not in x[len(prompt): len(prompt) + x[len(prompt):].index(EOS)]:
            break
    return x[len(prompt):end]


def _replay_sdar(ref, prompt, n_new, threshold, steps, dynamic):
    """SDAR's decoding re-stated without a cache (greedy): tokens after the prompt."""
    bs, x = ref.block_size, list(prompt) + [MASK] * n_new
    end, phase, block = len(prompt) + n_new, 0, None
    while MASK in x[:end]:
        curr = x.index(MASK)
        if curr // bs != block:
            block, phase = curr // bs, 0
        start = block * bs
        logits = no_cache_logits(ref, torch.tensor(x + [MASK] * bs), start, bs)  # unshifted: positions start..
        logits[:, MASK] = float("-inf")
        conf, tok = logits.softmax(-1).max(-1)
        cand = [j for j in range(max(start, len(prompt)), min(start + bs, end)) if x[j] == MASK]
        n = bs // steps + (1 if phase < bs % steps else 0)
        ranked = sorted(cand, key=lambda j: (-float(conf[j - start]), j))
        high = [j for j in cand if float(conf[j - start]) > threshold]
        chosen = high if dynamic and len(high) >= n else ranked[:n]
        for j in chosen:
            x[j] = int(tok[j - start])
        phase += 1
        if EOS in x[len(prompt):end] and MASK not in x[len(prompt): len(prompt) + x[len(prompt):].index(EOS)]:
            break
    return x[len(prompt):end]


@pytest.mark.parametrize("case", ["fast:0.3:4", "fast:0.05:8", "fast:0.9:2", "sdar:0.3:2:dyn", "sdar:0.1:4:dyn",
                                  "sdar:0.3:3:static"])
def test_native_rules_restated(paths, case):
    """fast_dllm_v2 and sdar at T = 0 equal their rules re-stated in plain Python over forwards without
    a cache (threshold strict, sub-blocks, the block's first token alone; the schedule per block)."""
    kind, thr, knob, *rest = case.split(":")
    d, _ = runners(paths, kind)
    ref = DllmRunner.from_pretrained(paths[kind])
    for p in PROMPTS:
        if kind == "fast":
            out = apd_ext.generate(d, None, [p], f"fast_dllm_v2:threshold={thr},small_block_size={knob}",
                                   max_new_tokens=N, eos_token_id=[EOS])
            want = _replay_fast(ref, p, N, float(thr), int(knob))
        else:
            rule = "low_confidence_dynamic" if rest == ["dyn"] else "low_confidence_static"
            out = apd_ext.generate(d, None, [p], f"sdar:threshold={thr},denoising_steps={knob},remasking={rule}",
                                   max_new_tokens=N, eos_token_id=[EOS])
            want = _replay_sdar(ref, p, N, float(thr), int(knob), rest == ["dyn"])
        n = int(out.num_generated[0])
        got = out.sequences[0, len(p): len(p) + n].tolist()
        cut = want.index(EOS) + 1 if EOS in want else len(want)
        assert got == want[:cut]


def test_block_policy_errors(paths):
    import golden

    d, v = runners(paths, "fast")
    s, _ = runners(paths, "sdar")
    dream = DllmRunner.from_pretrained(golden.path("dream_tiny"))
    with pytest.raises(ValueError, match="block-diffusion"):
        apd_ext.generate(dream, None, [[5, 6]], "fast_dllm_v2", max_new_tokens=4)
    with pytest.raises(ValueError, match="block by block"):
        apd_ext.generate(d, None, [[5, 6]], "diffusion", max_new_tokens=4)
    with pytest.raises(ValueError, match="small_block_size 3 must divide"):
        apd_ext.generate(d, None, [[5, 6]], "fast_dllm_v2:small_block_size=3", max_new_tokens=4)
    with pytest.raises(ValueError, match=r"denoising_steps must be in \[1, block size 4\]"):
        apd_ext.generate(s, None, [[5, 6]], "sdar:denoising_steps=5", max_new_tokens=4)
    with pytest.raises(ValueError, match="remasking"):
        apd_ext.generate(s, None, [[5, 6]], "sdar:remasking=entropy_bounded", max_new_tokens=4)
    # the canvas is whole blocks: 2 + 5 positions become 8
    out = apd_ext.generate(d, v, [[5, 6]], "apd", max_new_tokens=5, seed=0)
    assert out.sequences.shape == (1, 8) and int(out.num_generated[0]) <= 5
