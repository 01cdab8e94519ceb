"""The command line (apd_ext/cli) under bad input: one `error: ...` line on stderr and exit status 2
(a bad argument, found before any work) or 1 (a failure while working), never a traceback; Ctrl-C
ends in one `interrupted: ...` line (130) and never leaves output that looks complete. The
commands' normal runs are in test_tiny.py and test_hf_tokenizer.py."""

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from apd_ext.cli import main as cli
from apd_ext.tiny import evaluate as ev
from apd_ext.tiny import sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # the commands set the process's thread count
    yield
    torch.set_num_threads(threads)


def _fails(argv, capsys, status: int, pattern: str) -> str:
    """Run the CLI in-process; it must exit with `status` after one stderr line matching `pattern`."""
    with pytest.raises(SystemExit) as e:
        cli([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert e.value.code == status, err
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = "interrupted: " if status == 130 else "error: "
    assert lines[0].startswith(prefix) and re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Loading or evaluating the pair fails the test: the error must come before any work."""
    def boom(*a, **k):
        raise AssertionError("the command started working before checking its arguments")
    monkeypatch.setattr(ev, "load_pair", boom)
    monkeypatch.setattr(ev, "evaluate", boom)


ARGUMENT_ERRORS = [
    (["demo", "--policy", "apd:foo=1"], r"unknown knob 'foo'.*mixture_weight"),
    (["generate", "--policy", "apd:w=0.7"], r"unknown knob 'w'.*mixture_weight"),  # the former alias
    (["eval-tiny", "--policies", "ar", "apd:foo=1"], r"--policies: .*unknown knob 'foo'"),
    (["sweep", "--policies", "dllm_fixed:k=0"], r"--policies: k must be >= 1"),
    (["demo", "--policy", "ar", "--mixture-weight", "0.5"], r"policy ar does not read mixture_weight"),
    (["demo", "--max-new-tokens", "0"], r"--max-new-tokens: takes an integer >= 1, got 0"),
    (["demo", "--kv-window", "0"], r"--kv-window: takes an integer >= 1 or none"),
    (["demo", "--top-p", "0"], r"top_p must be in \(0, 1\]"),
    (["demo", "--problem", "-1"], r"--problem: takes an integer >= 0, got -1"),
    (["generate", "--problem", "-1"], r"--problem: takes an integer >= 0"),
    (["demo", "--threads", "-2"], r"--threads: takes an integer >= 1, got -2"),
    (["--threads", "0", "demo"], r"--threads: takes an integer >= 1, got 0"),
    (["eval-tiny", "--threads", "0"], r"--threads: takes an integer >= 1, got 0"),
    (["sweep", "--threads", "0"], r"--threads: takes an integer >= 1, got 0"),
    (["demo", "--assets", "/nonexistent/pair"], r"--assets /nonexistent/pair: no such directory"),
    (["eval-tiny", "--assets", "/nonexistent/pair"], r"--assets .*: no such directory"),
    (["demo", "--device", "bogus"], r"--device bogus: not a device"),
    (["demo", "--device", "meta"], r"--device meta: unsupported"),
    (["demo", "--synthetic", "--vocab", "0"], r"--vocab: takes an integer >= 1, got 0"),
    (["demo", "--synthetic", "--steps", "0"], r"--steps: takes an integer >= 1, got 0"),
    (["demo", "--synthetic", "--agreement", "1.5"], r"--agreement: takes a number in \[0, 1\]"),
    (["eval-tiny", "--num-problems", "0"], r"--num-problems: takes an integer >= 1, got 0"),
    (["eval-tiny", "--num-problems", "-2"], r"--num-problems: takes an integer >= 1, got -2"),
    (["eval-tiny", "--json", "/nonexistent/dir/out.json"], r"--json .*: directory /nonexistent/dir does not exist"),
    (["eval-tiny", "--json", "/"], r"--json /: is a directory"),
    (["generate", "--vocab-size", "0"], r"--vocab-size: takes an integer >= 1, got 0"),
    (["generate", "--vocab-size", "512"], r"--vocab-size goes with --dllm"),
    (["generate", "--dllm", "/nonexistent/d", "--verifier", "/nonexistent/v", "--prompt", "x"],
     r"--dllm /nonexistent/d: no such directory"),
    (["generate", "--dllm", "/tmp"], r"--dllm and --verifier go together"),
    (["sweep", "--temperature", "0"], r"--temperature: takes a number > 0"),
    (["bogus-command"], r"invalid choice: 'bogus-command'"),
    ([], r"the following arguments are required"),
]


@pytest.mark.parametrize("argv,pattern", ARGUMENT_ERRORS, ids=[" ".join(a) or "(none)" for a, _ in ARGUMENT_ERRORS])
def test_bad_arguments_fail_in_one_line_before_any_work(argv, pattern, capsys, no_work):
    _fails(argv, capsys, 2, pattern)


def test_cuda_device_without_cuda(capsys, monkeypatch, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(["demo", "--device", "cuda"], capsys, 2, r"--device cuda: CUDA is not available here")
    _fails(["eval-tiny", "--device", "cuda:0"], capsys, 2, r"--device cuda:0: CUDA is not available here")


def test_sweep_output_paths_are_checked_before_anything_is_written(tmp_path, capsys, no_work):
    _fails(["sweep", "--num-problems", "0", "--out", tmp_path / "s"], capsys, 2, r"--num-problems: takes an integer")
    _fails(["sweep", "--out", tmp_path / "missing" / "s"], capsys, 2, r"--out .*: directory .*missing does not exist")
    _fails(["sweep", "--replot", "--out", tmp_path / "s"], capsys, 2, r"--replot: --out .*s\.csv: no such file")
    (tmp_path / "s.csv").mkdir()
    _fails(["sweep", "--quick", "--out", tmp_path / "s"], capsys, 2, r"--out .*s\.csv: is a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]  # nothing written


def test_a_failure_while_working_is_one_line_with_status_1(tmp_path, capsys):
    for kind in ("dllm", "verifier"):  # a pair whose checkpoints are not loadable: found by the loader
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "config.json").write_text("garbage")
    _fails(["demo", "--assets", tmp_path, "--no-warmup"], capsys, 1, r"config\.json")


def test_non_utf8_prompt_as_the_command_line_delivers_it(capsys, no_work):
    """Python decodes argv bytes that are not UTF-8 to lone surrogates (os.fsdecode, as for
    sys.argv); no tokenizer can encode them: one error line, exit status 2."""
    prompt = os.fsdecode(b"caf\xe9 \xff")
    assert prompt == "caf\udce9 \udcff"
    _fails(["generate", "--prompt", prompt], capsys, 2,
           r"--prompt: not valid UTF-8 text \(bytes b'\\xe9' at character 3\)")
    _fails(["generate", "--prompt", "x", "--dllm", "/tmp", "--verifier", "/tmp", "--system", prompt], capsys, 2,
           r"--system: not valid UTF-8")


def _fake_result(spec):
    cfg = ev.policy_config(spec)
    return {"policy": spec, "name": cfg.policy, "params": {}, "num_problems": 1, "correct": 1, "accuracy": 1.0,
            "generated_tokens": 4, "emitted_tokens": 4, "dllm_forwards": 2, "verifier_forwards": 3, "steps": 2,
            "tokens_per_dllm_forward": 2.0, "tokens_per_step": 2.0, "tokens_per_s": 10.0, "wall_s": 0.4,
            "failures": []}


@pytest.fixture
def interrupt_second(monkeypatch):
    """evaluate() returns a result for the first policy and is interrupted (Ctrl-C) in the second."""
    calls = []

    def evaluate(pair, problems, spec, progress=True, seed=0):
        calls.append(spec)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _fake_result(spec)
    monkeypatch.setattr(ev, "load_pair", lambda *a, **k: None)
    monkeypatch.setattr(ev, "evaluate", evaluate)
    return calls


def test_ctrl_c_in_sweep_leaves_no_csv_that_looks_complete(tmp_path, capsys, interrupt_second):
    out = tmp_path / "s"
    _fails(["sweep", "--out", out, "--num-problems", "1", "--policies", "ar", "dllm_fixed:k=2", "dllm_fixed:k=4"],
           capsys, 130, r"sweep stopped after 1 of 3 policies; their rows are in .*s\.partial\.csv, .*s\.csv was not")
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "s.png").exists()
    rows = list(csv.DictReader(open(tmp_path / "s.partial.csv")))
    assert [r["policy"] for r in rows] == ["ar"] and rows[0]["tokens_per_model_forward"] == "2.0"


def test_sweep_renames_its_csv_when_complete(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ev, "load_pair", lambda *a, **k: None)
    monkeypatch.setattr(ev, "evaluate", lambda pair, problems, spec, progress=True, seed=0: _fake_result(spec))
    cli(["sweep", "--out", str(tmp_path / "s"), "--num-problems", "1", "--policies", "ar", "dllm_fixed:k=2"])
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [(r["family"], r["policy"]) for r in rows] == [("ar", "ar"), ("dllm_fixed", "dllm_fixed:k=2")]
    assert not (tmp_path / "s.partial.csv").exists() and torch.get_num_threads() == 1
    assert "wrote" in capsys.readouterr().err


def test_sweep_families_pick_parts_of_the_grid(tmp_path, capsys, monkeypatch):
    """--families threshold runs the threshold family alone (the default grid has every family);
    bad families and --families with --policies fail before any work."""
    seen = []
    monkeypatch.setattr(ev, "load_pair", lambda *a, **k: None)
    monkeypatch.setattr(ev, "evaluate", lambda pair, problems, spec, progress=True, seed=0:
                        seen.append(spec) or _fake_result(spec))
    cli(["sweep", "--out", str(tmp_path / "t"), "--num-problems", "1", "--quick", "--families", "threshold"])
    assert seen == sweep.configurations(True, families=("threshold",)) and all(s.startswith("threshold") for s in seen)
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert {r["family"] for r in rows} >= {"threshold", "threshold_block B=8"}
    seen.clear()
    cli(["sweep", "--out", str(tmp_path / "a"), "--num-problems", "1", "--quick"])
    assert seen == sweep.configurations(True, families=sweep.FAMILIES)
    capsys.readouterr()
    _fails(["sweep", "--out", tmp_path / "b", "--families", "nope"], capsys, 2, r"--families: unknown sweep families nope")
    _fails(["sweep", "--out", tmp_path / "b", "--families", "ar", "--policies", "ar"], capsys, 2, r"choose one")


def test_ctrl_c_in_eval_tiny_writes_no_json(tmp_path, capsys, interrupt_second):
    path = tmp_path / "e.json"
    _fails(["eval-tiny", "--json", path, "--policies", "ar", "dllm_fixed:k=2", "--quiet"], capsys, 130,
           r"eval-tiny stopped; 1 of 2 policies done, .*e\.json not written")
    assert not path.exists() and not list(tmp_path.iterdir())
    assert interrupt_second == ["ar", "dllm_fixed:k=2"]


def test_demo_prints_its_threads_and_takes_one_by_default(capsys):
    cli(["demo", "--synthetic", "--steps", "1", "--vocab", "64", "--window", "4"])
    assert "1 thread(s) (--threads N)" in capsys.readouterr().out and torch.get_num_threads() == 1
    cli(["demo", "--synthetic", "--steps", "1", "--vocab", "64", "--window", "4", "--threads", "2"])
    assert "2 thread(s)" in capsys.readouterr().out and torch.get_num_threads() == 2
    cli(["--threads", "3", "demo", "--synthetic", "--steps", "1", "--vocab", "64", "--window", "4"])
    assert "3 thread(s)" in capsys.readouterr().out and torch.get_num_threads() == 3


# --- the sweep's grid, families and plots (apd_ext/tiny/sweep.py) -------------------------------------

def test_sweep_grid_spells_out_the_recorded_knobs():
    """Each spec of the default grid means what the recorded CSV's row did (the former syntax
    filled in kv_window none, max_lookahead none, greedy), under eval-tiny as well."""
    rows = list(csv.DictReader(open(ROOT / "bench" / "results" / "sweep_tiny.csv")))
    grid = sweep.configurations()
    assert len(grid) == len(rows) == 39
    for spec, row in zip(grid, rows):
        cfg = ev.policy_config(spec)
        name, _, rest = row["policy"].partition(":")
        old = dict(item.split("=") for item in rest.split(",") if item)
        assert cfg.policy == name and cfg.max_new_tokens == 64
        assert cfg.mixture_weight == float(old.get("w", 0.7)) and cfg.temperature == float(old.get("T", 0))
        if name in ("apd", "dllm_fixed"):
            for knob in ("kv_window", "max_lookahead"):
                assert getattr(cfg, knob) == (None if old.get(knob, "none") == "none" else int(old[knob])), spec
        assert cfg.k == int(old.get("k", 1)) and cfg.authors_compat == (old.get("compat") == "1")
        assert cfg.diffusion_steps == (int(old["steps"]) if "steps" in old else None)
        assert sweep.family_of(spec) == (row["family"] if "T=" not in row["policy"] else
                                         f"{row['family']} T={cfg.temperature}")  # the CSV predates T in names


LABELS = [  # (new syntax, former syntax, label on the plot)
    ("apd:mixture_weight=0.7,kv_window=none,max_lookahead=none", "apd:w=0.7", "w=0.7"),
    ("apd:mixture_weight=0.7,kv_window=4,max_lookahead=8", "apd:w=0.7,kv_window=4,max_lookahead=8", "w=0.7,kv4,M8"),
    ("apd:mixture_weight=0.3,kv_window=none,max_lookahead=none,temperature=0.5,authors_compat=1",
     "apd:w=0.3,T=0.5,compat=1", "w=0.3"),
    ("diffusion:diffusion_steps=16", "diffusion:steps=16", "steps=16"),
    ("ar", "ar", "ar"),
]


def test_sweep_labels_read_both_syntaxes():
    for new, old, label in LABELS:
        assert sweep.short_label(new) == sweep.short_label(old) == label


@pytest.mark.parametrize("name", ["sweep_tiny", "sweep_tiny_sampled"])
def test_replot_of_the_recorded_csvs(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")  # an optional dependency of --replot only
    shutil.copy(ROOT / "bench" / "results" / f"{name}.csv", tmp_path)
    cli(["sweep", "--replot", "--out", str(tmp_path / name)])
    png = tmp_path / f"{name}.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().err


def test_replot_of_a_file_that_is_not_a_sweep_csv(tmp_path, capsys):
    (tmp_path / "s.csv").write_text(json.dumps({"not": "a csv"}))
    _fails(["sweep", "--replot", "--out", tmp_path / "s"], capsys, 1, r"s\.csv: not a sweep CSV")


def test_generate_with_a_dllm_alone_for_dllm_only_policies(capsys):
    """`generate --dllm DIR` without --verifier runs the dLLM-only policies (what LLaDA needs); APD
    without a verifier is one error line."""
    dllm = str(ev.ASSETS / "dllm")
    prompt = "Question: Tom has 5 coins. He finds 7 coins. How many coins does Tom have now?\nAnswer:\n"
    cli(["generate", "--dllm", dllm, "--policy", "dllm_fixed:k=2", "--prompt", prompt, "--max-new-tokens", "16",
         "--no-chat-template", "--no-warmup"])
    out = capsys.readouterr().out
    assert "dllm_fixed:k=2" in out and "dllm_fixed" in out.split("policy", 1)[1]
    _fails(["generate", "--dllm", dllm, "--prompt", "x"], capsys, 2, r"--dllm alone only with a dLLM-only --policy")


def test_block_model_through_eval_tiny_sweep_and_generate(tmp_path, capsys):
    """The bundled block-diffusion dLLM from the command line: eval-tiny --block (its JSON names the
    family), sweep --block (block families in the CSV) and generate --dllm DIR with its own policy."""
    from apd_ext.tiny import BLOCK_DLLM_DIR, VERIFIER_DIR

    out = tmp_path / "e.json"
    cli(["eval-tiny", "--block", "--num-problems", "2", "--quiet", "--json", str(out),
         "--policies", "fast_dllm_v2", "apd:mixture_weight=0.7"])
    doc = json.loads(out.read_text())
    assert doc["dllm"] == "fast_dllm_qwen" and [r["name"] for r in doc["results"]] == ["fast_dllm_v2", "apd"]
    assert all(r["dllm_forwards"] > 0 for r in doc["results"])
    cli(["sweep", "--block", "--num-problems", "1", "--out", str(tmp_path / "s"), "--families", "block_ar",
         "block_threshold", "--quick"])
    with open(tmp_path / "s.csv") as f:
        fams = [r["family"] for r in csv.DictReader(f)]
    assert fams == ["ar", "threshold", "threshold"]
    capsys.readouterr()
    cli(["generate", "--dllm", str(BLOCK_DLLM_DIR), "--verifier", str(VERIFIER_DIR), "--policy", "fast_dllm_v2",
         "--prompt", task_prompt(), "--max-new-tokens", "16"])
    assert capsys.readouterr().out.strip()


def task_prompt() -> str:
    from apd_ext.tiny import task

    return task.eval_problems(0, 1)[0].prompt
