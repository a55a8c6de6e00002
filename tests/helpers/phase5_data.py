"""Real-text supervised samples for the phase 5 tests: which shared corpus does a line come from?"""
from __future__ import annotations

import json
from pathlib import Path


def corpus_lines(shared_data: Path, n: int, chars: int = 40) -> tuple[list[str], list[str]]:
    """n KJV verses (reference stripped) and n WordNet definition lines, each cut to `chars` characters."""
    kjv = [line.split(" ", 1)[1][:chars] for line in (shared_data / "kjv.txt").read_text().splitlines()[: n * 7 : 7]]
    dictionary = [line[:chars] for line in (shared_data / "dictionary.txt").read_text().splitlines()[20000 : 20000 + n * 7 : 7]]
    return kjv, dictionary


def write_corpus_classification(path: Path, shared_data: Path, n: int = 200, offset_labels: bool = False) -> Path:
    """seed 001 json: {"samples": [{"input": line, "target": "bible" | "dictionary", "metadata": {"quality"}}]}, interleaved."""
    kjv, dictionary = corpus_lines(shared_data, n)
    samples = []
    for a, b in zip(kjv, dictionary):
        samples.append({"input": a, "target": "bible", "metadata": {"quality": 0.95}})
        samples.append({"input": b, "target": "dictionary", "metadata": {"quality": 0.9}})
    path.write_text(json.dumps({"samples": samples}))
    return path


def write_definitions_seq2seq(path: Path, shared_data: Path, n: int = 100) -> Path:
    """Seq2seq samples from WordNet lines: input "word:", target the definition that follows."""
    samples = []
    for line in (shared_data / "dictionary.txt").read_text().splitlines()[30000 : 30000 + n]:
        word, _, definition = line.partition(":")
        samples.append({"input": word + ":", "target": definition[:30]})
    path.write_text(json.dumps({"samples": samples}))
    return path
