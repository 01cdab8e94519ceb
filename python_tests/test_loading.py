"""apd_ext.loading: one loader for a (dLLM, verifier) pair (the bundled tiny pair, two checkpoint
directories, a dLLM alone), its errors naming the argument before any weights are read, the
chat prompt, the EOS cut, and the command line / harness / tiny evaluation loading through it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import golden
from apd_ext import generate, loading
from apd_ext.loading import Pair, answer_tokens, load_pair
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tiny import DLLM_DIR, VERIFIER_DIR, task
from apd_ext.tiny import evaluate as ev
from apd_ext.tiny.tokenizer import TinyTokenizer
from apd_ext.tokenizer import HFTokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPT = task.eval_problems(0, 1)[0].prompt
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def bundled():
    return load_pair()


@pytest.fixture
def dirs(tmp_path):
    """The tiny pair copied as two checkpoint directories (not the bundled location)."""
    out = []
    for part in ("dllm", "verifier"):
        shutil.copytree(DLLM_DIR.parent / part, tmp_path / part)
        out.append(tmp_path / part)
    return out


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


def _tokens(pair: Pair, spec: str) -> list[int]:
    ids = pair.tokenizer.encode(PROMPT)
    out = generate(pair.dllm, pair.verifier, [ids], ev.policy_config(spec), seed=0, **pair.generate_kwargs())
    n = int(out.num_generated[0])
    return out.sequences[0, len(ids): len(ids) + n].tolist()


# --- what load_pair returns -----------------------------------------------------------------------

def test_the_bundled_pair(bundled):
    assert bundled.bundled and (bundled.dllm_dir, bundled.verifier_dir) == (DLLM_DIR, VERIFIER_DIR)
    assert isinstance(bundled.dllm, DllmRunner) and isinstance(bundled.verifier, VerifierRunner)
    assert isinstance(bundled.tokenizer, TinyTokenizer)
    assert bundled.vocab_size == 410 and bundled.eos_token_ids == [1]
    assert bundled.generate_kwargs() == {"vocab_size": 410, "eos_token_id": [1]}


def test_two_directories_decode_as_the_bundled_pair(bundled, dirs):
    pair = load_pair(*dirs)
    assert not pair.bundled and (pair.dllm_dir, pair.verifier_dir) == tuple(dirs)
    assert type(pair.tokenizer) is HFTokenizer and pair.tokenizer.vocab() == bundled.tokenizer.vocab()
    assert (pair.vocab_size, pair.eos_token_ids) == (bundled.vocab_size, bundled.eos_token_ids)
    assert _tokens(pair, "apd") == _tokens(bundled, "apd")


def test_a_dllm_alone_runs_the_dllm_only_policies(bundled, dirs):
    pair = load_pair(dirs[0], policy="dllm_fixed")
    assert pair.verifier is None and pair.verifier_dir is None and pair.eos_token_ids == [1]
    assert _tokens(pair, "dllm_fixed:k=2") == _tokens(bundled, "dllm_fixed:k=2")
    for policy in ("apd", "ar"):
        with pytest.raises(ValueError, match=f"policy {policy} runs the verifier: pass verifier="):
            load_pair(dirs[0], policy=policy)


def test_dtype_and_device_reach_the_runners(dirs):
    pair = load_pair(*dirs, dtype=torch.bfloat16, device="cpu")
    for runner in (pair.dllm, pair.verifier):
        assert runner.model.lm_head.weight.dtype == torch.bfloat16 and runner.device.type == "cpu"


def test_different_eos_of_the_two_models(dirs):
    """generate refuses a pair whose models' EOS differ when both decide tokens: the pair's EOS are
    then both (a row ends at either), the dLLM's first; a dLLM-only policy keeps the dLLM's."""
    _edit_config(dirs[1], eos_token_id=0)
    assert load_pair(*dirs).eos_token_ids == [1, 0]
    assert load_pair(*dirs, policy="dllm_fixed").eos_token_ids == [1]


# --- errors, before any weights are read ------------------------------------------------------------

@pytest.fixture
def no_weights(monkeypatch):
    """Reading weights fails the test: the errors below come from the arguments and config.json."""
    def boom(*a, **k):
        raise AssertionError("load_pair read weights before finding the error")
    monkeypatch.setattr(DllmRunner, "from_pretrained", boom)
    monkeypatch.setattr(VerifierRunner, "from_pretrained", boom)


def test_argument_errors_name_the_argument(dirs, tmp_path, no_weights):
    d, v = (str(p) for p in dirs)
    cases = [
        (dict(dllm=""), ValueError, r"dllm='': an empty path"),
        (dict(dllm=d, verifier=""), ValueError, r"verifier='': an empty path"),
        (dict(dllm=" ", verifier=v), ValueError, r"dllm=' ': an empty path"),
        (dict(verifier=v), ValueError, r"verifier= needs dllm= too"),
        (dict(dllm=d, verifier=v, policy="fastest"), ValueError, r"policy must be one of .*apd.*'fastest'"),
        (dict(dllm=str(tmp_path / "nope"), verifier=v), FileNotFoundError, r"dllm=.*nope: no such directory"),
        (dict(dllm=d, verifier=str(Path(v) / "config.json")), ValueError, r"verifier=.*config.json: not a directory"),
        (dict(dllm=str(tmp_path), verifier=v), FileNotFoundError, r"dllm=.*: no config.json in it"),
        (dict(dllm=v, verifier=d), ValueError, r"dllm=.*model_type 'qwen2' is not a dLLM.*swapped"),
        (dict(dllm=d, verifier=d), ValueError, r"verifier=.*model_type 'Dream' is not a verifier.*swapped"),
        (dict(dllm=d, verifier=v, vocab_size=411), ValueError, r"vocab_size 411 exceeds .*at most 410"),
        (dict(dllm=d, verifier=v, vocab_size="410"), ValueError, r"vocab_size must be an integer >= 1"),
        (dict(dllm=d, verifier=v, vocab_size=0), ValueError, r"vocab_size must be an integer >= 1"),
    ]
    for kwargs, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            load_pair(**kwargs)


def test_vocabularies_that_differ_need_vocab_size(dirs, no_weights):
    """Dream (152064) + Qwen2.5 (151936) in small: the golden Dream has 384 tokens, the tiny
    verifier 410; without vocab_size the error says to pass it, with it loading goes on (to the
    weights: the golden Dream takes the verifier's tokenizer.json, having none)."""
    dream = golden.path("dream_tiny")
    with pytest.raises(ValueError, match=r"vocabulary \(384\) and the verifier's \(410\) differ: pass vocab_size"):
        load_pair(dream, dirs[1])
    with pytest.raises(AssertionError, match="read weights"):  # every check passed
        load_pair(dream, dirs[1], vocab_size=384)


def test_tokenizers_that_number_tokens_differently(dirs, no_weights):
    doc = json.loads((dirs[1] / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (dirs[1] / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="tokenizers differ on 2 tokens"):
        load_pair(*dirs)


# --- chat prompts and the EOS cut --------------------------------------------------------------------

def test_chat_prompt_of_the_bundled_pair_is_its_task_format(bundled):
    question = task.eval_problems(0, 1)[0].question
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": question}]
    assert bundled.chat_prompt(messages) == task.format_prompt(question) == PROMPT
    with pytest.raises(ValueError, match="no message with role 'user'"):
        bundled.chat_prompt([{"role": "system", "content": "x"}])


@pytest.mark.parametrize("messages,pattern", [
    ([], r"non-empty list"),
    ("hi", r"non-empty list"),
    ([{"role": "user", "content": "a"}, "b"], r"messages\[1\] must be an object"),
    ([{"content": "a"}], r"messages\[0\]: 'role' must be a non-empty string"),
    ([{"role": "user", "content": ["a"]}], r"messages\[0\] \(user\): 'content' must be a string, got list"),
    ([{"role": "user"}], r"'content' must be a string, got NoneType"),
])
def test_bad_messages_name_the_message(bundled, messages, pattern):
    with pytest.raises(ValueError, match=pattern):
        bundled.chat_prompt(messages)


def test_chat_template_of_the_dllm_directory(dirs):
    for d in dirs:
        (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                             "chat_template": CHAT_TEMPLATE}))
    pair = load_pair(*dirs)
    assert pair.chat_prompt([{"role": "user", "content": "hi"}]) == "<|user|>\nhi<|endoftext|>\n<|assistant|>\n"
    (dirs[0] / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{{ raise_exception('roles must alternate') }}"}))
    with pytest.raises(ValueError, match="chat template of .* refused them \\(roles must alternate\\)"):
        load_pair(*dirs).chat_prompt([{"role": "user", "content": "hi"}])
    (dirs[0] / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="has no chat template"):
        load_pair(*dirs).chat_prompt([{"role": "user", "content": "hi"}])


def test_answer_tokens_end_at_the_first_eos():
    assert answer_tokens([5, 6, 1, 7, 1], [1]) == [5, 6, 1]
    assert answer_tokens([5, 0, 6, 1], [1, 0]) == [5, 0]
    assert answer_tokens([5, 6, 1], 1) == [5, 6, 1]
    assert answer_tokens([5, 6], [1]) == [5, 6]
    assert answer_tokens([5, 1], []) == answer_tokens([5, 1], None) == [5, 1]
    assert answer_tokens([], [1]) == []


# --- the callers load through it -----------------------------------------------------------------------

def test_tiny_evaluation_loads_through_it(bundled, dirs):
    pair = ev.load_pair()
    assert isinstance(pair, Pair) and pair.bundled and pair.tok is pair.tokenizer
    other = ev.load_pair(dirs[0].parent)
    assert not other.bundled and other.dllm_dir == dirs[0]


def test_generate_command_loads_through_it(dirs, monkeypatch, capsys):
    from apd_ext.cli import main as cli

    seen = []
    real = loading.load_pair

    def spy(*args, **kwargs):
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_pair", spy)
    cli(["generate", "--dllm", str(dirs[0]), "--verifier", str(dirs[1]), "--device", "cpu", "--prompt", PROMPT,
         "--max-new-tokens", "8", "--no-warmup", "--no-compare", "--vocab-size", "400"])
    (args, kwargs), = seen
    assert args == tuple(dirs) and kwargs["vocab_size"] == 400 and kwargs["policy"] == "apd"
    assert "apd" in capsys.readouterr().out


def test_real_checkpoints_do_not_import_the_tiny_package(dirs):
    """The command line and the harness load two directories without apd_ext.tiny's loader,
    tokenizer or evaluation (the harness's task data imports apd_ext.tiny.task only)."""
    code = f"""
import sys
from apd_ext.cli import main
main(["generate", "--dllm", {str(dirs[0])!r}, "--verifier", {str(dirs[1])!r}, "--device", "cpu", "--prompt", "1+1=",
      "--max-new-tokens", "4", "--no-warmup", "--no-compare", "--no-chat-template"])
from apd_ext.harness.model import ApdLM
ApdLM(dllm={str(dirs[0])!r}, verifier={str(dirs[1])!r}, device="cpu")
print(sorted(m for m in sys.modules if m.startswith("apd_ext.tiny")))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "['apd_ext.tiny', 'apd_ext.tiny.task']"
