"""Evaluate a saved run on its own val split, another preset's val split, or a whole source.

The trainer's `evaluate_lm` does the arithmetic; this module only decides which
text becomes batches, and writes the result next to the run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lmforge.config import Preset, load_preset
from lmforge.data import DataConfig, build_val_batches
from lmforge.data.stream import ReaderStream, build_sources
from lmforge.evaluation.lm import evaluate_lm
from lmforge.objectives.masked import MaskDiffusionConfig, evaluate_nelbo
from lmforge.inference import LoadedRun, load_run
from lmforge.run_shape import sequence_length
from lmforge.runtime import setup_runtime


def whole_source_batches(data: DataConfig, tokenizer: Any, batch_size: int, seq_length: int, max_batches: int | None) -> list[dict]:
    """Every document of the sources (their train and val splits together), packed as val is: unshuffled, padded at the end."""
    sources = build_sources(data, "train") + build_sources(data, "val")
    stream = ReaderStream(
        sources, tokenizer, seq_length=seq_length, batch_size=batch_size,
        reader=0, num_readers=1, loop=False, shuffle_buffer=0, seed=data.seed,
    )
    batches = []
    for batch, _ in stream.batches():
        batches.append(batch)
        if max_batches is not None and len(batches) >= max_batches:
            break
    if not batches:
        raise ValueError("the evaluation source gives no text")
    return batches


def eval_batches(run: LoadedRun, data: str | None, max_batches: int | None) -> tuple[list[dict], str]:
    """Batches for `data` (None = the run's val split; a preset name/path = its val split; a JSON object = one
    source spec, evaluated whole), tokenized with the run's tokenizer; and a label saying what was evaluated."""
    preset: Preset = run.preset
    seq_length = sequence_length(preset)
    batch_size = preset.train.batch_size
    if data is None or not data.lstrip().startswith("{"):
        data_cfg = preset.data if data is None else load_preset(data).data
        n = max_batches if max_batches is not None else preset.train.eval_batches
        label = "val split of the run" if data is None else f"val split of preset {data}"
        return build_val_batches(data_cfg, run.tokenizer, batch_size, seq_length, max_batches=n), label
    spec = json.loads(data)
    data_cfg = DataConfig.model_validate({**preset.data.model_dump(), "sources": [spec]})
    return whole_source_batches(data_cfg, run.tokenizer, batch_size, seq_length, max_batches), f"source {data}"


def evaluate_run(run_dir: Path | str, slot: str | None = None, data: str | None = None, max_batches: int | None = None,
                 progress: bool | None = None) -> dict:
    """Val loss, perplexity, token accuracy, bits per byte (and per char) of a run's checkpoint; saved as eval_<slot>.json.

    `progress`: a bar over the batches on stderr (None = when stderr is a terminal)."""
    run_dir = Path(run_dir)
    runtime = setup_runtime(device="auto", precision="fp32")
    run = load_run(run_dir, slot, device=runtime.device)
    if not run.causal and not isinstance(run.objective, MaskDiffusionConfig):
        raise ValueError(f"{run_dir} ({run.slot}) is a bidirectional model (model.causal false, objective "
                         f"{run.objective.name!r}): it sees the tokens it would predict, so it has no next-token loss")
    batches, label = eval_batches(run, data, max_batches)
    tok = run.tokenizer
    shown = tqdm(batches, desc=f"eval {run.slot}", unit="batch", disable=not (sys.stderr.isatty() if progress is None else progress))
    if isinstance(run.objective, MaskDiffusionConfig):  # a bound on a bidirectional model, not next-token CE
        metrics = evaluate_nelbo(run.model, shown, runtime, tok.token_byte_lengths(), eps=run.objective.eps)
    else:
        metrics = evaluate_lm(run.model, shown, runtime, tok.token_byte_lengths(), tok.token_char_lengths())
    result = {"slot": run.slot, "step": run.step, "data": label, "batches": len(batches), **metrics}
    (run_dir / f"eval_{run.slot}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
