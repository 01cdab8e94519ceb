"""Defects found while preparing the pair loader for the server, each pinned by a test that failed
before its fix: answers of the policies that do not stream, sweep output names, tokens_per_step
after EOS, special tokens outside the vocabulary, duplicate shard tensors, harness model_args and
requests, WORLD_SIZE, and HF adapters whose logits have the wrong width."""

from __future__ import annotations

import csv
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import golden
from apd_ext import generate
from apd_ext.cli import main as cli
from apd_ext.decode.stats import tokens_per_step
from apd_ext.loading import answer_tokens
from apd_ext.models import HFDllm, HFVerifier
from apd_ext.models.checkpoint import INDEX
from apd_ext.models.config import CheckpointError
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tiny import evaluate as ev
from apd_ext.tiny import sweep, task

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # the commands set the process's thread count
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    return ev.load_pair()


def _error_line(argv, capsys, status: int) -> str:
    with pytest.raises(SystemExit) as e:
        cli([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == status and "\n" not in err and "Traceback" not in err, err
    return err


# --- 1. generate / demo take the answer from the returned tokens, not from the stream -----------

@pytest.mark.parametrize("command,spec", [("generate", "threshold"), ("generate", "diffusion:diffusion_steps=32"),
                                          ("demo", "threshold")])
def test_answer_of_a_policy_that_does_not_stream(pair, capsys, command, spec):
    """threshold and diffusion commit out of order and stream nothing: the answer (and its text)
    comes from the returned sequence, cut at EOS, as eval-tiny decodes it."""
    problem = task.eval_problems(0, 1)[0]
    text, _, _ = ev.decode(pair, problem, spec, seed=0)
    expected = task.extract_answer(text)
    assert expected == problem.answer  # the tiny pair solves it under both policies
    argv = [command, "--policy", spec, "--no-warmup"] + (["--no-compare"] if command == "generate" else [])
    cli(argv)
    out = capsys.readouterr().out
    assert f"got {expected}: correct" in out
    assert problem.prompt + text in out  # the answer is printed after the prompt
    row = next(line for line in out.splitlines() if line.startswith(spec.split(":")[0]))
    assert row.split()[-1] == str(expected)  # the table's answer column


# --- 2. sweep output names ----------------------------------------------------------------------

def test_sweep_output_names_keep_dots_and_go_inside_directories(tmp_path):
    d = tmp_path
    assert sweep.output_paths(d / "run_T0.5") == (d / "run_T0.5.csv", d / "run_T0.5.png")
    assert sweep.output_paths(d / "run_T0.7")[0] != sweep.output_paths(d / "run_T0.5")[0]
    assert sweep.output_paths(d / "runs.csv") == sweep.output_paths(d / "runs.png") == (d / "runs.csv",
                                                                                         d / "runs.png")
    assert sweep.output_paths(f"{d}/res/") == (d / "res" / "sweep_tiny.csv", d / "res" / "sweep_tiny.png")
    assert sweep.output_paths(d) == (d / "sweep_tiny.csv", d / "sweep_tiny.png")
    with pytest.raises(ValueError, match="empty output name"):
        sweep.output_paths("")


def test_sweep_command_writes_where_out_says(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ev, "load_pair", lambda *a, **k: None)
    monkeypatch.setattr(ev, "evaluate", lambda pair, problems, spec, progress=True, seed=0: {
        "policy": spec, "name": "ar", "params": {}, "num_problems": 1, "correct": 1, "accuracy": 1.0,
        "generated_tokens": 4, "emitted_tokens": 4, "dllm_forwards": 0, "verifier_forwards": 5, "steps": 4,
        "tokens_per_dllm_forward": None, "tokens_per_step": 1.0, "tokens_per_s": 10.0, "wall_s": 0.4})
    for name in ("run_T0.5", "run_T0.7"):
        cli(["sweep", "--out", str(tmp_path / name), "--num-problems", "1", "--policies", "ar"])
    (tmp_path / "res").mkdir()
    cli(["sweep", "--out", f"{tmp_path}/res/", "--num-problems", "1", "--policies", "ar"])
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["run_T0.5.csv", "run_T0.7.csv"]
    assert [r["policy"] for r in csv.DictReader(open(tmp_path / "res" / "sweep_tiny.csv"))] == ["ar"]
    assert "--out '': an empty output name" in _error_line(["sweep", "--out", ""], capsys, 2)


# --- an empty --dllm is an error, not the bundled pair -----------------------------------------------

def test_empty_checkpoint_flags_are_errors(capsys):
    assert "--dllm '': an empty path" in _error_line(["generate", "--dllm", "", "--verifier", "", "--prompt", "x"],
                                                     capsys, 2)
    assert "--dllm '': an empty path" in _error_line(["generate", "--dllm", "", "--policy", "threshold",
                                                      "--prompt", "x"], capsys, 2)


# --- 7. WORLD_SIZE that is not a number --------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "two", "0"])
def test_world_size_that_is_not_a_count(monkeypatch, capsys, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    line = _error_line(["demo", "--no-warmup"], capsys, 2)
    assert f"WORLD_SIZE={value!r} is not an integer >= 1" in line


def test_local_rank_that_is_not_a_number(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert "LOCAL_RANK='x' is not an integer >= 0" in _error_line(["demo", "--tp", "2", "--device", "cuda"], capsys, 2)


# --- 6. the harness's model_args and requests --------------------------------------------------------

@pytest.fixture(scope="module")
def hm():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return pytest.importorskip("apd_ext.harness.model")


def _request(context: str, **gen_kwargs):
    return SimpleNamespace(args=(context, {"max_gen_toks": 64, **gen_kwargs}), task_name="t")


@pytest.mark.parametrize("value,on", [("no", False), ("No", False), ("false", False), ("0", False), (0, False),
                                      (False, False), ("yes", True), ("TRUE", True), ("1", True), (1, True),
                                      (True, True)])
def test_harness_compile_flag_is_parsed_strictly(hm, value, on):
    assert hm.ApdLM(device="cpu", compile=value).generate_kwargs["compile"] is on


@pytest.mark.parametrize("value", ["maybe", "", 2, 0.5])
def test_harness_compile_flag_refuses_other_values(hm, value):
    with pytest.raises(hm.HarnessError, match=f"compile must be true or false .*got {value!r}"):
        hm.ApdLM(device="cpu", compile=value)


def test_harness_refuses_knobs_the_policy_does_not_read(hm):
    with pytest.raises(hm.HarnessError, match=r"model_args mixture_weight: policy ar does not read it; it reads "
                                              r"max_new_tokens, temperature"):
        hm.ApdLM(device="cpu", policy="ar", mixture_weight=0.5)
    with pytest.raises(hm.HarnessError, match=r"model_args k, kv_window: policy diffusion does not read them"):
        hm.ApdLM(device="cpu", policy="diffusion", k=2, kv_window=4)
    assert hm.ApdLM(device="cpu", policy="ar", temperature=0.5).config.temperature == 0.5


@pytest.mark.parametrize("seed", [2**63 - 1, 2**64 - 1])
def test_harness_seeds_near_the_top_of_64_bits_wrap(hm, pair, seed):
    """Request i decodes with seed + i modulo 2^64 (generate's own wrap): near 2^63 and 2^64 the
    answers are those of generate called with those seeds."""
    problems = task.eval_problems(0, 2)
    lm = hm.ApdLM(device="cpu", seed=seed, temperature=1.0, kv_window=None, max_lookahead=None)
    texts = lm.generate_until([_request(p.prompt) for p in problems], disable_tqdm=True)
    for i, (p, text) in enumerate(zip(problems, texts)):
        ids = pair.tok.encode(p.prompt)
        out = generate(pair.dllm, pair.verifier, [ids], lm.config.replace(max_new_tokens=64), seed=(seed + i) % 2**64)
        n = int(out.num_generated[0])
        assert text == pair.tok.decode(answer_tokens(out.sequences[0, len(ids): len(ids) + n].tolist(), [1]))


def test_harness_seed_outside_64_bits(hm):
    for seed in (2**64, -1):
        with pytest.raises(hm.HarnessError, match=rf"seed must be an integer in \[0, 2\^64\), got {seed}"):
            hm.ApdLM(device="cpu", seed=seed)


def test_harness_bad_requests_name_the_request_and_the_field(hm):
    lm = hm.ApdLM(device="cpu")
    prompt = task.eval_problems(0, 1)[0].prompt
    with pytest.raises(hm.HarnessError, match=r"request 1: generation kwarg temperature must be a number, got 'hot'"):
        lm.generate_until([_request(prompt), _request(prompt, temperature="hot")], disable_tqdm=True)
    with pytest.raises(hm.HarnessError, match=r"request 1: generation kwarg temperature must be a number, got True"):
        lm.generate_until([_request(prompt), _request(prompt, temperature=True)], disable_tqdm=True)
    with pytest.raises(hm.HarnessError, match=r"request 2: the context holds the dLLM's mask token '<\|mask\|>' "
                                              r"\(id 2\) at token \d"):
        lm.generate_until([_request(prompt), _request(prompt), _request("Tom<|mask|> has")], disable_tqdm=True)
    assert lm.generate_until([_request(prompt, temperature="0")], disable_tqdm=True)  # a number's text is fine


@pytest.mark.parametrize("value", ["", "many", "0"])
def test_harness_world_size_that_is_not_a_count(hm, monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(hm.HarnessError, match=f"WORLD_SIZE={value!r} is not a process count"):
        hm.ApdLM(device="cpu")


def test_harness_empty_checkpoint_paths(hm, monkeypatch):
    monkeypatch.chdir(ev.ASSETS / "dllm")  # "" was this directory, a loadable dLLM
    with pytest.raises(hm.HarnessError, match=r"dllm='': an empty path"):
        hm.ApdLM(device="cpu", dllm="", policy="dllm_fixed")
    with pytest.raises(hm.HarnessError, match=r"dllm='': empty"):
        hm.resolve_checkpoint("", "dllm")
    with pytest.raises(hm.HarnessError, match=r"verifier='': an empty path"):
        hm.ApdLM(device="cpu", dllm=str(ev.ASSETS / "dllm"), verifier="")


# --- 4. a pad_token_id outside the vocabulary --------------------------------------------------------

def _checkpoint(tmp_path, name: str):
    d = tmp_path / name
    shutil.copytree(golden.path(name), d)
    return d


def _edit_config(d, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize("pad", [384, 151643, -1])
def test_pad_token_outside_the_vocabulary_fails_at_load(tmp_path, pad):
    """generate writes pad_token_id into `sequences` after a row's end: one outside [0, V) was
    accepted and then returned as a token no tokenizer has."""
    for name, runner in (("dream_tiny", DllmRunner), ("qwen2_tiny", VerifierRunner)):
        d = _checkpoint(tmp_path, name)
        _edit_config(d, pad_token_id=pad)
        with pytest.raises(CheckpointError, match=rf"config.json: pad_token_id {pad} is outside the vocabulary "
                                                  rf"\[0, vocab_size = 384\)"):
            runner.from_pretrained(d)


def test_pad_token_of_an_hf_adapter_outside_the_vocabulary():
    with pytest.raises(CheckpointError, match=r"HFDllm: pad_token_id 64 is outside the vocabulary "
                                              r"\[0, vocab_size = 64\)"):
        HFDllm(lambda ids: ids, vocab_size=64, mask_token_id=63, pad_token_id=64)
    assert HFDllm(lambda ids: ids, vocab_size=64, mask_token_id=63, pad_token_id=0).config.pad_token_id == 0


# --- 5. the same tensor in two shard files -----------------------------------------------------------

def test_a_tensor_in_two_shards_names_both_files(tmp_path):
    """Without an index the file that sorted last silently won; with one, both copies were read."""
    d = _checkpoint(tmp_path, "qwen2_tiny")
    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    name = "model.norm.weight"
    save_file(tensors, d / "a.safetensors")
    save_file({name: tensors[name] * 2}, d / "b.safetensors")
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' is in two files, a.safetensors and b.safetensors "
                                              rf"\(no {INDEX} says which one to read\)"):
        VerifierRunner.from_pretrained(d)
    (d / INDEX).write_text(json.dumps({"weight_map": {n: "a.safetensors" for n in tensors} | {name: "b.safetensors"}}))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' is in two files, a.safetensors and b.safetensors;"):
        VerifierRunner.from_pretrained(d)
    norm = tensors.pop(name)
    save_file(tensors, d / "a.safetensors")  # each tensor once: loads, the norm from b.safetensors
    params = dict(VerifierRunner.from_pretrained(d).model.named_parameters())
    assert torch.equal(params[name], norm * 2)


# --- 8. an HF adapter whose model returns logits of another width ---------------------------------------

class _Logits(torch.nn.Module):
    """A stand-in model: logits [B, S, width] that favour token (id + 1) mod 16."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, ids):
        return torch.nn.functional.one_hot((ids + 1) % 16, self.width).float() * 5


def test_hf_adapter_logits_narrower_than_the_vocabulary():
    V = 32
    prompt = [[3, 4, 5]]
    with pytest.raises(ValueError, match=rf"HFDllm: the model returned logits of width {V - 1}, expected "
                                         rf"vocab_size {V}"):
        generate(HFDllm(_Logits(V - 1), vocab_size=V, mask_token_id=V - 1), None, prompt, "dllm_fixed",
                 max_new_tokens=4)
    with pytest.raises(ValueError, match=rf"HFVerifier: the model returned logits of width 20, expected "
                                         rf"vocab_size {V}"):
        generate(HFDllm(_Logits(V), vocab_size=V, mask_token_id=V - 1), HFVerifier(_Logits(20), vocab_size=V),
                 prompt, "apd", max_new_tokens=4, seed=0)
    # a wider head (padded past the tokenizer, as Qwen2.5's) is cut to the vocabulary
    wide = generate(HFDllm(_Logits(V + 8), vocab_size=V, mask_token_id=V - 1), None, prompt, "dllm_fixed",
                    max_new_tokens=4)
    assert wide.sequences[0, 3:].tolist() == [6, 7, 8, 9]


# --- 3. tokens_per_step counts the answer, not positions filled after EOS ----------------------------

def test_tokens_per_step_of_a_policy_that_fills_past_eos(pair):
    """threshold commits the whole answer region, past the row's EOS: 18 answer tokens in 5 steps
    were reported as 64 / 5 = 12.8 tokens per step. Now: num_generated / the row's steps."""
    ids = pair.tok.encode(task.eval_problems(0, 1)[0].prompt)
    for spec in ("threshold", "diffusion:diffusion_steps=16"):
        out = generate(pair.dllm, pair.verifier, [ids], ev.policy_config(spec), seed=0)
        n, acc = int(out.num_generated[0]), out.stats["acceptance_counts"]
        assert int(acc.sum()) == 64 > n  # acceptance_counts still count every committed position
        assert out.stats["tokens_per_step"] == n / out.stats["steps"]


def test_tokens_per_step_of_the_in_order_policies_is_unchanged(pair):
    """apd, dllm_fixed and ar commit only answer tokens: the figure stays the mean of the positive
    acceptance counts (the former definition), here over a batch whose rows end at different steps."""
    prompts = [pair.tok.encode(p.prompt) for p in task.eval_problems(3, 4)]
    for spec in ("apd", "apd:temperature=0.7,authors_compat=1,mixture_weight=0.9", "dllm_fixed:k=3", "ar"):
        out = generate(pair.dllm, pair.verifier, prompts, ev.policy_config(spec), seed=1)
        acc = out.stats["acceptance_counts"]
        assert torch.equal(acc.sum(1), out.num_generated), spec
        assert out.stats["tokens_per_step"] == pytest.approx(float(acc[acc > 0].double().mean()), rel=1e-12), spec


def test_tokens_per_step_of_rows_that_end_at_different_steps():
    acc = torch.tensor([[4, 9, 0, 0], [2, 2, 2, 30]])  # row 0: 5 answer tokens, row 1: 8 (then 28 past EOS)
    assert tokens_per_step(acc, torch.tensor([5, 8])) == 13 / 6
    assert tokens_per_step(torch.zeros(2, 0, dtype=torch.int64), torch.tensor([0, 0])) == 0.0
