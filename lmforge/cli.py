"""`lmforge` command line: train, generate, presets. Dotted overrides set any preset field."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from lmforge.config import PresetError, list_presets, load_preset, parse_override_value

EXIT_BAD_INPUT = 2


def parse_dotted_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`--train.lr 3e-4 --model.n_layer=6` -> {"train.lr": 0.0003, "model.n_layer": 6}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise PresetError(f"unrecognised argument {arg!r}; preset overrides look like --section.key value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise PresetError(f"override {arg} needs a value")
            key, value = arg[2:], args[i + 1]
            i += 2
        out[key] = parse_override_value(value)
    return out


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"lmforge: error: {message}", file=sys.stderr)
    return code


def cmd_train(ns: argparse.Namespace, extra: list[str]) -> int:
    from lmforge.data import DataError
    from lmforge.training.checkpoint import CheckpointError
    from lmforge.training.run_dir import RunDirError
    from lmforge.training.trainer import train

    try:
        preset = load_preset(ns.preset, parse_dotted_overrides(extra))
    except PresetError as err:
        return _fail(f"invalid preset {ns.preset!r}:\n  " + str(err).replace("\n", "\n  "))
    try:
        result = train(preset, ns.run_dir)
    except (DataError, RunDirError, CheckpointError) as err:
        return _fail(str(err))
    if int(os.environ.get("RANK", "0")) == 0:
        val = result.last_val.get("val_loss")
        print(
            f"done: {result.steps} steps, {result.tokens:,} tokens, final loss {result.final_loss}, "
            f"val loss {val}, run dir {result.run_dir} ({result.stop_reason})"
        )
    return 0


def cmd_generate(ns: argparse.Namespace, extra: list[str]) -> int:
    import torch

    from lmforge.generation import SamplingConfig, generate
    from lmforge.inference import load_run
    from lmforge.training.checkpoint import CheckpointError

    if extra:
        return _fail(f"unrecognised arguments: {' '.join(extra)}")
    try:
        run = load_run(ns.run_dir, ns.slot)
    except (CheckpointError, PresetError) as err:
        return _fail(str(err))
    tok = run.tokenizer
    ids = tok.encode(ns.prompt) or [tok.eos_id or 0]
    sampling = SamplingConfig(
        temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p, min_p=ns.min_p,
        repetition_penalty=ns.repetition_penalty, no_repeat_ngram_size=ns.no_repeat_ngram_size, seed=ns.seed,
    )
    new_ids: list[int] = []
    printed = ""
    sys.stdout.write(ns.prompt)

    def stream(batch_index: int, token_id: int) -> None:
        nonlocal printed
        new_ids.append(int(token_id))
        text = tok.decode(new_ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text

    stop_ids = [tok.eos_id] if tok.eos_id is not None else None
    with torch.inference_mode():
        generate(run.model, [ids], ns.max_new_tokens, sampling, stop_ids=stop_ids, use_cache=not ns.no_cache, stream_callback=stream)
    sys.stdout.write(tok.decode(new_ids)[len(printed):] + "\n")
    return 0


def cmd_presets(ns: argparse.Namespace, extra: list[str]) -> int:
    for path in list_presets():
        print(path.stem)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Train and use language models from presets.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a preset (resumes from its run dir)",
                       description="Train PRESET (a path or a name in configs/). Any preset field can be overridden: --train.lr 3e-4")
    t.add_argument("preset")
    t.add_argument("--run-dir", default=None, help="default: runs/<preset name>")
    t.set_defaults(func=cmd_train)
    g = sub.add_parser("generate", help="sample text from a trained run")
    g.add_argument("--run-dir", required=True)
    g.add_argument("--prompt", default="\n")
    g.add_argument("--slot", default=None, help="checkpoint slot (lm_current, lm_prev, lm_prev2, best); default: newest loadable")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, help="ban repeating any n-gram of this size; 0 = off")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--no-cache", action="store_true", help="recompute the full context each step (for checking the KV cache)")
    g.set_defaults(func=cmd_generate)
    p = sub.add_parser("presets", help="list the presets in configs/")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    try:
        return ns.func(ns, extra)
    except PresetError as err:
        return _fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
