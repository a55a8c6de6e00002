"""Needle in a haystack: prompt construction, scoring by depth with a scripted reader, and the CLI on a tiny run."""
import json
import random
import re
import subprocess
import sys

import pytest

from conftest import REPO, tiny_preset
from lmforge.config import load_preset
from lmforge.evaluation.needle import build_prompt, make_needle, run_needle
from lmforge.training.trainer import train


@pytest.fixture
def filler(shared_data):
    return (shared_data / "wikitext-2" / "valid.txt").read_text()[:50000]


def test_prompt_places_one_fresh_needle_at_depth(filler):
    rng = random.Random(0)
    needles = {make_needle(rng) for _ in range(50)}
    assert len(needles) == 50
    for key, value in needles:
        assert key not in filler and value not in filler
    key, value = make_needle(rng)
    for depth in (0.0, 0.5, 1.0):
        prompt = build_prompt(filler, 1000, depth, key, value, random.Random(1))
        needle_at = prompt.index(f"is {value}.")
        assert prompt.count(value) == 1 and prompt.endswith(f"The secret number of {key} is ")
        assert abs(needle_at / 1000 - depth) < 0.05


def window_reader(window: int):
    """A scripted model that reads only the last `window` characters of its prompt and answers from them."""

    def complete(prompt: str, max_new_tokens: int) -> str:
        key = re.search(r"secret number of (\w+)\? ", prompt).group(1)
        found = re.search(rf"number of {key} is (\d+)\.", prompt[-window:])
        return found.group(1) if found else "I do not know"

    return complete


def test_accuracy_by_length_and_depth(filler):
    result = run_needle(window_reader(400), filler, lengths=[200, 1000], depths=[0.0, 0.5, 1.0], trials=4)
    assert result.accuracy == [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert "| 1000 | 0.00 | 0.00 | 1.00 |" in result.table()


def test_needle_cli_on_tiny_run(tmp_path, small_text, shared_data):
    preset = tiny_preset(small_text, max_steps=4, eval_interval=4, save_interval=4)
    train(load_preset(preset), tmp_path / "run")
    cmd = [sys.executable, "-m", "lmforge", "needle", "--run-dir", str(tmp_path / "run"), "--filler", str(small_text),
           "--lengths", "20,40", "--depths", "0,1", "--trials", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "needle_lm_current.json").read_text())
    assert saved["lengths"] == [20, 40] and len(saved["accuracy"]) == 2 and len(saved["accuracy"][0]) == 2
    assert all(0 <= a <= 1 for row in saved["accuracy"] for a in row)
    assert (tmp_path / "run" / "needle_lm_current.png").stat().st_size > 1000
    assert proc.stdout.startswith("| chars \\ depth |")
