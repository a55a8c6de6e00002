"""Grokfast: filter math by hand (and its sign), its place in the training step, checkpointed state,
preset validation, the seed's LR phases at every boundary, the grokking task, and the pipeline mapping."""
import io
import math
from collections import deque

import pytest
import torch
import torch.nn as nn

from conftest import tiny_preset
from lmforge import create_training_pipeline
from lmforge.config import PresetError, load_preset
from lmforge.data.tasks import ModularTask
from lmforge.registry import GRAD_FILTERS, SCHEDULES
from lmforge.training.grad_filters import GrokfastEMA, GrokfastEMAConfig, GrokfastMA, GrokfastMAConfig, apply_grad_filters
from lmforge.training.grokfast_phases import GrokfastPhasesConfig, grokfast_phases
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer
from helpers.stop import StopAt

G1, G2, G3 = [1.0, -2.0], [3.0, 0.0], [-1.0, 1.0]


class OneParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.unused = nn.Parameter(torch.zeros(3))  # never gets a gradient: the filters must skip it


def _step(f, model: OneParam, grad: list[float]) -> list[float]:
    model.w.grad = torch.tensor(grad)
    f(model)
    return model.w.grad.tolist()


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------- filter math


def test_ema_filter_by_hand_adds_the_slow_gradient():
    m = OneParam()
    f = GrokfastEMA(GrokfastEMAConfig(alpha=0.5, lamb=2.0), m)
    assert _step(f, m, G1) == [3.0, -6.0]  # mu = g1 = [1,-2]; g1 + 2 mu
    assert _step(f, m, G2) == [7.0, -2.0]  # mu = .5[1,-2] + .5[3,0] = [2,-1]; [3,0] + 2[2,-1]
    # the seed's g + lamb (g - ema) would give [3,0] + 2([3,0] - [2,-1]) = [5, 2]: the sign of the slow part flips
    assert _step(f, m, G3) == [0.0, 1.0]  # mu = .5[2,-1] + .5[-1,1] = [.5, 0]; [-1,1] + 2[.5,0]
    assert f.mu["w"].tolist() == [0.5, 0.0] and "unused" not in f.mu and m.unused.grad is None
    assert GrokfastEMAConfig().alpha == 0.98 and GrokfastEMAConfig().lamb == 2.0  # the paper's defaults


def test_ma_filter_by_hand_with_and_without_warmup():
    m = OneParam()
    f = GrokfastMA(GrokfastMAConfig(window=2, lamb=1.0, warmup=True), m)
    assert _step(f, m, G1) == G1  # window not full yet: untouched
    assert _step(f, m, G2) == [5.0, -1.0]  # mean(g1, g2) = [2,-1]
    assert _step(f, m, G3) == [0.0, 1.5]  # g1 left the window: mean(g2, g3) = [1, .5]
    f = GrokfastMA(GrokfastMAConfig(window=2, lamb=1.0, warmup=False), m)
    assert _step(f, m, G1) == [2.0, -4.0]  # mean of the one gradient seen
    assert _step(f, m, G2) == [5.0, -1.0]
    c = GrokfastMAConfig()
    assert (c.window, c.lamb, c.warmup) == (100, 5.0, True)


def test_ma_running_sum_matches_a_plain_window_over_many_wraps():
    torch.manual_seed(0)
    m = OneParam()
    f = GrokfastMA(GrokfastMAConfig(window=3, lamb=0.7), m)
    window: deque = deque(maxlen=3)
    for _ in range(11):
        g = torch.randn(2)
        window.append(g.clone())
        expected = g + 0.7 * torch.stack(list(window)).mean(0) if len(window) == 3 else g
        m.w.grad = g.clone()
        f(m)
        assert torch.allclose(m.w.grad, expected, atol=1e-6)


def test_filter_state_round_trips_through_weights_only_load():
    torch.manual_seed(1)
    grads = [torch.randn(2) for _ in range(9)]
    for make in (lambda: GrokfastEMA(GrokfastEMAConfig(), None), lambda: GrokfastMA(GrokfastMAConfig(window=4, lamb=2.0), None)):
        for cut in (2, 5):  # MA: window still filling, and wrapped mid-ring
            a, b, ma, mb = make(), make(), OneParam(), OneParam()
            for g in grads[:cut]:
                _step(a, ma, g.tolist())
            b.load_state_dict(_roundtrip(a.state_dict()))
            for g in grads[cut:]:
                assert _step(a, ma, g.tolist()) == _step(b, mb, g.tolist())
    with pytest.raises(ValueError, match="window is 4 but the preset says 5"):
        GrokfastMA(GrokfastMAConfig(window=5), None).load_state_dict(_roundtrip(a.state_dict()))


def test_non_finite_step_leaves_filter_state_alone_under_a_grad_scaler():
    """Under an fp16 GradScaler an overflowing step is skipped; an inf in the EMA would poison every later step."""
    m = OneParam()
    f = GrokfastEMA(GrokfastEMAConfig(alpha=0.5, lamb=2.0), m)
    _step(f, m, G1)
    m.w.grad = torch.tensor([math.inf, 0.0])
    apply_grad_filters([f], m, skip_nonfinite=True)
    assert f.mu["w"].tolist() == G1 and f.steps == 1
    assert _step(f, m, G2) == [7.0, -2.0]
    m.w.grad = torch.tensor([math.inf, 0.0])
    apply_grad_filters([f], m, skip_nonfinite=False)  # no scaler: no check, the filter runs
    assert f.steps == 3 and not math.isfinite(f.mu["w"][0].item())


# ---------------------------------------------------------------- presets


def _filter_preset(small_text, filters, **train):
    raw = tiny_preset(small_text, **train)
    raw["grad_filters"] = filters
    return raw


@pytest.mark.parametrize("spec, expected", [
    ({"name": "grokfast_ema", "alpha": 1.5}, ["grad_filters.0.alpha", "less than 1"]),
    ({"name": "grokfast_ema", "lambda": 2.0}, ["grad_filters.0.lambda: unknown key", "lamb"]),
    ({"name": "grokfast_ma", "window": 0}, ["grad_filters.0.window", "greater than or equal to 1"]),
    ({"name": "grokfast_ma", "warmup": "sometimes"}, ["grad_filters.0.warmup"]),
    ({"name": "grokfast"}, ["grad_filters.0.name", "grokfast_ema", "grokfast_ma"]),
])
def test_bad_filter_fields_are_preset_errors(small_text, spec, expected):
    with pytest.raises(PresetError) as info:
        load_preset(_filter_preset(small_text, [spec]))
    for text in expected:
        assert text in str(info.value), (text, str(info.value))


def test_preset_list_builds_the_registered_filters(small_text):
    preset = load_preset(_filter_preset(small_text, [{"name": "grokfast_ema", "alpha": 0.98, "lamb": 2.0}, {"name": "grokfast_ma"}]))
    assert preset.grad_filters == [GrokfastEMAConfig(alpha=0.98, lamb=2.0), GrokfastMAConfig()]
    assert GRAD_FILTERS.get("grokfast_ema") is GrokfastEMA and GRAD_FILTERS.get("grokfast_ma") is GrokfastMA


# ---------------------------------------------------------------- in the trainer


def test_trainer_filters_after_unscale_before_clipping(tmp_path, small_text, monkeypatch):
    trainer = Trainer(load_preset(_filter_preset(small_text, [{"name": "grokfast_ema", "alpha": 0.5, "lamb": 2.0}], max_steps=2, grad_clip=0.5)), tmp_path)
    events, seen = [], {}
    unscale, clip, ema_call = trainer.scaler.unscale_, torch.nn.utils.clip_grad_norm_, GrokfastEMA.__call__

    def spy_unscale(opt):
        events.append("unscale")
        return unscale(opt)

    def spy_filter(self, model):
        events.append("filter")
        seen.setdefault("raw", [p.grad.clone() for p in model.parameters()])
        ema_call(self, model)

    def spy_clip(params, max_norm, *a, **kw):
        params = list(params)
        events.append("clip")
        seen.setdefault("at_clip", [p.grad.clone() for p in params])
        return clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(trainer.scaler, "unscale_", spy_unscale)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    monkeypatch.setattr(GrokfastEMA, "__call__", spy_filter)
    trainer.fit()
    assert events == ["unscale", "filter", "clip"] * 2
    for raw, clipped in zip(seen["raw"], seen["at_clip"]):  # step 1: mu = g, so clipping saw (1 + lamb) g
        assert torch.allclose(clipped, 3.0 * raw)


def _state_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    return a == b


def test_filters_and_phases_train_and_resume_exactly(tmp_path, small_text):
    """Both filters (MA window 4 wraps at steps 4 and 8) and the phase schedule; stopped at 6, resumed to 12."""
    schedule = {"name": "grokfast_phases", "warmup_end": 2, "acceleration_end": 5, "consolidation_end": 8, "refinement_end": 12,
                "acceleration_multiplier": 2.0, "consolidation_multiplier": 0.5}
    filters = [{"name": "grokfast_ema", "alpha": 0.9, "lamb": 2.0}, {"name": "grokfast_ma", "window": 4, "lamb": 1.0}]
    raw = _filter_preset(small_text, filters, max_steps=12, save_interval=3, lr_schedule=schedule)
    ref = Trainer(load_preset(raw), tmp_path / "ref")
    ref.fit()
    first = Trainer(load_preset(raw), tmp_path / "cut", callbacks=[StopAt(6)])
    assert first.fit().steps == 6
    resumed = Trainer(load_preset(raw), tmp_path / "cut")
    result = resumed.fit()
    assert result.resumed_from == 6 and result.steps == 12
    for a, b in zip(ref.grad_filters, resumed.grad_filters):
        assert _state_equal(a.state_dict(), b.state_dict())
    assert ref.grad_filters[1].windows and all(w.filled == 4 for w in ref.grad_filters[1].windows.values())
    rows = {r["step"]: r for r in read_metrics(tmp_path / "ref") if "loss" in r}
    got = {r["step"]: r for r in read_metrics(tmp_path / "cut") if "loss" in r}
    assert [got[s]["loss"] for s in range(1, 13)] == [rows[s]["loss"] for s in range(1, 13)]
    phases = [rows[s]["lr_phase"] for s in range(1, 13)]  # row of step s describes step s-1
    assert phases == ["warmup"] * 2 + ["acceleration"] * 3 + ["consolidation"] * 3 + ["refinement"] * 4
    assert rows[3]["lr"] == pytest.approx(3e-3 * 2.0) and rows[3]["lr_phase_multiplier"] == 2.0
    assert rows[6]["lr"] == pytest.approx(3e-3 * 0.5)


# ---------------------------------------------------------------- the seed's LR phases


def test_phase_schedule_at_every_boundary():
    cfg = GrokfastPhasesConfig(warmup_end=4, acceleration_end=10, consolidation_end=14, refinement_end=24, min_lr_ratio=0.1)
    fn = SCHEDULES.get("grokfast_phases")(cfg, 1000)
    expected = {
        0: ("warmup", 1 / 5), 3: ("warmup", 4 / 5),
        4: ("acceleration", 5.0), 9: ("acceleration", 5.0),
        10: ("consolidation", 0.2), 13: ("consolidation", 0.2),
        14: ("refinement", 1.0), 19: ("refinement", 0.1 + 0.9 * 0.5), 24: ("refinement", 0.1), 500: ("refinement", 0.1),
    }
    for step, (phase, value) in expected.items():
        assert fn(step) == pytest.approx(value, abs=1e-12), step
        assert fn.describe(step) == {"lr_phase": phase, "lr_phase_multiplier": pytest.approx(value, abs=1e-12)}
    seed = GrokfastPhasesConfig()  # the seed's numbers
    assert (seed.warmup_end, seed.acceleration_end, seed.consolidation_end, seed.refinement_end) == (1000, 6000, 8000, 18000)
    assert (seed.acceleration_multiplier, seed.consolidation_multiplier, seed.refinement_multiplier) == (5.0, 0.2, 1.0)
    frac = grokfast_phases(GrokfastPhasesConfig(unit="fraction", warmup_end=0.1, acceleration_end=0.5, consolidation_end=0.6, refinement_end=1.0), 200)
    assert frac.bounds == (20, 100, 120, 200)
    assert [frac.phase(s) for s in (19, 20, 99, 100, 119, 120)] == ["warmup", "acceleration", "acceleration", "consolidation", "consolidation", "refinement"]


@pytest.mark.parametrize("fields, message", [
    ({"acceleration_end": 500}, "warmup_end <= acceleration_end"),
    ({"unit": "fraction", "warmup_end": 0.1, "acceleration_end": 0.5, "consolidation_end": 0.6, "refinement_end": 1.5}, "in [0, 1]"),
    ({"warmup_end": 10.5}, "whole-step"),
])
def test_phase_schedule_rejects_bad_boundaries(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        GrokfastPhasesConfig(**fields)


# ---------------------------------------------------------------- the grokking task


def test_grokking_task_rows_and_split():
    task = ModularTask(97)
    rows = task.equations()
    assert rows.shape == (97 * 96, 5) and task.vocab_size == 99
    assert torch.equal(rows[:, 4], rows[:, 0] * rows[:, 2] % 97)
    assert (rows[:, 1] == 97).all() and (rows[:, 3] == 98).all() and rows[:, 2].min() == 1
    train, val = task.split(0.5, seed=0)
    assert len(train) == len(val) == 4656
    key = lambda r: set(map(tuple, r.tolist()))  # noqa: E731
    assert not key(train) & key(val) and key(train) | key(val) == key(rows)
    assert torch.equal(task.split(0.5, seed=0)[0], train) and not torch.equal(task.split(0.5, seed=1)[0], train)
    assert torch.equal(ModularTask(7, "+").equations()[:, 4], (ModularTask(7).equations()[:, 0] + ModularTask(7).equations()[:, 2]) % 7)
    div = ModularTask(7, "/").equations()
    assert torch.equal(div[:, 4] * div[:, 2] % 7, div[:, 0])  # c = x / y  <=>  c * y = x


# ---------------------------------------------------------------- the seed's pipeline options


def test_pipeline_use_grokfast_maps_to_the_ema_filter(tmp_path, small_text):
    tiny = {"arch": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}
    pipe = create_training_pipeline(model=tiny, train_data_path=str(small_text), use_grokfast=True,
                                    grokfast_alpha=0.9, grokfast_lambda=3.0, run_dir=str(tmp_path / "run"))
    raw = pipe.build_preset()
    assert raw["grad_filters"] == [{"name": "grokfast_ema", "alpha": 0.9, "lamb": 3.0}]
    assert load_preset(raw).grad_filters == [GrokfastEMAConfig(alpha=0.9, lamb=3.0)]
    bad = create_training_pipeline(model=tiny, train_data_path=str(small_text), use_grokfast=True, grokfast_alpha=2.0,
                                   run_dir=str(tmp_path / "bad")).setup()
    assert bad.error is not None and "grad_filters.0.alpha" in bad.error
