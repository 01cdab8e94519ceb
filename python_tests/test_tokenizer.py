"""apd_ext.tokenizer: one tokenizer class for Hugging Face checkpoints and the bundled tiny pair
(TinyTokenizer is that class with the tiny special tokens as defaults), pair_tokenizer (the one
tokenizer an APD pair shares), and unreadable tokenizer files failing with the file's name."""

import json
import shutil

import pytest
from tokenizers import Tokenizer, models

from apd_ext.models.config import CheckpointError
from apd_ext.tiny import ASSETS, DLLM_DIR, VERIFIER_DIR, task
from apd_ext.tiny.tokenizer import EOS, MASK, PAD, TinyTokenizer
from apd_ext.tokenizer import HFTokenizer, load_tokenizer_json, pair_tokenizer


def test_one_class_serves_the_tiny_pair():
    assert issubclass(TinyTokenizer, HFTokenizer)
    tiny = TinyTokenizer.from_file(DLLM_DIR / "tokenizer.json")
    hf = HFTokenizer.from_pretrained(DLLM_DIR)
    # the tiny pair's ids come from its config.json / generation_config.json without tiny defaults
    assert (hf.pad_id, hf.eos_id, hf.mask_id) == (tiny.pad_id, tiny.eos_id, tiny.mask_id) == (0, 1, 2)
    assert [hf.tok.id_to_token(i) for i in (0, 1, 2)] == [PAD, EOS, MASK]
    assert HFTokenizer.from_pretrained(VERIFIER_DIR).mask_id is None  # the verifier has no mask token
    assert HFTokenizer.from_file(VERIFIER_DIR).vocab() == hf.vocab()
    texts = [p.text for p in task.eval_problems(3, 20)]
    assert hf.encode_batch(texts) == tiny.encode_batch(texts) == [hf.encode(t) for t in texts]
    for t, ids in zip(texts, hf.encode_batch(texts)):
        assert ids == hf.tok.encode(t).ids  # no special tokens added either way
        assert hf.decode(ids) == t
    assert hf.vocab_size == len(hf.vocab()) == 410
    with pytest.raises(TypeError, match="text must be a str"):
        hf.encode(b"bytes")


def test_tiny_tokenizer_wraps_a_trained_tokenizer_and_requires_its_specials(tmp_path):
    raw = load_tokenizer_json(DLLM_DIR / "tokenizer.json")
    tok = TinyTokenizer(raw)
    assert (tok.pad_id, tok.eos_id, tok.mask_id, tok.bos_id) == (0, 1, 2, None)
    tok.save(tmp_path / "tokenizer.json")
    assert TinyTokenizer.from_file(tmp_path / "tokenizer.json").vocab() == tok.vocab()
    with pytest.raises(ValueError, match=r"lacks the special tokens \['<\|pad\|>', '<\|endoftext\|>', '<\|mask\|>'\]"):
        TinyTokenizer(Tokenizer(models.BPE()))


def test_special_ids_fall_back_from_tokenizer_config_to_generation_config_to_config(tmp_path):
    d = tmp_path / "d"
    shutil.copytree(DLLM_DIR, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 1]}))
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "bos_token_id": 1}))
    tok = HFTokenizer.from_pretrained(d)
    assert (tok.eos_id, tok.bos_id, tok.pad_id, tok.mask_id) == (2, 1, 0, 2)
    # a tokenizer_config.json text wins; a text the vocabulary lacks falls back to the ids
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": PAD}, "mask_token": "<|nope|>"}))
    tok = HFTokenizer.from_pretrained(d)
    assert (tok.eos_id, tok.mask_id) == (0, 2)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": 7}))
    with pytest.raises(CheckpointError, match="chat_template must be a string"):
        HFTokenizer.from_pretrained(d)


def _copy_pair(tmp_path):
    d, v = tmp_path / "dllm", tmp_path / "verifier"
    shutil.copytree(DLLM_DIR, d)
    shutil.copytree(VERIFIER_DIR, v)
    return d, v


def test_pair_tokenizer(tmp_path):
    d, v = _copy_pair(tmp_path)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "[{{ messages[0]['content'] }}]"}))
    tok = pair_tokenizer(d, v)
    assert tok.vocab() == HFTokenizer.from_pretrained(ASSETS / "dllm").vocab()
    assert tok.apply_chat_template("hi") == "[hi]" and tok.mask_id == 2
    # a dLLM without a fast tokenizer: the verifier's tokenizer.json, the dLLM's template and ids
    (d / "tokenizer.json").unlink()
    tok = pair_tokenizer(d, v)
    assert tok.apply_chat_template("hi") == "[hi]" and tok.mask_id == 2 and tok.vocab_size == 410
    (v / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=f"neither {d} nor {v} has a tokenizer.json"):
        pair_tokenizer(d, v)


def test_pair_tokenizer_refuses_tokenizers_that_number_tokens_differently(tmp_path):
    d, v = _copy_pair(tmp_path)
    doc = json.loads((v / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (v / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="tokenizers differ on 2 tokens") as info:
        pair_tokenizer(d, v)
    assert repr(a) in str(info.value) and repr(b) in str(info.value)
    # the dLLM may add tokens the verifier lacks (its mask token): still one tokenizer
    doc = json.loads((d / "tokenizer.json").read_text())
    doc["added_tokens"].append({**doc["added_tokens"][-1], "id": 410, "content": "<|extra|>"})
    (d / "tokenizer.json").write_text(json.dumps(doc))
    shutil.copy(DLLM_DIR / "tokenizer.json", v / "tokenizer.json")
    assert pair_tokenizer(d, v).vocab_size == 411


@pytest.mark.parametrize("name,content,pattern", [
    ("tokenizer.json", b"\xff\xfe\x00{}", "not UTF-8"),
    ("tokenizer.json", b"{}", "not a usable tokenizer.json"),
    ("tokenizer.json", b"", "not a usable tokenizer.json"),
    ("tokenizer_config.json", b"\xc3\x28{}", "not UTF-8"),
    ("tokenizer_config.json", b"[\"eos\"]", "got a JSON list"),
    ("generation_config.json", b"{\"eos_token_id\": 1,", "not valid JSON"),
    ("config.json", "{\"model_type\": \"Dr\u00e9am\"}".encode("latin-1"), "not UTF-8"),
    ("chat_template.jinja", b"{{ \xff }}", "not UTF-8"),
])
def test_unreadable_tokenizer_files_name_the_file(tmp_path, name, content, pattern):
    d, v = _copy_pair(tmp_path)
    (d / name).write_bytes(content)
    for load in (HFTokenizer.from_pretrained, TinyTokenizer.from_file, lambda p: pair_tokenizer(p, v)):
        with pytest.raises(CheckpointError, match=pattern) as info:
            load(d)
        assert str(d / name) in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI reports ValueError as one error line


def test_pair_tokenizer_names_an_unreadable_verifier_file(tmp_path):
    d, v = _copy_pair(tmp_path)
    (v / "tokenizer.json").write_bytes(b"\x80abc")
    with pytest.raises(CheckpointError, match="not UTF-8") as info:
        pair_tokenizer(d, v)
    assert str(v / "tokenizer.json") in str(info.value)
    with pytest.raises(FileNotFoundError, match="fast-tokenizer"):
        HFTokenizer.from_pretrained(tmp_path / "nowhere")
