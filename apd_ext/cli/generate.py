"""`generate`: decode a prompt, streamed, with the bundled tiny pair (a question of its task; default:
a held-out problem) or with --dllm / --verifier checkpoint directories (Dream + Qwen2/Llama)."""

from __future__ import annotations

import sys

import torch

from apd_ext.cli import common, parallel
from apd_ext.cli.common import CliError, nonneg_int, positive_int
from apd_ext.cli.demo import add_tiny_source, tiny_setup
from apd_ext.decode.config import DecodeConfig

HELP = "decode a prompt, streaming (bundled pair, or --dllm/--verifier)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help=HELP, description=HELP)
    add_tiny_source(p)
    common.add_knob_flags(p, f"64 with the bundled pair (its answer region), else {DecodeConfig().max_new_tokens}")
    p.add_argument("--prompt", default=None, help="the text to continue (bundled pair: a question; default: a "
                   "held-out problem)")
    p.add_argument("--problem", type=nonneg_int, default=0, help="without --prompt: index in the held-out set")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the same prompt's one-token-per-step (and verifier-alone) runs")
    c = p.add_argument_group("checkpoints (instead of the bundled pair)")
    c.add_argument("--dllm", default=None, help="a Dream or LLaDA checkpoint directory (Hugging Face layout)")
    c.add_argument("--verifier", default=None, help="a Qwen2/Llama checkpoint directory sharing its tokenizer (not "
                   "needed by the dLLM-only policies dllm_fixed, threshold, diffusion, e.g. with LLaDA)")
    c.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: the checkpoints' own")
    c.add_argument("--vocab-size", type=positive_int, default=None,
                   help="the shared vocabulary when the models' differ (151936 for Dream + Qwen2.5)")
    c.add_argument("--system", default=None, help="a system message for the chat template")
    c.add_argument("--no-chat-template", action="store_true", help="feed --prompt as is")


def run(args) -> None:
    common.check_text(args.prompt, "--prompt")
    common.check_text(args.system, "--system")
    if args.dllm or args.verifier:
        run_checkpoints(args)
    else:
        run_tiny(args)


def run_tiny(args) -> None:
    from apd_ext.cli.compare import decode_and_compare
    from apd_ext.tiny import task

    for flag in ("dtype", "vocab_size", "system"):
        if getattr(args, flag) is not None:
            raise CliError(f"--{flag.replace('_', '-')} goes with --dllm / --verifier checkpoints")
    load, cfg, _ = tiny_setup(args)
    pair = load()
    problem = None
    if args.prompt is None:
        problem = task.eval_problems(args.seed, args.problem + 1)[args.problem]
        prompt = problem.prompt
    else:
        prompt = task.format_prompt(args.prompt)
    sys.stdout.write(prompt)
    text = decode_and_compare(args, cfg, pair.dllm, pair.verifier, pair.tok, pair.tok.encode(prompt),
                              compare=() if args.no_compare else ("dllm_fixed", "ar"), answer_of=task.extract_answer)
    if problem is not None:
        got = task.extract_answer(text)
        print(f"expected {problem.answer}, got {got}: {'correct' if got == problem.answer else 'wrong'}")


def _shared_vocab(dllm_dir, verifier_dir) -> int:
    """The vocabulary both checkpoints' heads have (without --vocab-size they must agree)."""
    from apd_ext.models.config import ModelConfig

    d, v = (ModelConfig.from_pretrained(p).vocab_size for p in (dllm_dir, verifier_dir))
    if d != v:
        raise CliError(f"the dLLM's vocabulary ({d}) and the verifier's ({v}) differ: pass --vocab-size, the size "
                       f"of the tokenizer they share (151936 for Dream + Qwen2.5)")
    return d


def run_checkpoints(args) -> None:
    """--dllm / --verifier: the pair's tokenizer (apd_ext.tokenizer.pair_tokenizer), the chat
    template, a short warm-up."""
    from apd_ext.cli.compare import decode_and_compare
    from apd_ext.models.runners import DllmRunner, VerifierRunner
    from apd_ext.tokenizer import pair_tokenizer

    from apd_ext.decode.steps import STEPS
    from apd_ext.models.config import ModelConfig
    from apd_ext.tokenizer import HFTokenizer

    cfg = common.config_from_args(args, DecodeConfig())
    dllm_only = not STEPS[cfg.policy].verifier_forwards
    if not args.dllm or not (args.verifier or dllm_only):
        raise CliError("--dllm and --verifier go together (--dllm alone only with a dLLM-only --policy: dllm_fixed, "
                       "threshold, diffusion)")
    dllm_dir = common.check_dir(args.dllm, "--dllm")
    verifier_dir = common.check_dir(args.verifier, "--verifier") if args.verifier else None
    if args.prompt is None:
        raise CliError("--prompt is needed with --dllm / --verifier")
    device = common.resolve_device(args.device, "cuda" if torch.cuda.is_available() else "cpu")
    common.set_threads(args, None)
    # the pair's tokenizer: ValueError when they number tokens differently
    tok = pair_tokenizer(dllm_dir, verifier_dir) if verifier_dir else HFTokenizer.from_pretrained(dllm_dir)
    dtype = DTYPES.get(args.dtype)
    tp = parallel.setup(args, device)
    vocab = args.vocab_size or (_shared_vocab(dllm_dir, verifier_dir) if verifier_dir else
                                ModelConfig.from_pretrained(dllm_dir).vocab_size)
    d_kw, v_kw = parallel.load_kwargs(args, tp, vocab)
    device = tp.device if tp else device
    dllm = DllmRunner.from_pretrained(dllm_dir, device=device, dtype=dtype, **d_kw)
    verifier = VerifierRunner.from_pretrained(verifier_dir, device=device, dtype=dtype, **v_kw) if verifier_dir else None
    prompt = args.prompt
    if tok.chat_template is not None and not args.no_chat_template:
        prompt = tok.apply_chat_template(prompt, system=args.system)
    sys.stdout.write(prompt)
    extra = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    # a short warm-up: with a large model the full-length one would double the run
    decode_and_compare(args, cfg, dllm, verifier, tok, tok.encode(prompt),
                       compare=() if args.no_compare else ("dllm_fixed",),
                       warmup_tokens=min(8, cfg.max_new_tokens), **extra)
