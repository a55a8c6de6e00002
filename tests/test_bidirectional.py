"""`model.causal`: bidirectional attention for every attention type, switchable per stage, refused by decoding."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.models import GPT, GPTConfig
from lmforge.training.trainer import Trainer


@pytest.mark.parametrize("attention", ["mha", "gqa", "mla", "linear"])
def test_bidirectional_positions_read_later_tokens_and_causal_ones_do_not(attention):
    torch.manual_seed(0)
    extra = {"n_kv_head": 1} if attention == "gqa" else {"pos_embedding": "learned"} if attention == "linear" else {}
    model = GPT(GPTConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=32, block_size=16, attention=attention, causal=False, **extra)).eval()
    x = torch.randint(0, 30, (1, 10))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 30  # only the last token differs
    with torch.no_grad():
        assert not torch.allclose(model(x).logits[0, :-1], model(y).logits[0, :-1])
        model.set_causal(True)
        assert torch.equal(model(x).logits[0, :-1], model(y).logits[0, :-1])
    with torch.no_grad(), pytest.raises(ValueError, match="bidirectional model .* no left-to-right decoding"):
        model.set_causal(False)
        model(x, cache=model.new_cache(1))


def test_a_stage_switches_the_attention_mode_and_a_resume_restores_it(small_text, tmp_path):
    raw = tiny_preset(small_text, max_steps=8, save_interval=2)
    raw["model"]["causal"] = False
    raw["stages"] = [{"name": "bidirectional", "until_step": 4}, {"name": "causal", "model_settings": {"causal": True}}]
    trainer = Trainer(load_preset(raw), tmp_path / "run")
    assert not trainer.model.config.causal and not trainer.model.blocks[0].attn.causal
    result = trainer.fit()
    assert result.steps == 8 and trainer.model.blocks[1].attn.causal
    raw["train"]["max_steps"] = 10  # a new session resumes in the causal stage: the setting is applied again
    resumed = Trainer(load_preset(raw), tmp_path / "run")
    resumed.resume()
    assert resumed.stage_index == 1 and all(b.attn.causal for b in resumed.model.blocks)


def test_a_causal_objective_on_a_bidirectional_model_is_refused_by_generate_and_eval(small_text, tmp_path, capsys):
    """clm with model.causal false trains (a user may want it), but its next-token loss reads the answer, and it cannot
    be sampled token by token: generate and eval refuse it with one line (exit 2), the Python API with a ValueError."""
    from lmforge.cli import main as cli_main
    from lmforge.generation import generate
    from lmforge.inference import load_run
    from lmforge.training.trainer import train

    raw = tiny_preset(small_text, max_steps=2, eval_interval=2)
    raw["model"]["causal"] = False
    train(load_preset(raw), tmp_path)
    for command in (["generate", "--run-dir", str(tmp_path), "--no-cache"], ["eval", "--run-dir", str(tmp_path)]):
        assert cli_main(command) == 2
        assert "bidirectional model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be sampled token by token"):
        generate(load_run(tmp_path).model, [[1, 2]], 4, use_cache=False)


def test_linear_attention_without_causality_needs_learned_positions():
    base = {"vocab_size": 30, "n_layer": 1, "n_head": 2, "n_embd": 32, "attention": "linear"}
    with pytest.raises(ValueError, match="needs pos_embedding 'learned'"):
        GPTConfig(**base, causal=False)
    GPTConfig(**base, causal=False, pos_embedding="learned")
    with pytest.raises(ValueError, match="needs pos_embedding 'learned'"):
        GPT(GPTConfig(**base)).set_causal(False)
    raw = tiny_preset(Path("x.txt"))  # validation opens no data
    raw["model"]["attention"] = "linear"
    raw["stages"] = [{"name": "bi", "until_step": 4, "model_settings": {"causal": False}}, {"name": "ar", "model_settings": {"causal": True}}]
    with pytest.raises(PresetError, match="stages.0.model_settings: attention 'linear' with causal false"):
        load_preset(raw)
