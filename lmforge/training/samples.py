"""Text samples from the model being trained, printed and saved under `<run_dir>/samples/`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lmforge.generation import SamplingConfig, generate
from lmforge.generation.generate import is_causal

if TYPE_CHECKING:
    from lmforge.training.trainer import Trainer


def write_samples(trainer: "Trainer", print_them: bool) -> list[str]:
    """Left-to-right samples of each prompt; none for a model its objective does not train to decode that way, or
    whose attention is bidirectional now (`model.causal` false, also in a stage that switched it)."""
    if not trainer.objective.left_to_right or not is_causal(trainer.model):
        if print_them:
            stage_objective = trainer.stages.stages[trainer.stage_index].objective or trainer.preset.objective
            why = f"objective {stage_objective.name!r}" if not trainer.objective.left_to_right else "model.causal is false"
            print(f"(no left-to-right samples: {why}, a bidirectional model)", flush=True)
        return []
    if trainer.runtime.sharded and trainer.runtime.distributed:  # one process cannot run a sharded model alone
        if print_them:
            print(f"(no samples under FSDP training: lmforge generate --run-dir {trainer.run_dir} samples the checkpoint)", flush=True)
        return []
    cfg = trainer.preset.samples
    tok = trainer.tokenizer
    sampling = SamplingConfig(
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size, seed=trainer.preset.train.seed,
    )
    texts = []
    for prompt in cfg.prompts:
        ids = tok.encode(prompt) or [tok.eos_id if tok.eos_id is not None else 0]
        with trainer.runtime.autocast():
            out = generate(trainer.model, [ids], cfg.max_new_tokens, sampling)
        texts.append(prompt + tok.decode(out[0]))
    body = "\n\n----------\n\n".join(texts)
    (trainer.run_dir / "samples" / f"step_{trainer.step:07d}.txt").write_text(body + "\n")
    if print_them:
        print(f"\n===== samples at step {trainer.step} =====\n{body}\n=====", flush=True)
    return texts
