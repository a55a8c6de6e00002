"""Needle in a haystack: can a model recall a random key/value pair buried at some depth in real filler text?

The needle is fresh per trial (a random word-like key, a random 6-digit value),
so a model cannot know it from training; the filler is real text, cut at
whitespace. The prompt is haystack + question, and a trial counts when the
model's greedy continuation starts with the value. Lengths are in characters
of haystack, so any tokenizer (or any model behind `Completer`) can be compared;
with lmforge models, a haystack longer than the context is seen through its
last `block_size` tokens, so a needle outside that window is a miss, as it is for the model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from lmforge.data.tasks import NEEDLE, QUESTION, build_prompt, make_needle  # noqa: F401  (the task's generators)

Completer = Callable[[str, int], str]  # (prompt, max new tokens) -> continuation text


@dataclass
class NeedleResult:
    lengths: list[int]
    depths: list[float]
    trials: int
    accuracy: list[list[float]] = field(default_factory=list)  # [length index][depth index]

    def table(self) -> str:
        head = "| chars \\ depth | " + " | ".join(f"{d:.2f}" for d in self.depths) + " |"
        rule = "|---:|" + "---:|" * len(self.depths)
        rows = [f"| {n} | " + " | ".join(f"{a:.2f}" for a in accs) + " |" for n, accs in zip(self.lengths, self.accuracy)]
        return "\n".join([head, rule, *rows])

    def to_dict(self) -> dict:
        return {"lengths": self.lengths, "depths": self.depths, "trials": self.trials, "accuracy": self.accuracy}


def run_needle(
    complete: Completer,
    filler: str,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int = 5,
    seed: int = 0,
    max_new_tokens: int = 12,
) -> NeedleResult:
    """Accuracy per (length, depth) over `trials` random needles each."""
    rng = random.Random(seed)
    result = NeedleResult(list(lengths), list(depths), trials)
    for length in lengths:
        row = []
        for depth in depths:
            hits = 0
            for _ in range(trials):
                key, value = make_needle(rng)
                answer = complete(build_prompt(filler, length, depth, key, value, rng), max_new_tokens)
                hits += answer.lstrip().startswith(value)
            row.append(hits / trials)
        result.accuracy.append(row)
    return result


def lmforge_completer(model: object, tokenizer: object) -> Completer:
    """Greedy continuation with `lmforge.generation.generate` for any lmforge model."""
    from lmforge.generation import SamplingConfig, generate

    def complete(prompt: str, max_new_tokens: int) -> str:
        ids = tokenizer.encode(prompt) or [tokenizer.eos_id or 0]
        return tokenizer.decode(generate(model, [ids], max_new_tokens, SamplingConfig(temperature=0))[0])

    return complete


def save_heatmap(result: NeedleResult, path: Path | str) -> None:
    """Accuracy as a length x depth heatmap PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(result.depths), 1.0 + 0.5 * len(result.lengths)))
    im = ax.imshow(result.accuracy, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(result.depths)), [f"{d:.2f}" for d in result.depths])
    ax.set_yticks(range(len(result.lengths)), [str(n) for n in result.lengths])
    ax.set_xlabel("needle depth (fraction of haystack)")
    ax.set_ylabel("haystack characters")
    for i, row in enumerate(result.accuracy):
        for j, a in enumerate(row):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"recall ({result.trials} trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
