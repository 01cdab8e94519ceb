"""The one table of the ops' modes (csrc/include/apd/modes.h) and its Python mirror for the Triton
kernels (apd_ext/triton/modes.py) hold the same names and values, and choose modes alike."""

import re
from pathlib import Path

import pytest

modes = pytest.importorskip("apd_ext.triton.modes", reason="triton is not installed")

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "include" / "apd" / "modes.h"


def _header_enum(prefix: str) -> dict[str, int]:
    """NAME -> value of the enumerators APD_<prefix>_NAME = value in modes.h."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    found = {m.group(1): int(m.group(2)) for m in re.finditer(rf"\bAPD_{prefix}_(\w+)\s*=\s*(\d+)", text)}
    assert found, f"no APD_{prefix}_* enumerators in {HEADER}"
    return found


def _python_table(prefix: str) -> dict[str, int]:
    return {name[len(prefix) + 1:]: int(getattr(modes, name).value) for name in vars(modes)
            if name.startswith(prefix + "_")}


@pytest.mark.parametrize("prefix", ["TARGET", "DRAFT"])
def test_python_mirror_matches_the_header(prefix):
    assert _python_table(prefix) == _header_enum(prefix)


def test_the_four_target_modes_and_three_draft_modes():
    assert set(_header_enum("TARGET")) == {"ARGMAX_MIX", "ARGMAX_KEPT", "PHILOX", "UNIFORM"}
    assert set(_header_enum("DRAFT")) == {"ARGMAX", "PHILOX", "UNIFORM"}


@pytest.mark.parametrize(
    "greedy_target,temperature,uniform,expect",
    [
        (True, 0.7, False, "ARGMAX_MIX"),
        (True, 0.0, True, "ARGMAX_MIX"),  # greedy_target ignores temperature and noise
        (False, 0.0, False, "ARGMAX_KEPT"),
        (False, 0.0, True, "ARGMAX_KEPT"),
        (False, 1.0, False, "PHILOX"),
        (False, 1.0, True, "UNIFORM"),
    ],
)
def test_target_mode_choice(greedy_target, temperature, uniform, expect):
    assert modes.target_mode(greedy_target, temperature, uniform) == _header_enum("TARGET")[expect]


@pytest.mark.parametrize(
    "temperature,uniform,expect",
    [(0.0, False, "ARGMAX"), (0.0, True, "ARGMAX"), (0.5, False, "PHILOX"), (0.5, True, "UNIFORM")],
)
def test_draft_mode_choice(temperature, uniform, expect):
    assert modes.draft_mode(temperature, uniform) == _header_enum("DRAFT")[expect]


@pytest.mark.parametrize("top_k,top_p,active", [(0, 1.0, False), (5, 1.0, True), (50, 1.0, False),
                                                (60, 1.0, False), (0, 0.9, True), (50, 0.9, True)])
def test_filter_active(top_k, top_p, active):
    """top_k >= vocab (50 here) keeps everything, like top_k = 0."""
    assert modes.filter_active(top_k, top_p, 50) is active
