"""apd_ext in lm-evaluation-harness (apd_ext/harness): the "apd" model and the apd_tiny_arith task
against eval-tiny problem by problem, simple_evaluate and the `lm_eval` command end to end, the
GSM8K task config on local GSM8K-format problems with the tiny pair dressed as Hugging Face
directories, the registration hook, and bad model_args / requests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no network here: every dataset is a local file
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.api.registry import get_model, model_registry  # noqa: E402

from apd_ext import generate  # noqa: E402
from apd_ext.harness import TASKS_DIR, data  # noqa: E402
from apd_ext.harness.model import ApdLM, HarnessError, resolve_checkpoint  # noqa: E402
from apd_ext.tiny import ASSETS, task  # noqa: E402
from apd_ext.tiny import evaluate as ev  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK = "apd_tiny_arith"
N = 8  # problems per policy in the comparisons with eval-tiny


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def pair():
    return ev.load_pair()


def _evaluate(lm, limit, **kw):
    return lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=limit, log_samples=True, verbosity="WARNING", **kw)


def _responses(out) -> dict[int, str]:
    return {s["doc_id"]: s["resps"][0][0] for s in out["samples"][TASK]}


# --- the task's data --------------------------------------------------------------------------


def test_task_file_is_the_generators_held_out_set():
    """The shipped JSONL is exactly what the problem generator writes for held-out set 0, in
    eval-tiny's order."""
    assert data.TINY_ARITH_JSONL.read_text(encoding="utf-8") == data.problems_jsonl()
    rows = data.read_jsonl(data.TINY_ARITH_JSONL)
    problems = task.eval_problems(data.TINY_ARITH_SEED, len(rows))
    assert [r["question"] for r in rows] == [p.question for p in problems]
    assert [r["answer"] for r in rows] == [p.answer for p in problems]


def test_data_writer_and_bad_files(tmp_path):
    out = tmp_path / "x.jsonl"
    data.main(["--out", str(out), "--seed", "3", "--count", "5"])
    assert data.read_jsonl(out) == [data.problem_record(p) for p in task.eval_problems(3, 5)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        data.read_jsonl(bad)
    bad.write_text('{"question": "a"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not JSON"):
        data.read_jsonl(bad)
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="lack"):
        data.load_tiny_arith(bad)


# --- the harness against eval-tiny -------------------------------------------------------------


@pytest.mark.parametrize("policy,model_args", [
    ("apd", {}),  # the library's defaults (mixture_weight 0.7, kv_window 16, max_lookahead 100)
    ("dllm_fixed:k=1", {"policy": "dllm_fixed", "k": 1}),
    ("threshold:threshold=0.9,block_length=4", {"policy": "threshold", "threshold": 0.9, "block_length": 4}),
])
def test_harness_equals_eval_tiny_problem_by_problem(pair, policy, model_args):
    """The harness's answers on apd_tiny_arith are eval-tiny's, problem by problem: the same text,
    the same extracted answer and verdict, the same accuracy, tokens and dLLM forwards."""
    problems = task.eval_problems(0, N)
    lm = ApdLM(device="cpu", **model_args)
    out = _evaluate(lm, N)
    samples = {s["doc_id"]: s for s in out["samples"][TASK]}
    assert sorted(samples) == list(range(N))
    tokens = dllm_forwards = verifier_forwards = correct = 0
    for i, p in enumerate(problems):  # eval-tiny's per-problem decode (ev.evaluate sums these)
        text, gen, stats = ev.decode(pair, p, policy, seed=i)
        s = samples[i]
        assert s["arguments"][0][0] == p.prompt  # the context is the prompt eval-tiny encodes
        assert s["resps"][0][0] == text, f"problem {i}"
        got = task.extract_answer(text)
        assert s["filtered_resps"][0] == (str(got) if got is not None else "[invalid]")
        assert s["target"] == str(p.answer)
        assert s["exact_match"] == float(got == p.answer)
        tokens, correct = tokens + len(gen), correct + (got == p.answer)
        dllm_forwards += stats["dllm_forwards"]
        verifier_forwards += stats["verifier_forwards"]
    assert out["results"][TASK]["exact_match,final-answer"] == pytest.approx(correct / N)
    summary = lm.summary()[TASK]
    assert summary["answers"] == N
    assert summary["generated_tokens"] == tokens
    assert summary["tokens_per_dllm_forward"] == pytest.approx(tokens / dllm_forwards)
    assert summary["dllm_forwards_per_answer"] * N == dllm_forwards
    assert summary["verifier_forwards_per_answer"] * N == verifier_forwards


def test_eval_tiny_command_gives_the_harness_accuracy(tmp_path):
    """`python -m apd_ext eval-tiny` (its JSON) and the harness agree on accuracy and tokens."""
    js = tmp_path / "e.json"
    r = subprocess.run([sys.executable, "-m", "apd_ext", "eval-tiny", "--num-problems", "6", "--quiet",
                        "--policies", "dllm_fixed:k=4", "--json", str(js)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    ref = json.loads(js.read_text())["results"][0]
    lm = ApdLM(device="cpu", policy="dllm_fixed", k=4)
    out = _evaluate(lm, 6)
    assert out["results"][TASK]["exact_match,final-answer"] == pytest.approx(ref["accuracy"])
    assert lm.summary()[TASK]["generated_tokens"] == ref["generated_tokens"]


def test_batched_requests_give_the_single_answers():
    """batch_size 3 (ragged prompts, a last partial batch) answers as batch 1 does, with sampling on
    (each request keeps its seed: seed + request index)."""
    args = {"temperature": 1.0, "seed": 7, "max_new_tokens": 24}
    lm = ApdLM(device="cpu", batch_size=3, **args)
    batched = _responses(_evaluate(lm, 5, batch_size=3))
    assert lm.stats[TASK]["calls"] == 2  # 3 + 2
    reqs = [SimpleNamespace(args=(p.prompt, {"until": ["<|endoftext|>"], "max_gen_toks": 64, "do_sample": False}),
                            task_name=TASK) for p in task.eval_problems(0, 5)]
    single = dict(enumerate(ApdLM(device="cpu", **args).generate_until(reqs, disable_tqdm=True)))
    assert batched == single
    other_seed = dict(enumerate(ApdLM(device="cpu", **{**args, "seed": 8}).generate_until(reqs, disable_tqdm=True)))
    assert other_seed != single  # the seed reaches the sampler


def test_knobs_reach_generate(pair):
    """Every decoding knob is a model_arg: a spec's knobs give generate's tokens."""
    knobs = {"policy": "apd", "mixture_weight": 0.5, "kv_window": None, "max_lookahead": 8, "top_k": 3,
             "temperature": 0.7, "seed": 3}
    lm = ApdLM(device="cpu", **knobs)
    resp = _responses(_evaluate(lm, 3))
    for i, p in enumerate(task.eval_problems(0, 3)):
        text, _, _ = ev.decode(pair, p, "apd:mixture_weight=0.5,kv_window=none,max_lookahead=8,top_k=3,"
                                        "temperature=0.7", seed=3 + i)
        assert resp[i] == text


# --- end to end: the command line and the GSM8K config ------------------------------------------


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _lm_eval_command() -> str:
    exe = Path(sys.executable).parent / "lm_eval"
    assert exe.exists(), f"no lm_eval command beside {sys.executable}: install the [eval] extra"
    return str(exe)


def test_lm_eval_command_line(tmp_path, pair):
    """`lm_eval --model apd --tasks apd_tiny_arith` from outside the checkout, found through the
    installed package alone (no PYTHONPATH, no --include_path): results and samples written, and
    the answers are eval-tiny's."""
    r = subprocess.run([_lm_eval_command(), "--model", "apd", "--model_args", "policy=dllm_fixed,k=1,threads=1",
                        "--tasks", TASK, "--limit", "3", "--device", "cpu", "--output_path", str(tmp_path / "out"),
                        "--log_samples"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "apd_tiny_arith" in r.stdout and "exact_match" in r.stdout
    assert "tokens per dLLM forward" in r.stderr  # the model's statistics line
    results = list((tmp_path / "out").rglob("results_*.json"))
    samples = list((tmp_path / "out").rglob(f"samples_{TASK}_*.jsonl"))
    assert len(results) == 1 and len(samples) == 1
    doc = json.loads(results[0].read_text())
    rows = [json.loads(line) for line in samples[0].read_text().splitlines()]
    problems = task.eval_problems(0, 3)
    verdicts = []
    for row in rows:
        text, _, _ = ev.decode(pair, problems[row["doc_id"]], "dllm_fixed:k=1", seed=row["doc_id"])
        assert row["resps"][0][0] == text
        verdicts.append(task.extract_answer(text) == problems[row["doc_id"]].answer)
    assert doc["results"][TASK]["exact_match,final-answer"] == pytest.approx(sum(verdicts) / 3)


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _dress(tmp_path) -> tuple[Path, Path]:
    """The tiny pair as Hugging Face checkpoint directories of an instruct pair: its files plus a
    tokenizer_config.json with special tokens and a chat template."""
    dirs = []
    for part in ("dllm", "verifier"):
        d = tmp_path / f"tiny-{part}-instruct"
        shutil.copytree(ASSETS / part, d)
        (d / "tokenizer_config.json").write_text(json.dumps({
            "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "chat_template": CHAT_TEMPLATE}))
        dirs.append(d)
    return dirs[0], dirs[1]


def _gsm8k_yaml(tmp_path, problems) -> Path:
    """lm-eval's own gsm8k task config (the one the GSM8K command runs), its dataset replaced by a
    local JSONL of GSM8K-format records ({question, answer: "...\\n#### N"})."""
    import lm_eval.tasks

    gsm8k = Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"
    assert gsm8k.is_file()
    records = tmp_path / "gsm8k_local.jsonl"
    records.write_text("".join(json.dumps({"question": p.question, "answer": p.solution}) + "\n" for p in problems))
    folder = tmp_path / "tasks"
    folder.mkdir()
    yaml = folder / "gsm8k_local.yaml"
    yaml.write_text(f"include: {gsm8k}\ntask: gsm8k_local\ntag: []\ndataset_path: json\ndataset_name: null\n"
                    f"dataset_kwargs:\n  data_files:\n    train: {records}\n    test: {records}\n")
    return folder


def test_gsm8k_config_on_local_problems_with_a_dressed_pair(tmp_path):
    """The GSM8K pipeline without real weights: lm-eval's gsm8k config (zero-shot, chat template,
    its stop strings and both answer filters) over GSM8K-format records, with the tiny pair as
    Hugging Face directories given as dllm= / verifier=. The model sees the chat-rendered prompt
    and returns generate's answer cut at the first stop string."""
    problems = task.eval_problems(5, 3)
    dllm, verifier = _dress(tmp_path)
    folder = _gsm8k_yaml(tmp_path, problems)
    lm = ApdLM(dllm=str(dllm), verifier=str(verifier), device="cpu", max_new_tokens=64)
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_local"], num_fewshot=0, apply_chat_template=True,
                                  task_manager=TaskManager(include_path=str(folder)), log_samples=True,
                                  verbosity="WARNING")
    res = out["results"]["gsm8k_local"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(res)
    every = out["samples"]["gsm8k_local"]  # one sample per document and filter
    assert sorted(s["filter"] for s in every) == ["flexible-extract"] * 3 + ["strict-match"] * 3
    samples = sorted((s for s in every if s["filter"] == "strict-match"), key=lambda s: s["doc_id"])
    for s, p in zip(samples, problems):
        context, gen_kwargs = s["arguments"][0]
        assert context == lm.tok.render_chat([{"role": "user", "content": f"Question: {p.question}\nAnswer:"}])
        assert gen_kwargs["until"][0] == "Question:"
        ids = lm.tok.encode(context)
        g = generate(lm.dllm, lm.verifier, [ids], max_new_tokens=64, seed=s["doc_id"])
        n = int(g.num_generated[0])
        text = lm.tok.decode(g.sequences[0, len(ids): len(ids) + n].tolist())
        cut = [text.find(stop) for stop in gen_kwargs["until"] if stop in text]
        assert s["resps"][0][0] == (text[: min(cut)] if cut else text)
        assert s["target"] == p.solution


def test_chat_template_stop_token_ends_decoding(tmp_path):
    """An `until` string that is one special token ends decoding like EOS; a multi-token one only
    cuts the text."""
    dllm, verifier = _dress(tmp_path)
    lm = ApdLM(dllm=str(dllm), verifier=str(verifier), device="cpu")
    _, stops, eos = lm._request_config({"until": ["<|pad|>", "Question:"]})
    assert stops == ["<|pad|>", "Question:"]
    assert eos == [1, 0]  # the models' EOS, then <|pad|> (a special token); "Question:" is not one
    _, _, eos = lm._request_config({"until": ["\n\n"]})
    assert eos == [1]
    cfg = json.loads((verifier / "config.json").read_text())
    (verifier / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 0}))  # the models' EOS now differ
    with pytest.raises(HarnessError, match="EOS tokens disagree.*eos_token_id="):
        ApdLM(dllm=str(dllm), verifier=str(verifier), device="cpu")._request_config({})
    lm = ApdLM(dllm=str(dllm), verifier=str(verifier), device="cpu", eos_token_id=1)
    assert lm._request_config({"until": ["<|pad|>"]})[2] == [1, 0]
    assert ApdLM(dllm=str(dllm), verifier=str(verifier), device="cpu", policy="ar")._request_config({})[2] == [1]
    req = SimpleNamespace(args=(task.eval_problems(0, 1)[0].prompt, {"until": ["=", "<|endoftext|>"],
                                                                     "max_gen_toks": 64}), task_name="t")
    text = lm.generate_until([req], disable_tqdm=True)[0]
    assert "=" not in text and len(text) > 0  # the answer's first line is "a+b=c": cut before "="


# --- registration -------------------------------------------------------------------------------


REGISTRY_CHECK = """
import lm_eval.api.registry as r
from lm_eval.tasks import TaskManager
cls = r.get_model("apd")
print(cls.__module__ + "." + cls.__name__, "hf" in r.model_registry, "apd_tiny_arith" in TaskManager().all_tasks)
"""


def test_installed_package_registers_model_and_task(tmp_path):
    """In a fresh interpreter outside the checkout: "apd" and apd_tiny_arith are known to lm_eval
    beside its own models and tasks; APD_EXT_LM_EVAL_HOOK=0 switches the hook off."""
    r = subprocess.run([sys.executable, "-c", REGISTRY_CHECK], cwd=tmp_path, env=_clean_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["apd_ext.harness.model.ApdLM", "True", "True"]
    off = subprocess.run([sys.executable, "-c", REGISTRY_CHECK], cwd=tmp_path, env=_clean_env(APD_EXT_LM_EVAL_HOOK="0"),
                         capture_output=True, text=True, timeout=300)
    assert off.returncode != 0 and "Attempted to load model 'apd'" in off.stderr
    by_import = ("from apd_ext.harness import ApdLM\nimport lm_eval.api.registry as r\n"
                 "print(r.get_model('apd') is ApdLM, 'hf' in r.model_registry)")
    r = subprocess.run([sys.executable, "-c", by_import], cwd=tmp_path, env=_clean_env(APD_EXT_LM_EVAL_HOOK="0"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["True", "True"], r.stderr[-2000:]  # the harness's models too


def test_registry_by_import_and_task_folder():
    assert get_model("apd") is ApdLM
    assert "hf" in model_registry  # importing apd_ext.harness first keeps the harness's own models
    assert (TASKS_DIR / "apd_tiny_arith.yaml").is_file()


def test_wheel_ships_the_hook_and_the_task(tmp_path):
    """A regular (non-editable) wheel carries the .pth at its root, the hook module and the task files."""
    import zipfile

    src = tmp_path / "src"  # a copy: pip builds in the source tree's build/, which must not be the checkout's
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", ".git", "*.so", "__pycache__",
                                                             "*.egg-info", ".golden", ".whl", "bench"))
    env = dict(os.environ, APD_EXT_EXTENSION="0")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(src)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("apd_ext-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"_apd_ext_lm_eval.pth", "_apd_ext_lm_eval.py", "apd_ext/harness/tasks/apd_tiny_arith.yaml",
            "apd_ext/harness/tasks/apd_tiny_arith.jsonl", "apd_ext/harness/model.py"} <= names
    assert zipfile.ZipFile(wheel).read("_apd_ext_lm_eval.pth").decode().strip() == "import _apd_ext_lm_eval"
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Provides-Extra: eval" in text and "lm_eval" in text


# --- bad model_args and requests ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"mixture_wieght": 0.5}, "unknown model_args mixture_wieght"),
    ({"policy": "fast"}, "unknown policy|policy"),
    ({"mixture_weight": 1.5}, "mixture_weight"),
    ({"verifier": str(ASSETS / "verifier")}, "needs dllm= too"),
    ({"dllm": str(ASSETS / "dllm")}, "policy apd runs the verifier"),
    ({"dllm": "/nonexistent/dir", "policy": "dllm_fixed"}, "no such directory"),
    ({"dllm": "/nonexistent/dir", "verifier": "/nonexistent/v"}, "no such directory"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": "big"}, "batch_size"),
    ({"seed": -1}, "seed"),
    ({"threads": 0}, "threads"),
    ({"device": "tpu"}, "device"),
    ({"canvas_bucket": -1}, "canvas_bucket"),
    ({"max_batch_size": "many"}, "max_batch_size"),
    ({"backend": "tpu"}, "backend must be one of"),
    ({"cuda_graphs": "yes"}, "cuda_graphs"),
])
def test_bad_model_args(kwargs, match):
    with pytest.raises(HarnessError, match=match):
        ApdLM(**{"device": "cpu", **kwargs})


def test_bad_requests_and_unsupported_request_types():
    lm = ApdLM(device="cpu")
    with pytest.raises(NotImplementedError, match="loglikelihood requests"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="loglikelihood requests"):
        lm.loglikelihood_rolling([])
    with pytest.raises(HarnessError, match="no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(HarnessError, match="leaves no room"):
        lm.generate_until([SimpleNamespace(args=("Question: x", {"max_gen_toks": 256}), task_name="t")])
    with pytest.raises(HarnessError, match="max_new_tokens"):
        lm.generate_until([SimpleNamespace(args=("Question: x", {"max_gen_toks": 0}), task_name="t")])
    with pytest.raises(HarnessError, match="empty context"):
        lm.generate_until([SimpleNamespace(args=("", {"max_gen_toks": 8}), task_name="t")])
    with pytest.raises(HarnessError, match="until"):
        lm.generate_until([SimpleNamespace(args=("Question: x", {"until": [3]}), task_name="t")])
    assert lm.generate_until([]) == []


def test_generation_kwargs_fill_the_knobs_model_args_leave_out(caplog):
    lm = ApdLM(device="cpu", top_p=0.9)
    cfg, _, _ = lm._request_config({"do_sample": False, "temperature": 0.8})
    assert cfg.temperature == 0.0 and cfg.top_p == 0.9
    cfg, _, _ = lm._request_config({"temperature": 0.8, "top_k": 5, "max_gen_toks": 33})
    assert (cfg.temperature, cfg.top_k, cfg.max_new_tokens) == (0.8, 5, 33)
    cfg, _, _ = lm._request_config({})
    assert cfg == lm.config
    cfg, _, _ = ApdLM(device="cpu")._request_config({"do_sample": True})
    assert cfg.temperature == 1.0
    with caplog.at_level("WARNING", logger="lm_eval.apd_ext"):  # model_args win, with a warning
        cfg, _, _ = ApdLM(device="cpu", temperature=0.5, max_new_tokens=20)._request_config(
            {"do_sample": False, "max_gen_toks": 64, "top_k": 4})
    assert (cfg.temperature, cfg.max_new_tokens, cfg.top_k) == (0.5, 20, 4)
    assert "temperature=0.5 overrides" in caplog.text and "max_new_tokens=20 overrides" in caplog.text


def test_long_context_is_cut_from_the_left(caplog):
    lm = ApdLM(device="cpu")
    text = "Question: " + " ".join(["Tom has 5 coins."] * 60) + "\nAnswer:\n"
    ids = lm.tok.encode(text)
    assert len(ids) > lm.max_length - 64
    with caplog.at_level("WARNING", logger="lm_eval.apd_ext"):
        kept = lm._encode(text, 64)
    assert kept == ids[-(lm.max_length - 64):]
    assert "cut from the left" in caplog.text
    out = lm.generate_until([SimpleNamespace(args=(text, {"max_gen_toks": 64}), task_name="t")], disable_tqdm=True)
    assert isinstance(out[0], str)


def test_hub_id_resolves_from_the_local_cache(tmp_path, monkeypatch):
    """dllm=org/name is looked up through huggingface_hub (offline here: its cache), a missing id
    is one clear error."""
    cache = tmp_path / "hub"
    snap = cache / "models--tiny--pair-dllm" / "snapshots" / ("a" * 40)
    shutil.copytree(ASSETS / "dllm", snap)
    (cache / "models--tiny--pair-dllm" / "refs").mkdir()
    (cache / "models--tiny--pair-dllm" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve_checkpoint("tiny/pair-dllm", "dllm") == snap
    with pytest.raises(HarnessError, match="could not be resolved"):
        resolve_checkpoint("tiny/absent", "dllm")
    with pytest.raises(HarnessError, match="not a directory"):
        resolve_checkpoint(str(ASSETS / "dllm" / "config.json"), "dllm")


def test_canvas_is_bucketed_when_the_step_is_specialised(monkeypatch, pair):
    """With compile (or CUDA graphs) the canvas is rounded up to canvas_bucket so that prompts of
    different lengths share one compiled step / graph; the answers stay eval-tiny's. Eager: exact."""
    import apd_ext.harness.model as hm

    seen = []

    def spy(*args, canvas_length=None, compile=False, **kw):  # records, then decodes eagerly
        seen.append(canvas_length)
        return generate(*args, canvas_length=canvas_length, **kw)

    monkeypatch.setattr(hm, "generate", spy)
    problems = task.eval_problems(0, 3)
    reqs = [SimpleNamespace(args=(p.prompt, {"max_gen_toks": 64}), task_name="t") for p in problems]
    lm = ApdLM(device="cpu", compile=True, canvas_bucket=32)
    texts = lm.generate_until(reqs, disable_tqdm=True)
    lens = [len(pair.tok.encode(p.prompt)) + 64 for p in problems]
    assert seen == [min(lm.max_length, -(-n // 32) * 32) for n in sorted(lens, reverse=True)]
    assert texts == [ev.decode(pair, p, "apd", seed=i)[0] for i, p in enumerate(problems)]
    seen.clear()
    ApdLM(device="cpu").generate_until(reqs[:1], disable_tqdm=True)
    ApdLM(device="cpu", compile=True, canvas_bucket=0).generate_until(reqs[:1], disable_tqdm=True)
    assert seen == [None, None]


def test_dllm_only_policy_runs_without_a_verifier(pair):
    """dllm= alone (no verifier: what a LLaDA dLLM needs) for a dLLM-only policy gives the answers
    of the pair's run, which never calls its verifier."""
    problems = task.eval_problems(0, 3)
    lm = ApdLM(dllm=str(ASSETS / "dllm"), device="cpu", policy="dllm_fixed", k=2)
    assert lm.verifier is None
    reqs = [SimpleNamespace(args=(p.prompt, {"max_gen_toks": 64}), task_name="t") for p in problems]
    texts = lm.generate_until(reqs, disable_tqdm=True)
    assert texts == [ev.decode(pair, p, "dllm_fixed:k=2", seed=i)[0] for i, p in enumerate(problems)]
    assert lm.summary()["t"]["verifier_forwards_per_answer"] == 0


def test_harness_on_the_block_model_equals_eval_tiny():
    """The bundled block-diffusion dLLM (Fast-dLLM v2 layout) through the harness, by its directories,
    with its own decoding: answers and forwards equal eval-tiny --block's, problem by problem (APD on
    it runs through eval-tiny in test_cli and through the engine in test_serve_engine)."""
    policy, model_args = "fast_dllm_v2", {"policy": "fast_dllm_v2"}
    from apd_ext.tiny import BLOCK_DLLM_DIR, VERIFIER_DIR

    block = ev.load_pair(block=True)
    n = 4
    lm = ApdLM(device="cpu", dllm=str(BLOCK_DLLM_DIR), verifier=str(VERIFIER_DIR), **model_args)
    assert lm.dllm.block_size == block.dllm.block_size
    samples = {s["doc_id"]: s for s in _evaluate(lm, n)["samples"][TASK]}
    forwards = 0
    for i, p in enumerate(task.eval_problems(0, n)):
        text, gen, stats = ev.decode(block, p, policy, seed=i)
        assert samples[i]["resps"][0][0] == text, f"problem {i}"
        forwards += stats["dllm_forwards"]
    assert lm.summary()[TASK]["dllm_forwards_per_answer"] * n == forwards
