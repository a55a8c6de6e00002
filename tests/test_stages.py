"""Stages that switch more than data: objective, trainable parameters, LR (multiplier or own schedule), optimizer options."""
import json
import signal

import pytest
import torch

from conftest import tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.training.callbacks import Callback
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train
from test_trainer import _run_helper


class Snapshots(Callback):
    """Every tensor of the model (parameters and buffers) at the start and after chosen steps."""

    def __init__(self, steps):
        self.steps, self.taken = set(steps), {}

    def _take(self, trainer):
        model = trainer.model
        return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}

    def on_train_start(self, trainer):
        self.taken[0] = self._take(trainer)

    def on_step_end(self, trainer, step, metrics):
        if step in self.steps:
            self.taken[step] = self._take(trainer)
            self.optimizer_state = {id(p) for p in trainer.optimizer.state}
            self.names = {id(p): n for n, p in trainer.model.named_parameters()}


def _staged(small_text, stages, **train):
    preset = tiny_preset(small_text, max_steps=12, save_interval=3, eval_interval=100, **train)
    preset["model"]["dropout"] = 0.0
    preset["stages"] = stages
    return preset


def test_trainable_stage_leaves_every_other_tensor_bitwise_unchanged(tmp_path, small_text):
    preset = _staged(small_text, [{"name": "top", "until_step": 5, "trainable": ["blocks.1.*"]}, {"name": "all"}])
    snaps = Snapshots([5, 6])
    train(load_preset(preset), tmp_path / "run", [snaps])
    before, after = snaps.taken[0], snaps.taken[5]
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.startswith("blocks.1.") for n in moved), moved
    assert {n for n in before if n.startswith("blocks.1.") and n.endswith("weight")} <= moved
    # stage 2 trains everything: the embedding moves from its first step on, and only now gets optimizer state
    assert not torch.equal(snaps.taken[6]["wte.weight"], after["wte.weight"])
    assert any(snaps.names[i] == "wte.weight" for i in snaps.optimizer_state)


def test_frozen_parameters_get_no_optimizer_state(tmp_path, small_text):
    preset = _staged(small_text, [{"name": "top", "until_step": 11, "trainable": ["blocks.1.*", "lm_head.*"]}, {"name": "all"}])
    snaps = Snapshots([4])
    train(load_preset(preset), tmp_path / "run", [snaps])
    named = {snaps.names[i] for i in snaps.optimizer_state}
    # lm_head is tied to wte here: the glob reaches the shared matrix under either name
    assert named and all(n.startswith("blocks.1.") or n == "wte.weight" for n in named), named
    assert "wte.weight" in named and not any(n.startswith("blocks.0.") for n in named)


def test_optimizer_state_carries_across_stages(tmp_path, small_text):
    preset = _staged(small_text, [{"name": "a", "until_step": 6, "trainable": ["blocks.*"]}, {"name": "b", "trainable": ["blocks.1.*"]}])
    trainer = Trainer(load_preset(preset), tmp_path / "run")
    trainer.fit()
    for name, p in trainer.model.named_parameters():
        state = trainer.optimizer.state.get(p, {})
        if name.startswith("blocks.1."):
            assert int(state["step"]) == 12, name  # Adam's moments kept counting through the boundary
        elif name.startswith("blocks.0."):
            assert int(state["step"]) == 6, name
        else:
            assert not state, name


def test_stage_objective_lr_schedule_and_optimizer_options(tmp_path, small_text):
    forge = {"name": "forge", "controller": {"warmup": 0, "compaction_end": 1.0, "start": 0.5, "peak": 0.5, "floor": 0.5}}
    preset = _staged(small_text, [
        {"name": "clm", "until_step": 4},
        {"name": "forge", "until_step": 8, "objective": forge, "lr": 0.5, "optimizer": {"weight_decay": 0.0}},
        {"name": "tail", "lr_schedule": {"name": "constant"}, "lr": 0.25},
    ], lr=1e-3, lr_schedule={"name": "constant", "warmup_steps": 0})
    seen = {}

    class Groups(Callback):
        def on_step_end(self, trainer, step, metrics):
            seen[step] = [(g["weight_decay"], g["decay"]) for g in trainer.optimizer.param_groups]

    train(load_preset(preset), tmp_path / "run", [Groups()])
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run") if "loss" in r}
    assert all("h_norm" not in rows[s] for s in range(1, 5)) and all("h_norm" in rows[s] for s in range(5, 9))
    assert all(rows[s]["alpha"] == 0.5 for s in range(5, 9))
    assert [rows[s]["lr"] for s in (1, 5, 9)] == [1e-3, 1e-3 * 0.5, 1e-3 * 0.25]
    assert seen[4] == [(0.1, True), (0.0, False)] and seen[5] == [(0.0, True), (0.0, False)]
    assert seen[12] == seen[5]  # optimizer options carry over to a stage that does not set them
    assert [rows[s]["stage_name"] for s in (4, 5, 9)] == ["clm", "forge", "tail"]


def test_sigkill_mid_stage_resumes_bitwise(tmp_path, small_text):
    """Killed in the middle of a stage with its own objective (stateful), trainable set, LR and optimizer options."""
    forge = {"name": "forge", "controller": {"warmup": 1, "compaction_end": 0.5}}
    preset = _staged(small_text, [
        {"name": "top", "until_step": 4, "trainable": ["blocks.1.*"], "lr": 2.0},
        {"name": "forge", "until_step": 9, "objective": forge, "optimizer": {"weight_decay": 0.0, "betas": [0.8, 0.9]}},
        {"name": "tail", "lr_schedule": {"name": "warmup_cosine", "warmup_steps": 1}},
    ])
    train(load_preset(preset), tmp_path / "ref")
    proc = _run_helper(preset, tmp_path, tmp_path / "killed", 8, "KILL")  # last save at 6: inside stage 'forge'
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = train(load_preset(preset), tmp_path / "killed")
    assert resumed.resumed_from == 6 and resumed.steps == 12
    ref = {r["step"]: r for r in read_metrics(tmp_path / "ref") if "loss" in r}
    got = {r["step"]: r for r in read_metrics(tmp_path / "killed") if "loss" in r}
    for step in range(1, 13):
        assert (got[step]["loss"], got[step]["lr"], got[step].get("alpha")) == (ref[step]["loss"], ref[step]["lr"], ref[step].get("alpha")), step


def test_resume_refuses_stage_ends_that_moved(tmp_path, small_text):
    preset = _staged(small_text, [{"name": "a", "until_fraction": 0.5}, {"name": "b"}])
    preset["train"]["max_steps"] = 8
    train(load_preset(preset), tmp_path / "run")  # checkpoint at step 8, stage b (steps 5-8)
    preset["train"]["max_steps"] = 20  # stage a would now span steps 1-10
    with pytest.raises(PresetError, match=r"checkpoint lm_current \(step 8\) is in stage 1 \(b\), which now spans steps 11-20"):
        train(load_preset(preset), tmp_path / "run")


@pytest.mark.parametrize("stage, message", [
    ({"name": "x", "trainable": ["blocks.9.*"]}, r"stages\.0\.trainable\.0: 'blocks\.9\.\*' matches no parameter"),
    ({"name": "x", "optimizer": {"momentum": 0.9}}, r"stages\.0\.optimizer\.momentum: not an option of this optimizer; allowed: .*betas"),
    ({"name": "x", "objective": {"name": "clmm"}}, r"stages\.0\.objective\.name: unknown objective 'clmm'; allowed: .*clm"),
    ({"name": "x", "lr_schedule": {"name": "cosine"}}, r"stages\.0\.lr_schedule\.name: unknown schedule 'cosine'"),
    ({"name": "x", "lr": 0}, r"stages\.0\.lr: Input should be greater than 0"),
])
def test_bad_stage_options_name_the_field(tmp_path, small_text, stage, message):
    with pytest.raises(PresetError, match=message):
        Trainer(load_preset(_staged(small_text, [stage])), tmp_path / "run")


def test_resolved_stage_plan_round_trips_through_preset_json(tmp_path, small_text):
    preset = _staged(small_text, [{"name": "a", "until_step": 4, "objective": {"name": "clm"}, "trainable": ["blocks.*"]}, {"name": "b"}])
    train(load_preset(preset), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "preset.json").read_text())
    assert saved["stages"][0]["objective"] == {"name": "clm"} and saved["stages"][0]["trainable"] == ["blocks.*"]
    load_preset(saved)  # the resolved preset validates again
