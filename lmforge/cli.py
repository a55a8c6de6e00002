"""`lmforge` command line: train, compare, generate, chat, eval, needle, export, data, plot, runs, presets.

Dotted overrides (`--train.lr 3e-4`) set any preset field."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lmforge.code_policy import code_policy
from lmforge.config import Preset, PresetError, list_presets, load_preset, parse_override_value

if TYPE_CHECKING:  # heavy imports stay inside the commands that need them
    from lmforge.generation import SamplingConfig
    from lmforge.inference import LoadedRun

EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 74  # sysexits' EX_IOERR: the disk filled up or turned read-only; the run resumes once it is fixed
EXIT_PEER_LOST = 75  # sysexits' EX_TEMPFAIL: another process of the run died; a restart resumes


def parse_dotted_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`--train.lr 3e-4 --model.n_layer=6` -> {"train.lr": 0.0003, "model.n_layer": 6}; a whole section by its name
    (`--layer_swaps '[{"name": "fp8"}]'`, `--stackwise null`) replaces that section."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0][2:]
        if not arg.startswith("--") or ("." not in name and name not in Preset.model_fields):
            raise PresetError(f"unrecognised argument {arg!r}; preset overrides look like --section.key value "
                              f"(or a whole section: --{' | --'.join(sorted(Preset.model_fields))} value)")
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


class CommandError(Exception):
    """A user-facing failure of a subcommand: printed as one line, exit code 2."""


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise CommandError(f"unrecognised arguments: {' '.join(extra)}")


def _load_run(run_dir: str, slot: str | None = None):
    """A trained run for generate/chat/eval/export, or a CommandError that says why not."""
    from lmforge.inference import load_run
    from lmforge.training.checkpoint import CheckpointError

    try:
        return load_run(run_dir, slot)
    except (CheckpointError, PresetError) as err:
        raise CommandError(str(err)) from None


def cmd_train(ns: argparse.Namespace, extra: list[str]) -> int:
    from lmforge.data import DataError
    from lmforge.training.checkpoint import DISK_ERRNOS, CheckpointError, CheckpointWriteError, write_failure
    from lmforge.training.run_dir import RunDirError
    from lmforge.training.run_dir import default_run_dir as preset_run_dir
    from lmforge.runtime import is_peer_failure
    from lmforge.training.trainer import train

    try:
        preset = load_preset(ns.preset, parse_dotted_overrides(extra), trust_code=ns.trust_code)
    except PresetError as err:
        return _fail(f"invalid preset {ns.preset!r}:\n  " + str(err).replace("\n", "\n  "))
    try:
        result = train(preset, ns.run_dir)
    except PresetError as err:  # found once the data is known (the vocabulary), e.g. a model too big for the device
        return _fail(f"invalid preset {ns.preset!r}:\n  " + str(err).replace("\n", "\n  "))
    except (DataError, RunDirError, CheckpointError) as err:
        return _fail(str(err))
    except CheckpointWriteError as err:
        return _fail(str(err), EXIT_WRITE_FAILED) if int(os.environ.get("RANK", "0")) == 0 else EXIT_WRITE_FAILED
    except RuntimeError as err:
        if not is_peer_failure(err):
            raise
        rank = os.environ.get("RANK", "0")
        first = str(err).strip().splitlines()[0][:300]
        return _fail(f"process {rank} lost another process of this run ({first}); the checkpoints are whole: restart with "
                     f"the same number of processes to resume from the newest one", EXIT_PEER_LOST)
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        target = Path(err.filename) if err.filename else Path(ns.run_dir) if ns.run_dir else preset_run_dir(preset)
        return _fail(str(write_failure(err, target, "to")), EXIT_WRITE_FAILED)
    if int(os.environ.get("RANK", "0")) == 0:
        val = result.last_val.get("val_loss")
        print(
            f"done: {result.steps} steps, {result.tokens:,} tokens, final loss {result.final_loss}, "
            f"val loss {val}, run dir {result.run_dir} ({result.stop_reason})"
        )
    return 0


def cmd_generate(ns: argparse.Namespace, extra: list[str]) -> int:
    import torch

    from lmforge.generation import TextStreamer, generate
    from lmforge.objectives.masked import MaskDiffusionConfig
    from lmforge.registry import OBJECTIVES

    _no_extra(extra)
    run = _load_run(ns.run_dir, ns.slot)
    tok = run.tokenizer
    ids = tok.encode(ns.prompt) or [tok.eos_id or 0]
    if isinstance(run.objective, MaskDiffusionConfig):
        return _generate_diffusion(ns, run, ids)
    if not OBJECTIVES.get(run.objective.name).left_to_right or not run.causal:
        why = f"objective {run.objective.name!r}" if not OBJECTIVES.get(run.objective.name).left_to_right else "model.causal false"
        raise CommandError(f"run {ns.run_dir} ({run.slot}) is a bidirectional model ({why}), not sampled token by token: every "
                           "position reads the ones after it (a mask_diffusion run is sampled by diffusion)")
    sampling = _sampling(ns)
    stops = _stops(ns)
    sys.stdout.write(ns.prompt)
    streamer = TextStreamer(tok.decode, _write_flush, stops)

    def stream(batch_index: int, token_id: int) -> None:
        streamer.feed(token_id)

    stop_ids = [tok.eos_id] if tok.eos_id is not None else None
    if ns.rerank is not None:
        return _generate_reranked(ns, run, ids, sampling, stop_ids)
    if ns.draft_run_dir is not None:
        return _generate_speculative(ns, run, ids, sampling, stop_ids, stream, streamer.finish)
    with torch.inference_mode():
        generate(run.model, [ids], ns.max_new_tokens, sampling, stop_ids=stop_ids, use_cache=not ns.no_cache,
                 stream_callback=stream, stop_strings=stops, decode=tok.decode)
    streamer.finish()
    sys.stdout.write("\n")
    return 0


def _generate_reranked(ns: argparse.Namespace, run: LoadedRun, ids: list[int], sampling, stop_ids: list[int] | None) -> int:
    """`generate --rerank value|nll`: --candidates samples, the best printed; every candidate's score goes to stderr."""
    from lmforge.generation.rerank import rerank_generate
    from lmforge.generation.stop import trim_at_stop

    try:
        result = rerank_generate(run.model, ids, ns.max_new_tokens, ns.candidates, ns.rerank, sampling, stop_ids)
    except ValueError as err:
        raise CommandError(f"run {ns.run_dir}: {err}") from None
    stops = _stops(ns)
    for i, (cand, score) in enumerate(zip(result.candidates, result.scores)):
        chosen = "*" if cand is result.best else " "
        print(f"{chosen} candidate {i}: {ns.rerank} score {score:.4f}", file=sys.stderr)
    sys.stdout.write(trim_at_stop(run.tokenizer.decode(result.best), stops) + "\n")
    return 0


def _generate_diffusion(ns: argparse.Namespace, run: LoadedRun, ids: list[int]) -> int:
    """A mask_diffusion run: --max-new-tokens masks after the prompt, unmasked in --steps (per --block-size)."""
    from lmforge.generation.diffusion import DiffusionSampling, diffusion_generate, token_entropy

    room = run.preset.model.block_size - len(ids)
    if ns.max_new_tokens > room:
        raise CommandError(f"a diffusion sample is one canvas: prompt ({len(ids)}) + --max-new-tokens ({ns.max_new_tokens}) "
                           f"must fit the model's block_size ({run.preset.model.block_size})")
    cfg = DiffusionSampling(steps=ns.steps, block_size=ns.block_size, remasking=ns.remasking,
                            temperature=ns.temperature, seed=ns.seed)
    tokens = diffusion_generate(run.model, ids, ns.max_new_tokens, cfg)
    sys.stdout.write(ns.prompt + run.tokenizer.decode(tokens) + "\n")
    print(f"diffusion: {cfg.steps} steps, {cfg.remasking} remasking, blocks of {cfg.block_size or ns.max_new_tokens}; "
          f"token entropy {token_entropy(tokens):.2f} bits over {len(tokens)} tokens", file=sys.stderr)
    return 0


def _sampling(ns: argparse.Namespace) -> SamplingConfig:
    from lmforge.generation import SamplingConfig

    return SamplingConfig(
        temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p, min_p=ns.min_p,
        repetition_penalty=ns.repetition_penalty, no_repeat_ngram_size=ns.no_repeat_ngram_size, seed=ns.seed,
        utf8=ns.utf8,
    )


def _stops(ns: argparse.Namespace) -> list[str]:
    """The --stop strings given, else the subcommand's default, with shell-typed escapes turned into characters."""
    return [_unescape(s) for s in (ns.stop if ns.stop is not None else ns.stop_default)]


def _unescape(text: str) -> str:
    """`--stop '\\n\\n'` as typed in a shell -> two newlines; other characters pass through unchanged."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _write_flush(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _generate_speculative(
    ns: argparse.Namespace,
    run: LoadedRun,
    ids: list[int],
    sampling: SamplingConfig,
    stop_ids: list[int] | None,
    stream: Callable[[int, int], None],
    finish: Callable[[], str],
) -> int:
    """`generate --draft-run-dir`: the draft run proposes --draft-k tokens per target forward; stats go to stderr.

    Stop strings cut the printed text but do not end decoding early here."""
    from lmforge.generation import speculative_generate
    from lmforge.inference import load_run
    from lmforge.training.checkpoint import CheckpointError

    try:
        draft = load_run(ns.draft_run_dir)
    except (CheckpointError, PresetError) as err:
        return _fail(f"draft run: {err}")
    if draft.tokenizer.vocab_size != run.tokenizer.vocab_size or draft.tokenizer.encode(ns.prompt) != ids:
        return _fail(f"the draft run {ns.draft_run_dir} has a different tokenizer than {ns.run_dir}")
    try:
        result = speculative_generate(
            run.model, draft.model, ids, ns.max_new_tokens, k=ns.draft_k, sampling=sampling, stop_ids=stop_ids,
            stream_callback=lambda token: stream(0, token),
        )
    except ValueError as err:
        return _fail(str(err))
    finish()
    sys.stdout.write("\n")
    print(f"speculative: {result.accepted}/{result.proposed} draft tokens accepted "
          f"({result.acceptance_rate:.1%}), {result.rounds} target forwards for {len(result.tokens)} tokens", file=sys.stderr)
    return 0


def cmd_chat(ns: argparse.Namespace, extra: list[str]) -> int:
    from lmforge.generation.chat import COMMANDS, chat_loop

    _no_extra(extra)
    run = _load_run(ns.run_dir, ns.slot)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {ns.run_dir} ({run.slot}, step {run.step}); {COMMANDS}", file=sys.stderr)
    chat_loop(run.model, run.tokenizer, sys.stdin, _write_flush, _sampling(ns), ns.max_new_tokens, _stops(ns),
              prompt="> " if interactive else "")
    return 0


def cmd_eval(ns: argparse.Namespace, extra: list[str]) -> int:
    import json

    from lmforge.data import DataError
    from lmforge.evaluation.run_eval import evaluate_run
    from lmforge.training.checkpoint import CheckpointError

    _no_extra(extra)
    try:
        result = evaluate_run(ns.run_dir, ns.slot, ns.data, ns.batches)
    except (CheckpointError, DataError, ValueError) as err:
        return _fail(str(err))
    print(json.dumps(result, indent=2))
    return 0


def cmd_needle(ns: argparse.Namespace, extra: list[str]) -> int:
    import json

    from lmforge.evaluation.needle import lmforge_completer, run_needle, save_heatmap
    from lmforge.inference import load_run
    from lmforge.training.checkpoint import CheckpointError

    _no_extra(extra)
    try:
        run = load_run(ns.run_dir, ns.slot)
        filler = Path(ns.filler).read_text(encoding="utf-8", errors="replace")
        lengths = [int(x) for x in ns.lengths.split(",")]
        depths = [float(x) for x in ns.depths.split(",")]
        result = run_needle(lmforge_completer(run.model, run.tokenizer), filler, lengths, depths, ns.trials, ns.seed)
    except (CheckpointError, OSError, ValueError) as err:
        return _fail(str(err))
    out = Path(ns.run_dir) / f"needle_{run.slot}"
    out.with_suffix(".json").write_text(json.dumps({"slot": run.slot, "step": run.step, "filler": ns.filler, **result.to_dict()}, indent=2) + "\n")
    print(result.table())
    try:
        save_heatmap(result, out.with_suffix(".png"))
    except ImportError:
        print("(no heatmap: matplotlib is not installed)", file=sys.stderr)
    return 0


def cmd_export(ns: argparse.Namespace, extra: list[str]) -> int:

    _no_extra(extra)
    run = _load_run(ns.run_dir, ns.slot)
    from lmforge.quant.qlora import adapter_layers, merge_adapters

    model, preset = run.model, run.preset
    if ns.format != "ternary" and adapter_layers(model):  # QLoRA: export the merged fp32 weights as a plain model
        model = merge_adapters(model)
        preset = preset.model_copy(update={"layer_swaps": [s for s in preset.layer_swaps if s.name != "nf4_lora"]})
    if ns.format == "safetensors":
        from lmforge.export import export_safetensors

        export_safetensors(model, preset, run.tokenizer, ns.out)
        print(f"exported {run.slot} (step {run.step}) to {ns.out}: model.safetensors, preset.json, tokenizer")
        return 0
    if ns.format == "ternary":
        from lmforge.export.ternary_export import WEIGHTS_FILE, export_ternary

        try:
            sizes = export_ternary(run.model, run.preset, run.tokenizer, ns.out, ns.rest_dtype)
        except ValueError as err:
            return _fail(str(err))
        print(f"exported {run.slot} (step {run.step}) to {ns.out}: {WEIGHTS_FILE} ({sizes['file_bytes']:,} bytes; "
              f"ternary layers {sizes['ternary_ratio_vs_fp16']:.2f}x, whole model {sizes['model_ratio_vs_fp16']:.2f}x "
              f"smaller than fp16), preset.json, tokenizer")
        return 0
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return _fail("--format hf needs transformers: pip install 'lmforge[hf_export]'")
    from lmforge.export.hf import ExportError, export_hf

    try:
        what = export_hf(model, run.tokenizer, ns.out)
    except ExportError as err:
        return _fail(str(err))
    print(f"exported {run.slot} (step {run.step}) to {ns.out}: {what}")
    return 0


def cmd_data(ns: argparse.Namespace, extra: list[str]) -> int:
    from lmforge.data import DataError
    from lmforge.data.prepare import format_table, inspect, prepare

    try:
        with code_policy("skip"):  # reading data never runs the objective
            preset = load_preset(ns.preset, parse_dotted_overrides(extra))
    except PresetError as err:
        return _fail(f"invalid preset {ns.preset!r}:\n  " + str(err).replace("\n", "\n  "))
    try:
        if ns.data_command == "prepare":
            out = Path(ns.out or Path("data") / (preset.name or Path(ns.preset).stem))
            report = prepare(preset.data, out)
            print(f"wrote {out / 'train.bin'} and {out / 'val.bin'} (+ .json sidecars and the tokenizer)")
        else:
            report = inspect(preset.data)
    except DataError as err:
        return _fail(str(err))
    format_table(report)
    return 0


def cmd_compare(ns: argparse.Namespace, extra: list[str]) -> int:
    from lmforge.compare import load_spec, recipe_names, run_compare, spec_from_presets
    from lmforge.compare.spec import BUDGET_KINDS, Budget

    overrides = parse_dotted_overrides(extra)
    seeds = _seed_list(ns.seeds) if ns.seeds else None
    if ns.budget is not None and ns.budget[0] not in BUDGET_KINDS:
        raise CommandError(f"--budget: kind {ns.budget[0]!r} is not one of {', '.join(BUDGET_KINDS)}")
    try:
        value = float(ns.budget[1]) if ns.budget else None
    except ValueError:
        raise CommandError(f"--budget: {ns.budget[1]!r} is not a number") from None
    if ns.recipe:
        if ns.presets:
            raise CommandError("give presets or --recipe, not both")
        spec = load_spec(ns.recipe)
        update = {"overrides": {**spec.overrides, **overrides}}
        if seeds:
            update["seeds"] = seeds
        if ns.budget:
            update["budget"] = Budget(kind=ns.budget[0], value=value)
        spec = spec.model_copy(update=update)
    elif len(ns.presets) >= 1:
        spec = spec_from_presets(ns.presets, ns.budget[0] if ns.budget else None, value, seeds or [1337], overrides)
    else:
        raise CommandError(f"name presets to compare, or --recipe one of: {', '.join(recipe_names())}")
    out = Path(ns.out) if ns.out else Path("runs") / "compare" / spec.name
    result = run_compare(spec, out, trust_code=ns.trust_code)
    print(result.table)
    print(f"\nwrote {', '.join(str(p) for p in result.files.values())}")
    if result.interrupted:
        print(f"lmforge: {result.interrupted}", file=sys.stderr)
        return 130
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"--seeds: {text!r} is not a comma-separated list of integers") from None


def cmd_plot(ns: argparse.Namespace, extra: list[str]) -> int:
    from lmforge.compare.plots import plot_run

    _no_extra(extra)
    run_dir = Path(ns.run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise CommandError(f"{run_dir} has no metrics.jsonl (is it a run dir?)")
    try:
        out = plot_run(run_dir, Path(ns.out) if ns.out else run_dir / "plots.png")
    except (ImportError, ValueError) as err:
        raise CommandError(str(err)) from None
    print(f"wrote {out}")
    return 0


def cmd_runs(ns: argparse.Namespace, extra: list[str]) -> int:
    from lmforge.compare.run_summary import list_runs, summarize_run

    _no_extra(extra)
    root = Path(ns.dir)
    if not root.exists():
        raise CommandError(f"{root} does not exist")
    dirs = list_runs(root)
    if not dirs:
        print(f"no runs under {root}")
        return 0
    rows = []
    for d in dirs:
        s = summarize_run(d, with_size=False)
        best = f"{s.best_val_loss:.4f}" if s.best_val_loss is not None else "-"
        speed = f"{s.tokens_per_sec:,.0f}" if s.tokens_per_sec is not None else "-"
        rows.append((str(d.relative_to(root)) if d != root else str(d), s.preset or "?", str(s.steps), best, speed, s.status))
    head = ("run", "preset", "steps", "best val", "tokens/s", "status")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return 0


def cmd_presets(ns: argparse.Namespace, extra: list[str]) -> int:
    """Each preset's name and the first sentence of its description."""
    from lmforge.config import preset_description

    paths = list_presets()
    width = max((len(p.stem) for p in paths), default=0)
    for path in paths:
        print(f"{path.stem.ljust(width)}  {preset_description(path)}".rstrip())
    return 0


def _add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int, stop: list[str]) -> None:
    """Options shared by `generate` and `chat`."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0, help="ban repeating any n-gram of this size; 0 = off")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--utf8", action="store_true", help="byte-level models: only sample bytes that keep the text valid UTF-8")
    parser.add_argument("--stop", action="append", default=None,
                        help=f"end the text at this string (repeatable; backslash escapes like \\n work); default: {' '.join(stop) or 'none'}")
    parser.set_defaults(stop_default=stop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Train and use language models from presets.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a preset (resumes from its run dir)",
                       description="Train PRESET (a path or a name in configs/). Any preset field can be overridden: --train.lr 3e-4")
    t.add_argument("preset")
    t.add_argument("--run-dir", default=None, help="default: runs/<preset name>")
    t.add_argument("--trust-code", action="store_true",
                   help="let the preset import the Python it names (objective 'python'), as transformers' trust_remote_code")
    t.set_defaults(func=cmd_train)
    g = sub.add_parser("generate", help="sample text from a trained run")
    g.add_argument("--run-dir", required=True)
    g.add_argument("--prompt", default="\n")
    g.add_argument("--slot", default=None, help="checkpoint slot (lm_current, lm_prev, lm_prev2, best); default: newest loadable")
    _add_sampling_args(g, max_new_tokens=200, stop=[])
    g.add_argument("--no-cache", action="store_true", help="recompute the full context each step (for checking the KV cache)")
    g.add_argument("--draft-run-dir", default=None, help="speculative decoding: a smaller run with the same tokenizer proposes tokens")
    g.add_argument("--draft-k", type=int, default=4, help="tokens the draft proposes per target forward")
    g.add_argument("--rerank", choices=["value", "nll"], default=None,
                   help="sample --candidates continuations and print the one the value head (a run trained with "
                        "auxiliary.enable_value) expects to continue most easily, or the one of lowest own NLL; off by default")
    g.add_argument("--candidates", type=int, default=4, help="--rerank: continuations sampled per prompt")
    g.add_argument("--steps", type=int, default=64, help="mask_diffusion runs: denoising steps (split over the blocks)")
    g.add_argument("--block-size", type=int, default=None, help="mask_diffusion runs: semi-autoregressive block length; default: one block")
    g.add_argument("--remasking", choices=["ancestral", "low_confidence"], default="ancestral",
                   help="mask_diffusion runs: MDLM's ancestral unmasking or LLaDA's low-confidence remasking")
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="interactive loop: each line you type is continued by the model",
                       description="Each input line is appended to the running context and the model's reply streams "
                                   "until a stop string, eos or --max-new-tokens. /reset clears the context, /quit leaves.")
    c.add_argument("--run-dir", required=True)
    c.add_argument("--slot", default=None, help="checkpoint slot; default: newest loadable")
    _add_sampling_args(c, max_new_tokens=200, stop=["\\n\\n"])
    c.set_defaults(func=cmd_chat)
    e = sub.add_parser("eval", help="val loss, perplexity, bits per byte and accuracy of a trained run",
                       description="Evaluate a run's checkpoint; writes <run-dir>/eval_<slot>.json.")
    e.add_argument("--run-dir", required=True)
    e.add_argument("--slot", default=None, help="checkpoint slot (lm_current, lm_prev, lm_prev2, best); default: newest loadable")
    e.add_argument("--data", default=None,
                   help="default: the run's val split; a preset name/path: its val split; "
                        'a JSON source spec like \'{"type": "text", "path": "f.txt"}\': that source, whole')
    e.add_argument("--batches", type=int, default=None,
                   help="at most this many batches; default: the preset's train.eval_batches for a val split, all for a source")
    e.set_defaults(func=cmd_eval)
    n = sub.add_parser("needle", help="needle-in-a-haystack recall by context length and depth",
                       description="Writes <run-dir>/needle_<slot>.json and a heatmap .png.")
    n.add_argument("--run-dir", required=True)
    n.add_argument("--slot", default=None, help="checkpoint slot; default: newest loadable")
    n.add_argument("--filler", required=True, help="a text file of real filler text (e.g. ../shared/data/wikitext-2/valid.txt)")
    n.add_argument("--lengths", default="250,500,1000", help="haystack lengths in characters, comma-separated")
    n.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle positions as fractions of the haystack")
    n.add_argument("--trials", type=int, default=5, help="random needles per cell")
    n.add_argument("--seed", type=int, default=0)
    n.set_defaults(func=cmd_needle)
    x = sub.add_parser("export", help="write a run's weights as a Hugging Face model or plain safetensors")
    x.add_argument("--run-dir", required=True)
    x.add_argument("--slot", default=None, help="checkpoint slot; default: newest loadable")
    x.add_argument("--format", choices=["hf", "safetensors", "ternary"], required=True,
                   help="hf: transformers Llama/GPT-2 folder (gpt models); safetensors: weights + preset.json + tokenizer (any model); "
                   "ternary: BitNet b1.58 layers packed 2 bits per weight (runs trained with layer swap bitlinear)")
    x.add_argument("--rest-dtype", choices=["float32", "float16"], default="float32",
                   help="--format ternary: dtype of the tensors that are not ternary (embeddings, head, norms)")
    x.add_argument("--out", required=True, help="output folder")
    x.set_defaults(func=cmd_export)
    d = sub.add_parser("data", help="pre-tokenize a preset's sources into token files (prepare) or count them (inspect)")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dp = dsub.add_parser("prepare", help="write <out>/train.bin and val.bin (+ sidecars, tokenizer) for the `binary` source")
    dp.add_argument("preset")
    dp.add_argument("--out", default=None, help="output folder; default: data/<preset name>")
    dsub.add_parser("inspect", help="print documents, tokens and rejects per source and split").add_argument("preset")
    d.set_defaults(func=cmd_data)
    p = sub.add_parser("presets", help="list the presets in configs/ with the first sentence of each description")
    p.set_defaults(func=cmd_presets)
    cp = sub.add_parser(
        "compare", help="train presets on one budget and seeds; print a table, write plots and an HTML report",
        description="Train each PRESET (or the runs of --recipe's spec) on the same budget and seeds, each in its own "
                    "process under OUT/runs/ (a finished run is reused, an interrupted one resumed), and write "
                    "OUT/table.md, compare.json, val_loss.png, loss_terms.png and report.html. Dotted overrides "
                    "(--train.lr 3e-4) apply to every run.")
    cp.add_argument("presets", nargs="*", help="presets by name or path; the first is the baseline of the deltas")
    cp.add_argument("--recipe", default=None, help="a spec in configs/compare/ by name (forge, bitnet, ...) or a spec file")
    cp.add_argument("--budget", nargs=2, metavar=("KIND", "N"), default=None,
                    help="steps|tokens|flops|seconds and the amount; default: each preset's own (or the spec's)")
    cp.add_argument("--seeds", default=None, help="comma-separated seeds (train.seed and data.seed); default 1337 (or the spec's)")
    cp.add_argument("--out", default=None, help="output folder; default: runs/compare/<spec name>")
    cp.add_argument("--trust-code", action="store_true", help="as for train: let presets import the Python they name")
    cp.set_defaults(func=cmd_compare)
    pl = sub.add_parser("plot", help="PNG of a run's loss, val loss, lr and every logged term against the step")
    pl.add_argument("--run-dir", required=True)
    pl.add_argument("--out", default=None, help="default: <run-dir>/plots.png")
    pl.set_defaults(func=cmd_plot)
    r = sub.add_parser("runs", help="list the runs under a folder with preset, steps, best val, tokens/s and status")
    r.add_argument("dir", nargs="?", default="runs")
    r.set_defaults(func=cmd_runs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    try:
        return ns.func(ns, extra)
    except (PresetError, CommandError) as err:
        return _fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
