"""Seed 002's auxiliary heads: leak-free targets, every term trained and logged, heads saved and restored, seed 002 names."""
import pytest
import torch

from conftest import tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.inference import load_run
from lmforge.models import build_model
from lmforge.models.gpt import GPTConfig
from lmforge.objectives.auxiliary import (
    AuxiliaryConfig,
    AuxiliaryHeads,
    mask_span,
    span_positions,
    value_targets,
)
from lmforge.run_shape import training_flops_per_token
from lmforge.training.callbacks import Callback
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train

ALL_ON = {"enable_policy": True, "enable_value": True, "enable_dynamics": True, "enable_span_contrastive": True}


def _tiny_model_and_heads(vocab=40, width=32):
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, n_embd=width, block_size=24, dropout=0.0)).eval()
    heads = AuxiliaryHeads(AuxiliaryConfig(**ALL_ON), width, vocab).eval()
    return model, heads


def _predictions_at(model, heads, ids: torch.Tensor, t: int) -> list[torch.Tensor]:
    """Every auxiliary prediction made at position t: policy logits, value, and the dynamics rollout from h_t."""
    hidden = model(ids).hidden_states
    h = hidden[:, : t + 1]
    return [heads.policy(h), heads.predict_value(h), *heads.rollout(h, 3), *[heads.predict_value(z) for z in heads.rollout(h, 3)]]


@pytest.mark.parametrize("t", [0, 7, 15])
def test_no_prediction_at_t_sees_a_token_after_t(t):
    model, heads = _tiny_model_and_heads()
    ids = torch.randint(0, 39, (3, 24), generator=torch.Generator().manual_seed(1))
    before = _predictions_at(model, heads, ids, t)
    perturbed = ids.clone()
    perturbed[:, t + 1:] = torch.randint(0, 39, perturbed[:, t + 1:].shape, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(perturbed, ids)
    with torch.no_grad():
        after = _predictions_at(model, heads, perturbed, t)
        for a, b in zip(before, after):
            assert torch.equal(a, b)  # bitwise: positions <= t never read tokens after t
        assert not torch.equal(model(ids).hidden_states[:, t + 1:], model(perturbed).hidden_states[:, t + 1:])


def test_value_target_is_the_mean_nll_of_the_next_span():
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 0.0]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    target, full = value_targets(nll, valid, horizon=3)
    assert full.tolist() == [[True, True, True, False, False, False]]  # a window must hold 3 real targets
    assert target[0, :3].tolist() == pytest.approx([2.0, 3.0, 4.0])  # mean of targets t, t+1, t+2 (tokens t+1..t+3)


def test_span_is_masked_in_the_input_and_the_query_never_sees_it():
    model, heads = _tiny_model_and_heads()
    torch.manual_seed(3)
    ids = torch.randint(0, 39, (4, 24))
    labels = torch.roll(ids, -1, 1)
    start, length, rows = span_positions(labels, 0.25)
    masked, span = mask_span(ids, start, length, mask_id=39)
    assert length == 6 and rows.all() and (span.sum(1) == length).all()
    assert (masked[span] == 39).all() and torch.equal(masked[~span], ids[~span])
    other = ids.clone()
    other[span] = (ids[span] + 1) % 39  # different true spans
    masked_other, _ = mask_span(other, start, length, mask_id=39)
    assert torch.equal(masked, masked_other)  # the model's input holds nothing of the span
    with torch.no_grad():
        assert torch.equal(model(masked).hidden_states, model(masked_other).hidden_states)


def test_every_head_trains_logs_saves_and_restores(tmp_path, small_text):
    raw = tiny_preset(small_text, max_steps=6, save_interval=3)
    raw["auxiliary"] = ALL_ON | {"value_horizon": 4, "dynamics_rollout_steps": 2}
    result = train(load_preset(raw), tmp_path / "run")
    assert result.steps == 6
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    for term in ("ce", "policy_kl", "value_mse", "dynamics_latent", "dynamics_value", "span_infonce", "span_accuracy"):
        assert all(term in r and r[term] == r[term] for r in rows), term
    last = rows[-1]
    expected = last["ce"] + 0.05 * sum(last[k] for k in ("policy_kl", "value_mse", "dynamics_latent", "dynamics_value", "span_infonce"))
    assert last["loss"] == pytest.approx(expected, rel=1e-5)  # total = CE + sum of weighted terms
    run = load_run(tmp_path / "run")
    state = {k: v for k, v in run.model.state_dict().items() if k.startswith("aux_heads.")}
    assert {k.split(".")[1] for k in state} == {"policy", "value", "dynamics", "span_query", "span_key"}
    trainer = Trainer(load_preset(raw | {"train": raw["train"] | {"max_steps": 9}}), tmp_path / "run")
    assert trainer.resume()
    for key, value in state.items():  # the trained heads, not a fresh init
        assert torch.equal(trainer.model.state_dict()[key], value)


def test_resume_with_heads_is_bitwise(tmp_path, small_text):
    raw = tiny_preset(small_text, max_steps=8, save_interval=4)
    raw["auxiliary"] = ALL_ON
    train(load_preset(raw), tmp_path / "ref")

    class StopAt5(Callback):  # stops mid-run (the last save was at step 4: steps 5.. are replayed on resume)
        def on_step_end(self, trainer, step, metrics):
            if step == 5:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_preset(raw), tmp_path / "split", callbacks=[StopAt5()])
    assert train(load_preset(raw), tmp_path / "split").resumed_from == 4
    ref = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "ref") if "loss" in r}
    got = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "split") if "loss" in r}
    assert got == ref


def test_heads_flops_are_counted(small_text):
    base = load_preset(tiny_preset(small_text))
    base.model = base.model.model_copy(update={"vocab_size": 66})
    plain = training_flops_per_token(base, 32)
    with_value = base.model_copy(update={"auxiliary": AuxiliaryConfig(enable_value=True)})
    with_span = base.model_copy(update={"auxiliary": AuxiliaryConfig(enable_span_contrastive=True)})
    value_params = (32 * 32 + 32) + (32 + 1)  # Linear(32, 32), GELU, Linear(32, 1)
    assert training_flops_per_token(with_value, 32) == pytest.approx(plain + 6 * value_params)
    assert training_flops_per_token(with_span, 32) > 2 * plain  # a second trunk pass on the masked copy


def test_bad_auxiliary_options_are_preset_errors(small_text):
    raw = tiny_preset(small_text, batch_size=1)
    with pytest.raises(PresetError, match="train.batch_size must be >= 2"):
        load_preset(raw | {"auxiliary": {"enable_span_contrastive": True}})
    with pytest.raises(PresetError, match="auxiliary.enable_polcy: unknown key; allowed: .*enable_policy"):
        load_preset(raw | {"auxiliary": {"enable_polcy": True}})
    with pytest.raises(PresetError, match="bidirectional"):
        Trainer(load_preset(tiny_preset(small_text) | {"auxiliary": {"enable_value": True}, "objective": {"name": "mlm"}}),
                small_text.parent / "mlm_run")


def test_seed002_preset_names_train(tmp_path, small_text, capsys, monkeypatch):
    from lmforge import preset_compat

    monkeypatch.setattr(preset_compat, "_told", set())  # each mapping is printed once per process
    raw = {
        "name": "qa_plus_local",
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "seq_length": 32},
        "train": {"per_gpu_batch_size": 4, "accumulation_steps": 2, "eval_tokens": 256, "max_steps": 3,
                  "precision": "fp32", "progress_bar": False, "eval_interval": 3, "save_interval": 3},
        "data": {"sources": [{"type": "text", "path": str(small_text)}], "mix_strategy": "round_robin",
                 "min_text_length": 50, "tokenizer": {"type": "char"}, "validation": {"method": "tail", "fraction": 0.1}},
        "auxiliary": {"enable_value": True, "enable_adaptive_sources": True, "adaptive_interval_tokens": 500,
                      "adaptive_min_weight": 0.5, "adaptive_max_weight": 3.0, "adaptive_smoothing": 0.9},
    }
    preset = load_preset(raw)
    m, t = preset.model, preset.train
    assert (m.arch, m.n_embd, m.n_layer, m.n_head, m.block_size) == ("gpt", 32, 2, 2, 32)
    assert (t.batch_size, t.grad_accum_steps, t.eval_batches) == (4, 2, 2)  # 256 tokens / (4 x 32)
    assert preset.data.mix == "round_robin" and preset.data.min_text_length == 50
    assert preset.data.adaptive.adaptive_smoothing == 0.9 and preset.auxiliary.enable_value
    assert "seed 002's model.hidden_size: read as model.n_embd" in capsys.readouterr().err
    assert train(preset, tmp_path / "run").steps == 3
    fixed = load_preset(raw | {"train": raw["train"] | {"fixed_token_budget": True}})
    assert fixed.train.train_tokens == 100_000_000 and fixed.train.max_steps is None
    bare = load_preset(raw | {"data": raw["data"] | {"sources": ["wikipedia"]}})
    assert bare.data.sources[0].dataset == "wikimedia/wikipedia"
    with pytest.raises(PresetError, match="'wikipedai' is not a built-in source name"):
        load_preset(raw | {"data": raw["data"] | {"sources": ["wikipedai"]}})
    with pytest.raises(PresetError, match="model.hidden_size .* but model.n_embd is 64"):
        load_preset(raw | {"model": raw["model"] | {"n_embd": 64}})


def test_rerank_cli_scores_candidates_by_value(tmp_path, small_text):
    import subprocess
    import sys

    raw = tiny_preset(small_text, max_steps=4, save_interval=4)
    raw["auxiliary"] = {"enable_value": True}
    train(load_preset(raw), tmp_path / "run")
    cmd = [sys.executable, "-m", "lmforge", "generate", "--run-dir", str(tmp_path / "run"), "--prompt", "ROMEO:",
           "--max-new-tokens", "6", "--seed", "0"]
    proc = subprocess.run(cmd + ["--rerank", "value", "--candidates", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scores = [line for line in proc.stderr.splitlines() if "value score" in line]
    assert len(scores) == 3 and sum(line.startswith("*") for line in scores) == 1
    chosen = min(scores, key=lambda line: float(line.split()[-1]))
    assert chosen.startswith("*")  # the lowest predicted future NLL is the one printed
    plain = tmp_path / "plain"
    train(load_preset(tiny_preset(small_text, max_steps=2)), plain)
    proc = subprocess.run([*cmd[:5], str(plain), *cmd[6:], "--rerank", "value"], capture_output=True, text=True)
    assert proc.returncode != 0 and "auxiliary.enable_value" in proc.stderr
