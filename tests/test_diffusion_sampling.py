"""Diffusion sampling of mask_diffusion runs: ancestral (MDLM) and low-confidence (LLaDA) unmasking, blocks, fp64 Gumbel."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO, tiny_preset
from lmforge.config import load_preset
from lmforge.generation.diffusion import DiffusionSampling, diffusion_generate, gumbel_draw, token_entropy
from lmforge.models.output import ModelOutput
from lmforge.training.trainer import train

V = 6  # 5 tokens + [MASK] (id 5)


class Pattern(torch.nn.Module):
    """A 'model' that strongly predicts token (position % 5) everywhere and records every input it is given."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, 2)
        self.inputs = []

    def get_input_embeddings(self):
        return self.embed

    def forward(self, ids):
        self.inputs.append(ids.clone())
        logits = torch.full((*ids.shape, V), -10.0)
        positions = torch.arange(ids.size(1))
        logits[:, positions, positions % 5] = 10.0
        return ModelOutput(logits=logits, hidden_states=None)


@pytest.mark.parametrize("remasking", ["ancestral", "low_confidence"])
def test_unmasking_reveals_every_position_with_the_models_tokens(remasking):
    model = Pattern()
    out = diffusion_generate(model, [1, 2], 12, DiffusionSampling(steps=6, remasking=remasking, seed=0))
    assert out == [p % 5 for p in range(2, 14)] and 5 not in out  # no [MASK] left, the prompt kept out of the result
    revealed = [int((ids[0, 2:] != 5).sum()) for ids in model.inputs]
    assert revealed == sorted(revealed) and revealed[0] == 0 and len(model.inputs) <= 6
    if remasking == "low_confidence":  # an equal share per step: 12 masks over 6 steps, 2 at a time
        assert revealed == [0, 2, 4, 6, 8, 10]


def test_blocks_are_unmasked_left_to_right():
    model = Pattern()
    diffusion_generate(model, [0], 8, DiffusionSampling(steps=8, block_size=4, remasking="low_confidence", seed=0))
    for ids in model.inputs:  # while block 1 (positions 1-4) still has masks, block 2 (5-8) is all masks
        if (ids[0, 1:5] == 5).any():
            assert (ids[0, 5:9] == 5).all()
    assert len(model.inputs) == 8  # 4 steps per block


def test_fp64_gumbel_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = gumbel_draw(probs.log().expand(1_000_000, 4), 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert torch.allclose(freq, probs.double(), atol=2.5e-3)  # 5 standard errors at 1M draws
    assert gumbel_draw(probs.log(), 0.0, torch.Generator()) == 0  # temperature 0: the most likely token
    assert token_entropy([1, 1, 1, 1]) == 0 and token_entropy([1, 2, 3, 4]) == pytest.approx(2.0)


def test_lmforge_generate_samples_a_mask_diffusion_run_and_refuses_an_mlm_one(small_text, tmp_path):
    raw = tiny_preset(small_text, max_steps=3, eval_interval=3)
    raw["model"]["causal"] = False
    raw["objective"] = {"name": "mask_diffusion"}
    train(load_preset(raw), tmp_path / "mdlm")
    cmd = [sys.executable, "-m", "lmforge", "generate", "--run-dir", str(tmp_path / "mdlm"), "--prompt", "ROMEO:",
           "--max-new-tokens", "16", "--steps", "8", "--block-size", "8", "--remasking", "low_confidence", "--seed", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and "token entropy" in proc.stderr
    raw["objective"] = {"name": "mlm"}
    train(load_preset(raw), tmp_path / "mlm")
    proc = subprocess.run(cmd[:5] + [str(tmp_path / "mlm")] + cmd[6:8], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "not sampled token by token" in proc.stderr
