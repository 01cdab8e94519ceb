"""apd_ext.decode.config.DecodeConfig: the one set of defaults, specs that round-trip, and every bad
knob or spec rejected with a message naming it."""

import dataclasses
import inspect
import math

import pytest
import torch

import golden
from apd_ext import DecodeConfig, generate
from apd_ext.decode.config import POLICY_KNOBS, knob_names
from apd_ext.models.runners import DllmRunner, VerifierRunner

DEFAULTS = dict(policy="apd", max_new_tokens=256, mixture_weight=0.7, kv_window=16, max_lookahead=100,
                temperature=0.0, top_k=None, top_p=1.0, k=1, diffusion_steps=None, diffusion_alg="confidence",
                authors_compat=False, threshold=0.9, block_length=None, small_block_size=8, denoising_steps=None,
                remasking="low_confidence_dynamic")


def test_defaults_are_the_documented_ones():
    assert dataclasses.asdict(DecodeConfig()) == DEFAULTS
    assert DecodeConfig().effective_top_k == 0 and DecodeConfig(authors_compat=True).effective_top_k == 50
    assert DecodeConfig(authors_compat=True, top_k=0).effective_top_k == 0


def test_generate_has_no_defaults_of_its_own():
    """Every knob reaches generate through DecodeConfig: no knob is a parameter with a default."""
    params = inspect.signature(generate).parameters
    assert not set(knob_names()) & set(params) and "policy" not in params
    assert params["config"].default is None and params["knobs"].kind is inspect.Parameter.VAR_KEYWORD


def test_generate_defaults_equal_the_config_defaults():
    d = DllmRunner.from_pretrained(golden.path("dream_tiny"))
    v = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))
    ids = [[381] + list(range(5, 35))]  # longer than kv_window: the steady spans start after 0
    plain = generate(d, v, ids, max_new_tokens=10, seed=1)
    for config in (DecodeConfig(max_new_tokens=10), DecodeConfig.from_spec("apd:max_new_tokens=10"),
                   "apd:max_new_tokens=10"):
        out = generate(d, v, ids, config, seed=1)
        assert torch.equal(out.sequences, plain.sequences)
        assert torch.equal(out.stats["spans"], plain.stats["spans"])
    # a knob argument overrides the config's value
    over = generate(d, v, ids, DecodeConfig(max_new_tokens=10, kv_window=None), kv_window=16, seed=1)
    assert torch.equal(over.stats["spans"], plain.stats["spans"])
    whole = generate(d, v, ids, DecodeConfig(max_new_tokens=10, kv_window=None), seed=1)
    with pytest.raises(TypeError, match="config"):
        generate(d, v, ids, {"max_new_tokens": 10})
    assert (whole.stats["spans"][0, :, 0] == 0).all() and not (plain.stats["spans"][0, 1:, 0] == 0).all()


ROUND_TRIP = [
    DecodeConfig(),
    DecodeConfig(mixture_weight=0.123456789, kv_window=None, temperature=1e-7, top_p=0.95),
    DecodeConfig(max_lookahead=None, top_k=0, authors_compat=True),
    DecodeConfig(policy="dllm_fixed", k=3, kv_window=4),
    DecodeConfig(policy="ar", temperature=1.0, top_k=50, max_new_tokens=7),
    DecodeConfig(policy="diffusion", diffusion_steps=9, diffusion_alg="random"),
    DecodeConfig(policy="threshold"),
    DecodeConfig(policy="threshold", threshold=0.123456789, block_length=32, kv_window=None, temperature=0.5),
    DecodeConfig(policy="threshold", threshold=1.0, max_lookahead=None, top_p=0.9),
]


@pytest.mark.parametrize("config", ROUND_TRIP, ids=lambda c: c.to_spec())
def test_specs_round_trip(config):
    spec = config.to_spec()
    assert DecodeConfig.from_spec(spec) == config
    assert spec.split(":")[0] == config.policy
    assert all(part.split("=")[0] in POLICY_KNOBS[config.policy] for part in spec.partition(":")[2].split(",") if part)


def test_spec_parsing():
    c = DecodeConfig.from_spec(" apd : mixture_weight=0.9 , kv_window=none ")
    assert (c.mixture_weight, c.kv_window) == (0.9, None)
    assert DecodeConfig.from_spec("apd:authors_compat=true").authors_compat is True
    assert DecodeConfig.from_spec("ar", base=DecodeConfig(max_new_tokens=5)).max_new_tokens == 5
    assert DecodeConfig.from_spec("apd:top_k=none").top_k is None
    assert DecodeConfig().replace(temperature=1).temperature == 1.0
    assert isinstance(DecodeConfig(max_new_tokens=torch.tensor(3).item()).max_new_tokens, int)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecodeConfig().temperature = 1.0


BAD_KNOBS = [  # knob, value, exception
    ("policy", "beam", ValueError), ("policy", None, ValueError),
    ("max_new_tokens", 0, ValueError), ("max_new_tokens", 1.5, TypeError), ("max_new_tokens", None, TypeError),
    ("max_new_tokens", True, TypeError), ("max_new_tokens", "8", TypeError),
    ("mixture_weight", 1.5, ValueError), ("mixture_weight", -0.1, ValueError), ("mixture_weight", math.nan, ValueError),
    ("mixture_weight", "0.7", TypeError), ("mixture_weight", None, TypeError),
    ("kv_window", 0, ValueError), ("kv_window", 2.5, TypeError), ("kv_window", "16", TypeError),
    ("max_lookahead", 0, ValueError), ("max_lookahead", 4.0, TypeError),
    ("temperature", -1.0, ValueError), ("temperature", math.nan, ValueError), ("temperature", "1", TypeError),
    ("temperature", None, TypeError), ("temperature", 1e-40, ValueError),
    ("top_k", -1, ValueError), ("top_k", math.nan, TypeError), ("top_k", math.inf, TypeError), ("top_k", 5.0, TypeError),
    ("top_p", 0.0, ValueError), ("top_p", 1.5, ValueError), ("top_p", None, TypeError), ("top_p", math.nan, ValueError),
    ("k", 0, ValueError), ("k", None, TypeError),
    ("diffusion_steps", 0, ValueError), ("diffusion_steps", 2.5, TypeError),
    ("diffusion_alg", "best", ValueError), ("diffusion_alg", None, ValueError),
    ("authors_compat", 1, TypeError), ("authors_compat", "yes", TypeError),
    ("threshold", 0.0, ValueError), ("threshold", 1.5, ValueError), ("threshold", -0.1, ValueError),
    ("threshold", math.nan, ValueError), ("threshold", "0.9", TypeError), ("threshold", None, TypeError),
    ("block_length", 0, ValueError), ("block_length", 8.0, TypeError), ("block_length", "8", TypeError),
]


@pytest.mark.parametrize("knob,value,exc", BAD_KNOBS, ids=[f"{k}={v!r}" for k, v, _ in BAD_KNOBS])
def test_bad_knobs_are_rejected_by_name(knob, value, exc):
    with pytest.raises(exc, match=knob):
        DecodeConfig(**{knob: value})
    with pytest.raises(exc, match=knob):
        DecodeConfig().replace(**{knob: value})


def test_unknown_knobs_are_named():
    with pytest.raises(TypeError, match="mixture_wieght"):
        DecodeConfig().replace(mixture_wieght=0.5)


BAD_SPECS = [  # spec, what the message must name
    ("", "spec"), ("beam", "beam"), ("apd:foo=1", "foo"), ("apd:k=2", "'k'"), ("apd:mixture_weight", "mixture_weight"),
    ("apd:mixture_weight=x", "mixture_weight"), ("apd:mixture_weight=2", "mixture_weight"),
    ("apd:max_new_tokens=none", "max_new_tokens"), ("apd:kv_window=1,kv_window=2", "kv_window"),
    ("apd:kv_window=2.5", "kv_window"), ("apd:authors_compat=2", "authors_compat"), ("apd:top_k=nan", "top_k"),
    ("apd:temperature=nan", "temperature"), ("apd:max_lookahead=0", "max_lookahead"),
    ("diffusion:diffusion_alg=best", "diffusion_alg"), ("ar:policy=apd", "policy"), ("ar:=1", "=1"),
    ("threshold:threshold=0", "threshold"), ("threshold:threshold=2", "threshold"),
    ("threshold:threshold=none", "threshold"), ("threshold:block_length=0", "block_length"),
    ("threshold:k=2", "'k'"), ("apd:threshold=0.5", "threshold"), ("dllm_fixed:block_length=4", "block_length"),
]


@pytest.mark.parametrize("spec,name", BAD_SPECS, ids=[s for s, _ in BAD_SPECS])
def test_bad_specs_are_rejected_by_name(spec, name):
    with pytest.raises(ValueError, match=name):
        DecodeConfig.from_spec(spec)
    with pytest.raises(ValueError):
        DecodeConfig.from_spec(None)
