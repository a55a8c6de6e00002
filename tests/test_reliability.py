"""A NaN, an infinite gradient or a spike never reaches the weights; runs of them roll back; slots stay finite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import REPO, tiny_preset
from lmforge.config import load_preset
from lmforge.training.checkpoint import ROLLING, CheckpointManager, nonfinite_tensors, read_slot, write_slot
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train


def _flaky(small_text, tag, steps=40, objective_options=None, **train):
    raw = tiny_preset(small_text, max_steps=steps, save_interval=10, eval_interval=10, **train)
    raw["objective"] = {"name": "python", "path": "helpers.my_losses:flaky", "options": {"tag": tag, **(objective_options or {})}}
    return load_preset(raw, trust_code=True)


def _all_slots_finite(run_dir) -> None:
    manager = CheckpointManager(run_dir / "checkpoints")
    for _, path in manager.candidates():
        ckpt = read_slot(path)
        assert not nonfinite_tensors(ckpt.model_state), path.name
        assert not nonfinite_tensors(ckpt.train_state["optimizer"]), path.name


def test_nan_loss_at_step_23_is_skipped_and_the_run_reaches_step_40(small_text, tmp_path):
    """The issue's report: a loss that is NaN once, at step 23 of 40, used to stop the run and poison lm_current."""
    result = train(_flaky(small_text, "nan23", objective_options={"bad_calls": [23]}), tmp_path)
    assert result.steps == 40 and result.stop_reason == "completed"
    rows = read_metrics(tmp_path)
    skips = [r for r in rows if "skipped_step" in r]
    assert [r["step"] for r in skips] == [23] and "loss is nan" in skips[0]["skipped_step"]
    assert skips[0]["data_position"] == {"rank": 0, "batches_consumed": 23}
    last = [r for r in rows if "tokens_per_sec" in r][-1]
    assert last["step"] == 40 and last["skipped_steps"] == 1 and last["loss"] == last["loss"]  # finite, not NaN
    assert read_slot(tmp_path / "checkpoints" / "lm_current").train_state["guard"]["skipped_steps"] == 1
    _all_slots_finite(tmp_path)


@pytest.mark.parametrize("kind", ["nan", "inf_grad"])
def test_a_bad_step_changes_no_parameter_and_no_optimizer_state(small_text, tmp_path, kind):
    """A NaN loss, or a finite loss with an infinite gradient: weights and Adam's moments and step count untouched."""
    trainer = Trainer(_flaky(small_text, f"unchanged-{kind}", objective_options={"bad_calls": [3], "kind": kind}), tmp_path)
    model, data = trainer.wrapped_model(), iter(trainer.train_data)
    for _ in range(2):
        trainer.train_step(model, data)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optim = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(trainer.optimizer.state.values())}
    _, _, grad_norm, verdict = trainer.train_step(model, data)
    assert not verdict.apply and verdict.skip_reason.startswith("loss is nan" if kind == "nan" else "grad norm is")
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items())
    after = {i: s for i, s in enumerate(trainer.optimizer.state.values())}
    assert all(torch.equal(v, after[i][k]) for i, s in optim.items() for k, v in s.items())
    assert all(p.grad is None for p in trainer.model.parameters())
    _, _, _, verdict = trainer.train_step(model, data)  # the next good step trains as usual
    assert verdict.apply and not any(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)


def test_five_bad_steps_in_a_row_roll_back_past_their_batches(small_text, tmp_path):
    """Steps 23-27 fail; after the fifth the run reloads the step-20 checkpoint and skips the 7 batches since it."""
    result = train(_flaky(small_text, "rollback", objective_options={"bad_calls": [23, 24, 25, 26, 27]}), tmp_path)
    assert result.steps == 40 and result.stop_reason == "completed"
    rows = read_metrics(tmp_path)
    rollback = [r for r in rows if "rollback_from_step" in r]
    assert len(rollback) == 1 and rollback[0]["step"] == 20 and rollback[0]["rollback_from_step"] == 27
    assert rollback[0]["rollback_batches_skipped"] == 7 and rollback[0]["skipped_steps"] == 5
    steps = [r["step"] for r in rows if "tokens_per_sec" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # steps never repeat in metrics.jsonl
    state = read_slot(tmp_path / "checkpoints" / "lm_current").train_state
    assert state["guard"]["rollbacks"] == 1 and state["guard"]["skipped_steps"] == 5
    assert state["ranks"][0]["data"]["batches_consumed"] == 40 + 7  # the failed batches were never trained on again
    _all_slots_finite(tmp_path)


def test_a_run_that_cannot_get_past_stops_naming_the_step_and_data_position(small_text, tmp_path):
    result = train(_flaky(small_text, "stuck", objective_options={"bad_from": 23}, max_rollbacks=2), tmp_path)
    # steps 23-27 fail, back to step 20 past batch 27; 21-25 fail, back past batch 32; 21-25 fail (batches 33-37): stop
    assert result.stop_reason.startswith("stuck: 5 bad steps in a row up to step 25 at data position "
                                         "{'rank': 0, 'batches_consumed': 37} (loss is nan); 2 rollbacks in a row"), result.stop_reason
    rollbacks = [r for r in read_metrics(tmp_path) if "rollback_from_step" in r]
    assert [r["rollback_batches_skipped"] for r in rollbacks] == [7, 12]
    _all_slots_finite(tmp_path)


def test_spikes_are_skipped_when_asked(small_text, tmp_path):
    spiky = {"objective_options": {"bad_calls": [30], "kind": "spike"}, "skip_spikes": {"window": 16, "min_history": 8, "sigma": 6}}
    train(_flaky(small_text, "spike", **spiky), tmp_path / "on")
    skips = [r for r in read_metrics(tmp_path / "on") if "skipped_step" in r]
    assert [r["step"] for r in skips] == [30] and skips[0]["skipped_step"].startswith("loss spike")
    train(_flaky(small_text, "spike-off", objective_options={"bad_calls": [30], "kind": "spike"}), tmp_path / "off")
    assert not any("skipped_step" in r for r in read_metrics(tmp_path / "off"))  # off by default


def test_with_the_guard_off_a_nan_still_stops_the_run_and_no_slot_takes_the_nan_weights(small_text, tmp_path):
    preset = _flaky(small_text, "guard-off", objective_options={"bad_calls": [23]}, skip_nonfinite=False, log_interval=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(preset, tmp_path)
    assert result.stop_reason.startswith("loss is nan at step 23")
    assert any("checkpoint not written: non-finite values" in str(w.message) for w in caught)
    assert json.loads((tmp_path / "checkpoints" / "lm_current" / "meta.json").read_text())["step"] == 20
    _all_slots_finite(tmp_path)


def test_a_save_refuses_non_finite_gradient_filter_state(tmp_path):
    """A Grokfast EMA holding NaN would poison every later gradient: such a state is never written."""
    manager = CheckpointManager(tmp_path)
    state = {"step": 5, "optimizer": {}, "grad_filters": [{"ema": {"w": torch.tensor([0.0, float("inf")])}}]}
    with pytest.warns(UserWarning, match="not written: non-finite values in grad_filters.0.ema.w"):
        assert manager.save("rolling", {"w": torch.ones(2)}, state, {"step": 5}) is None
    assert not manager.candidates()


def test_loading_skips_a_slot_with_non_finite_weights(tmp_path):
    """A slot written by an older lmforge (or another tool) holding NaN weights: the previous slot is resumed instead."""
    manager = CheckpointManager(tmp_path)
    good = {"w": torch.ones(3)}
    write_slot(tmp_path / ROLLING[1], good, {"step": 10, "optimizer": {}}, {"step": 10})
    write_slot(tmp_path / ROLLING[0], {"w": torch.tensor([1.0, float("nan"), 1.0])}, {"step": 20, "optimizer": {}}, {"step": 20})
    with pytest.warns(UserWarning, match="lm_current is unusable.*non-finite values in w"):
        ckpt = manager.load_latest()
    assert ckpt.slot == ROLLING[1] and torch.equal(ckpt.model_state["w"], good["w"])


def test_a_disk_that_fills_mid_run_ends_it_with_one_line_and_the_earlier_slots_whole(small_text, tmp_path):
    """From step 15 on no file may grow past 64 KiB: the step-20 checkpoint write fails inside safetensors. The run
    exits 74 with one line naming the slot, the reason and the free space; the step-10 slot resumes."""
    raw = tiny_preset(small_text, max_steps=30, save_interval=10, eval_interval=100, legacy_weights_file=None)
    raw["objective"] = {"name": "python", "path": "helpers.my_losses:fills_the_disk"}
    preset, run_dir = tmp_path / "preset.json", tmp_path / "run"
    preset.write_text(json.dumps(raw))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "lmforge", "train", str(preset), "--run-dir", str(run_dir), "--trust-code", "--train.progress_bar", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**env, "FILL_DISK_AT_CALL": "15"}, timeout=300)
    assert proc.returncode == 74, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lmforge: error:")]
    assert len(errors) == 1 and "lm_next" in errors[0] and "File too large" in errors[0] and "MiB free there" in errors[0]
    slots = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert slots == ["lm_current"]  # the half-written lm_next is gone
    assert CheckpointManager(run_dir / "checkpoints").load_latest().meta["step"] == 10
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0 and "resumed from lm_current at step 10" in proc.stderr, proc.stderr  # room again: resumes


def test_async_save_writes_the_same_slots_and_a_kill_during_its_write_keeps_the_earlier_ones(small_text, tmp_path):
    raw = tiny_preset(small_text, max_steps=12, save_interval=3, eval_interval=100)
    train(load_preset(raw), tmp_path / "sync")
    raw["train"]["async_save"] = True
    train(load_preset(raw), tmp_path / "async")
    losses = {name: {r["step"]: r["loss"] for r in read_metrics(tmp_path / name) if "tokens_per_sec" in r} for name in ("sync", "async")}
    assert losses["sync"] == losses["async"]
    for slot in ROLLING:  # the same slots, written from the background thread
        a, b = (read_slot(tmp_path / name / "checkpoints" / slot) for name in ("sync", "async"))
        assert a.meta["step"] == b.meta["step"] and all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
        assert a.train_state["optimizer"]["state"].keys() == b.train_state["optimizer"]["state"].keys()
    # SIGKILL from inside the background write of the second save (the 7th fsync: 5 per rolling save)
    preset, run = tmp_path / "preset.json", tmp_path / "killed"
    preset.write_text(json.dumps(raw))
    cmd = [sys.executable, str(REPO / "tests" / "helpers" / "soak_train.py"), str(preset), str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "SOAK_KILL_AT_FSYNC": "7"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert CheckpointManager(run / "checkpoints").load_latest().meta["step"] == 3
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and "resumed from lm_current at step 3" in proc.stderr, proc.stderr[-2000:]
    assert {r["step"]: r["loss"] for r in read_metrics(run) if "tokens_per_sec" in r} == losses["sync"]


def _failing_fsync(monkeypatch, error: BaseException, after: int) -> None:
    """Every fsync of a checkpoint file after the first `after` raises `error` (the slot write in progress fails)."""
    import lmforge.training.checkpoint as checkpoint

    real, calls = checkpoint._fsync_path, {"n": 0}

    def fsync(path):
        calls["n"] += 1
        if calls["n"] > after:
            raise error
        real(path)

    monkeypatch.setattr(checkpoint, "_fsync_path", fsync)


@pytest.mark.parametrize("async_save", [False, True])
def test_a_disk_that_turns_read_only_mid_run_exits_74_with_one_line(small_text, tmp_path, monkeypatch, capsys, async_save):
    """EROFS from the second save on (sync, and from async_save's background thread): exit 74, one line naming the
    slot, "Read-only file system" and the free space, no traceback; the first slot stays whole and resumes."""
    import errno

    from lmforge.cli import main as cli_main

    raw = tiny_preset(small_text, max_steps=12, save_interval=4, eval_interval=100, legacy_weights_file=None, async_save=async_save)
    preset, run_dir = tmp_path / "preset.json", tmp_path / "run"
    preset.write_text(json.dumps(raw))
    _failing_fsync(monkeypatch, OSError(errno.EROFS, os.strerror(errno.EROFS), str(run_dir / "checkpoints")), after=5)  # 5 per slot
    assert cli_main(["train", str(preset), "--run-dir", str(run_dir)]) == 74
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
    assert len(lines) == 1 and "lm_next" in lines[0] and "Read-only file system" in lines[0] and "MiB free there" in lines[0]
    assert "make room or fix the permissions" in lines[0]
    assert CheckpointManager(run_dir / "checkpoints").load_latest().meta["step"] == 4
    monkeypatch.undo()
    assert cli_main(["train", str(preset), "--run-dir", str(run_dir)]) == 0
    assert "resumed from lm_current at step 4" in capsys.readouterr().err


def test_an_unexpected_error_in_the_background_write_is_raised_in_the_loop(small_text, tmp_path, monkeypatch):
    """A background write that fails for a reason other than the disk is not lost in its thread: the next save (or
    the end of the run) raises it, and the slot written before it is whole."""
    raw = tiny_preset(small_text, max_steps=12, save_interval=4, eval_interval=100, legacy_weights_file=None, async_save=True)
    _failing_fsync(monkeypatch, ValueError("not a disk problem"), after=5)
    with pytest.raises(ValueError, match="not a disk problem"):
        train(load_preset(raw), tmp_path)
    assert CheckpointManager(tmp_path / "checkpoints").load_latest().meta["step"] == 4


def test_the_spike_window_keeps_non_finite_values_out_and_needs_its_history():
    from lmforge.training.step_guard import SpikeWindow

    window = SpikeWindow(window=4, sigma=3.0, min_history=3)
    for value in (1.0, float("nan"), 1.2, float("inf"), 0.8):
        window.push(value)
    assert list(window.values) == [1.0, 1.2, 0.8]  # NaN and inf never enter the statistics
    assert window.z_score(1.0) == pytest.approx(0.0)
    assert window.z_score(2.0) == pytest.approx(5.0)  # mean 1.0, sample std 0.2
    window.push(1.4)
    window.push(1.6)
    assert list(window.values) == [1.2, 0.8, 1.4, 1.6]  # rolling: the oldest drops out
    assert SpikeWindow(window=4, sigma=3.0, min_history=3).z_score(100.0) is None  # too little history: never a spike


def _guard(**spikes):
    from lmforge.config import SkipSpikesConfig
    from lmforge.runtime import Runtime
    from lmforge.training.step_guard import StepGuard

    return StepGuard(True, SkipSpikesConfig(**spikes), Runtime(device=torch.device("cpu"), precision="fp32"))


def test_a_grad_norm_spike_is_skipped_and_a_fall_never_is():
    guard = _guard(window=16, sigma=6.0, min_history=8)
    for i in range(12):
        assert guard.check(torch.tensor(2.0 + 0.01 * (i % 3)), torch.tensor(1.0 + 0.02 * (i % 4)), False).apply
    verdict = guard.check(torch.tensor(2.01), torch.tensor(50.0), False)  # the loss is normal, the gradient is not
    assert not verdict.apply and verdict.skip_reason.startswith("grad_norm spike: 50") and guard.skipped_steps == 1
    assert guard.check(torch.tensor(0.1), torch.tensor(0.01), False).apply  # a sudden drop is never harmful
    verdict = guard.check(torch.tensor(float("nan")), torch.tensor(1.0), False)
    assert verdict.skip_reason == "loss is nan" and guard.consecutive_bad == 1 and guard.skipped_steps == 2


def test_the_spike_window_is_restored_on_resume_so_the_verdicts_continue_exactly():
    """A guard rebuilt from its checkpointed state gives the very verdicts the running one gives."""
    losses = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0, 2.1, 1.9, 9.0, 2.0, 2.02, 14.0]
    running = _guard(window=8, sigma=4.0, min_history=4)
    assert all(running.check(torch.tensor(v), torch.tensor(1.0 + v / 100), False).apply for v in losses[:6])
    resumed = _guard(window=8, sigma=4.0, min_history=4)
    resumed.load_state_dict(json.loads(json.dumps(running.state_dict())))  # through the checkpoint's JSON-able form
    rest = [tuple(g.check(torch.tensor(v), torch.tensor(1.0 + v / 100), False).apply for g in (running, resumed)) for v in losses[6:]]
    assert all(a == b for a, b in rest) and [a for a, _ in rest] == [True, True, False, True, True, False]
    assert resumed.state_dict() == running.state_dict()
    fresh = _guard(window=8, sigma=4.0, min_history=4)  # without the restored window the 9.0 spike would be missed
    assert [fresh.check(torch.tensor(v), torch.tensor(1.0), False).apply for v in losses[6:9]] == [True, True, True]
