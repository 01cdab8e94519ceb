"""apd_ext.tokenizer.HFTokenizer (tokenizer.json + tokenizer_config.json, chat template rendered
without transformers) and `python -m apd_ext generate --dllm DIR --verifier DIR`, on copies of the
bundled checkpoints dressed as ordinary Hugging Face checkpoint directories."""

import json
import shutil

import jinja2
import pytest

import apd_ext
from apd_ext.__main__ import main as cli
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tiny import ASSETS
from apd_ext.tokenizer import HFTokenizer

transformers = pytest.importorskip("transformers")

# Qwen2.5-style: a default system turn when none is given
QWEN_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# block tags on their own lines (trim_blocks / lstrip_blocks matter), bos_token, tojson
BLOCKY = """{{ bos_token }}
{% for m in messages %}
    {% if m['role'] == 'user' %}
[USER] {{ m['content'] }} {{ m | tojson }}
    {% elif m['role'] == 'system' %}
[SYS] {{ m['content'] }}
    {% else %}
{{ raise_exception('unknown role ' + m['role']) }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% endif %}"""


def _dress(src, dst, template=None, eos="<|endoftext|>"):
    """Copy a bundled checkpoint to dst and give it a tokenizer_config.json."""
    shutil.copytree(src, dst)
    config = {"eos_token": {"content": eos, "special": True}, "bos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
    if template is not None:
        config["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture
def dirs(tmp_path):
    d = _dress(ASSETS / "dllm", tmp_path / "dllm", QWEN_STYLE)
    v = _dress(ASSETS / "verifier", tmp_path / "verifier")
    return d, v


@pytest.mark.parametrize("template", [QWEN_STYLE, BLOCKY], ids=["qwen_style", "blocky"])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_chat_template_matches_transformers(tmp_path, template, system):
    d = _dress(ASSETS / "dllm", tmp_path / "d", template)
    ours = HFTokenizer.from_pretrained(d)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token="<|endoftext|>",
                                                  eos_token="<|endoftext|>")
    theirs.chat_template = template
    prompt = 'Tom has 5 coins & "3" <b>cards</b>. How many?'
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    got = ours.apply_chat_template(prompt, system=system)
    assert got == want
    assert prompt in got
    assert ours.encode(got) == theirs.encode(got, add_special_tokens=False)
    assert ours.decode(ours.encode(prompt)) == prompt


def test_template_errors_and_missing_template(tmp_path):
    d = _dress(ASSETS / "dllm", tmp_path / "d",
               "{% for m in messages %}{{ raise_exception('no ' + m['role'] + ' turns') }}{% endfor %}")
    with pytest.raises(jinja2.TemplateError, match="no user turns"):
        HFTokenizer.from_pretrained(d).apply_chat_template("hi")
    plain = HFTokenizer.from_pretrained(ASSETS / "verifier")
    assert plain.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        plain.apply_chat_template("hi")
    with pytest.raises(FileNotFoundError, match="fast-tokenizer"):
        HFTokenizer.from_pretrained(tmp_path)


def test_special_tokens_and_eos(tmp_path, dirs):
    d, _ = dirs
    tok = HFTokenizer.from_pretrained(d)
    assert tok.eos_id == tok.tok.token_to_id("<|endoftext|>") == 1
    assert tok.special["bos_token"] == "<|endoftext|>" and tok.special["eos_token"] == "<|endoftext|>"
    # without tokenizer_config.json the EOS comes from generation_config.json
    bare = HFTokenizer.from_pretrained(ASSETS / "dllm")
    assert bare.eos_id == json.loads((ASSETS / "dllm" / "generation_config.json").read_text())["eos_token_id"]
    # the newer layout: the template in chat_template.jinja
    j = tmp_path / "j"
    shutil.copytree(ASSETS / "dllm", j)
    (j / "chat_template.jinja").write_text(BLOCKY)
    assert HFTokenizer.from_pretrained(j).chat_template == BLOCKY


def test_cli_generate_from_checkpoint_dirs_applies_the_template(dirs, capsys):
    d, v = dirs
    prompt = "Question: Ann has 7 pens. She buys 4 pens. How many pens does Ann have now?\nAnswer:\n"
    cli(["generate", "--dllm", str(d), "--verifier", str(v), "--device", "cpu", "--prompt", prompt,
         "--no-color", "--mixture-weight", "0.8", "--kv-window", "none", "--max-new-tokens", "24"])
    out = capsys.readouterr().out
    tok = HFTokenizer.from_pretrained(d)
    text = tok.apply_chat_template(prompt)
    assert out.startswith(text)  # the rendered conversation is what was encoded and shown
    # the streamed continuation is what generate() writes for that prompt with the same knobs
    ids = tok.encode(text)
    ref = apd_ext.generate(DllmRunner.from_pretrained(d), VerifierRunner.from_pretrained(v), [ids],
                           max_new_tokens=24, mixture_weight=0.8, kv_window=None, temperature=0.0,
                           max_lookahead=None, seed=0)
    n = int(ref.num_generated[0])
    assert out[len(text):].startswith(tok.decode(ref.sequences[0, len(ids): len(ids) + n].tolist()))
    assert "mixture_weight=0.8" in out and "dllm_fixed:k=1" in out and "tok/s" in out
    # --no-chat-template feeds the prompt as is; --no-compare skips the k=1 run
    cli(["generate", "--dllm", str(d), "--verifier", str(v), "--device", "cpu", "--prompt", prompt,
         "--no-color", "--no-chat-template", "--no-compare", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert out.startswith(prompt) and "dllm_fixed:k=1" not in out


def test_cli_generate_bad_input(dirs, tmp_path):
    d, v = dirs
    with pytest.raises(SystemExit, match="go together"):
        cli(["generate", "--dllm", str(d), "--prompt", "x"])
    with pytest.raises(SystemExit, match="--prompt is needed"):
        cli(["generate", "--dllm", str(d), "--verifier", str(v), "--device", "cpu"])
    with pytest.raises(SystemExit, match="mixture_weight must be in"):
        cli(["generate", "--dllm", str(d), "--verifier", str(v), "--device", "cpu", "--prompt", "x", "--mixture-weight", "1.5"])
    # a verifier whose tokenizer numbers tokens differently cannot score the dLLM's ids
    bad = tmp_path / "bad_verifier"
    shutil.copytree(v, bad)
    doc = json.loads((bad / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (bad / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="tokenizers differ on 2 tokens"):
        cli(["generate", "--dllm", str(d), "--verifier", str(bad), "--device", "cpu", "--prompt", "x"])


def test_cli_generate_dllm_without_fast_tokenizer_uses_the_verifiers(dirs, capsys):
    """Dream ships a slow tokenizer only: the pair's tokenizer.json then comes from the verifier,
    the chat template still from the dLLM's tokenizer_config.json."""
    d, v = dirs
    (d / "tokenizer.json").unlink()
    cli(["generate", "--dllm", str(d), "--verifier", str(v), "--device", "cpu", "--prompt", "Ann has 7 pens.",
         "--no-color", "--no-compare", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    tok = HFTokenizer.from_pretrained(d, tokenizer_file=v / "tokenizer.json")
    assert tok.chat_template == QWEN_STYLE and out.startswith(tok.apply_chat_template("Ann has 7 pens."))
    (v / "tokenizer.json").unlink()
    with pytest.raises(SystemExit, match="has a tokenizer.json"):
        cli(["generate", "--dllm", str(d), "--verifier", str(v), "--device", "cpu", "--prompt", "x"])
