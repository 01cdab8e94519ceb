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
    if args.dllm is not None or args.verifier is not None:
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
    text = decode_and_compare(args, cfg, pair, pair.tokenizer.encode(prompt),
                              compare=() if args.no_compare else ("dllm_fixed", "ar"), answer_of=task.extract_answer)
    if problem is not None:
        got = task.extract_answer(text)
        print(f"expected {problem.answer}, got {got}: {'correct' if got == problem.answer else 'wrong'}")


def run_checkpoints(args) -> None:
    """--dllm / --verifier: the pair through apd_ext.loading.load_pair (its tokenizer, shared
    vocabulary and EOS), the dLLM directory's chat template, a short warm-up."""
    from apd_ext.cli.compare import decode_and_compare
    from apd_ext.loading import DLLM_ONLY, load_pair

    cfg = common.config_from_args(args, DecodeConfig())
    if args.dllm is None or (args.verifier is None and cfg.policy not in DLLM_ONLY):
        raise CliError(f"--dllm and --verifier go together (--dllm alone only with a dLLM-only --policy: "
                       f"{', '.join(DLLM_ONLY)})")
    dllm_dir = common.check_dir(args.dllm, "--dllm")
    verifier_dir = common.check_dir(args.verifier, "--verifier") if args.verifier is not None else None
    if args.prompt is None:
        raise CliError("--prompt is needed with --dllm / --verifier")
    device = common.resolve_device(args.device, "cuda" if torch.cuda.is_available() else "cpu")
    common.set_threads(args, None)
    tp = parallel.setup(args, device)
    pair = load_pair(dllm_dir, verifier_dir, policy=cfg.policy, device=tp.device if tp else device,
                     dtype=DTYPES.get(args.dtype), vocab_size=args.vocab_size, tp=tp,
                     replicate=parallel.VERIFIER_MODES[args.verifier_tp])
    prompt = args.prompt
    if pair.tokenizer.chat_template is not None and not args.no_chat_template:
        system = [{"role": "system", "content": args.system}] if args.system is not None else []
        prompt = pair.chat_prompt(system + [{"role": "user", "content": prompt}])
    sys.stdout.write(prompt)
    # a short warm-up: with a large model the full-length one would double the run
    decode_and_compare(args, cfg, pair, pair.tokenizer.encode(prompt),
                       compare=() if args.no_compare else ("dllm_fixed",), warmup_tokens=min(8, cfg.max_new_tokens))
