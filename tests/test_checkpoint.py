"""Rolling checkpoints: rotation, verification, fallback, and kills at every point of a save."""
import json
import os
from pathlib import Path

import pytest
import torch

from lmforge.training import checkpoint as ck
from lmforge.training.checkpoint import CheckpointManager


def _save(manager: CheckpointManager, step: int) -> None:
    weights = {"w": torch.full((4, 4), float(step))}
    state = {"step": step, "optimizer": {"state": {}, "param_groups": []}, "rng": torch.get_rng_state()}
    manager.save_rolling(weights, state, {"step": step})


def _steps(manager: CheckpointManager) -> list[int]:
    return [step for step, _ in manager.candidates()]


def test_rotation_keeps_three_newest(tmp_path):
    m = CheckpointManager(tmp_path)
    for step in (1, 2, 3, 4, 5):
        _save(m, step)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["lm_current", "lm_prev", "lm_prev2"]
    assert [ck.read_meta(tmp_path / n)["step"] for n in ck.ROLLING] == [5, 4, 3]
    loaded = m.load_latest()
    assert loaded.slot == "lm_current" and torch.equal(loaded.model_state["w"], torch.full((4, 4), 5.0))
    assert loaded.train_state["step"] == 5


def test_state_file_loads_with_weights_only(tmp_path):
    m = CheckpointManager(tmp_path)
    _save(m, 1)
    torch.load(tmp_path / "lm_current" / ck.STATE_FILE, weights_only=True)


@pytest.mark.parametrize("victim", [ck.MODEL_FILE, ck.STATE_FILE])
def test_truncated_slot_falls_back_with_warning(tmp_path, victim):
    m = CheckpointManager(tmp_path)
    for step in (1, 2, 3):
        _save(m, step)
    path = tmp_path / "lm_current" / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="truncated"):
        loaded = m.load_latest()
    assert loaded.meta["step"] == 2


def test_bit_flip_detected_by_hash(tmp_path):
    m = CheckpointManager(tmp_path)
    _save(m, 1)
    _save(m, 2)
    path = tmp_path / "lm_current" / ck.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="SHA-256"):
        assert m.load_latest().meta["step"] == 1


def test_all_slots_bad_returns_none(tmp_path):
    m = CheckpointManager(tmp_path)
    _save(m, 1)
    (tmp_path / "lm_current" / ck.META_FILE).write_text("{")
    with pytest.warns(UserWarning):
        assert m.load_latest() is None


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", range(9))
def test_kill_at_any_point_of_rotation_keeps_whole_checkpoints(tmp_path, monkeypatch, kill_at):
    """Simulate a kill before the n-th filesystem mutation of a save: never fewer whole checkpoints than before."""
    m = CheckpointManager(tmp_path)
    for step in (1, 2, 3):
        _save(m, step)
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, ck.shutil.rmtree

    def counting(fn):
        def wrapper(*args, **kwargs):
            if calls["n"] == kill_at:
                raise _Killed()
            calls["n"] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ck.os, "replace", counting(real_replace))
    monkeypatch.setattr(ck.shutil, "rmtree", counting(real_rmtree))
    try:
        _save(m, 4)
    except _Killed:
        pass
    monkeypatch.undo()
    steps = _steps(m)
    assert len(steps) >= 3, steps
    assert steps[0] in (3, 4)
    assert m.load_latest().meta["step"] == steps[0]
    _save(m, 5)  # the next save cleans up whatever the kill left
    assert _steps(m)[:3] == [5, steps[0], steps[1]]


def test_named_slot_replaced_whole(tmp_path):
    m = CheckpointManager(tmp_path)
    m.save_named("best", {"w": torch.zeros(2)}, {"step": 1}, {"step": 1})
    m.save_named("best", {"w": torch.ones(2)}, {"step": 7}, {"step": 7})
    assert m.load("best").meta["step"] == 7
    with pytest.raises(ck.CheckpointError, match="present"):
        m.load("nope")


def test_unique_state_dict_stores_tied_weights_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    sd = ck.unique_state_dict(model)
    assert list(sd) == ["emb.weight"]
    from lmforge.training.state import load_model_state

    fresh = torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 4), "head": torch.nn.Linear(4, 10, bias=False)})
    fresh["head"].weight = fresh["emb"].weight
    load_model_state(fresh, sd)
    assert torch.equal(fresh["head"].weight, emb.weight)
    with pytest.raises(RuntimeError, match="lacks"):
        load_model_state(torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 4), "head": torch.nn.Linear(4, 10, bias=False)}), sd)


def test_slots_keep_their_preset_and_a_contradicting_resume_is_refused(tmp_path, small_text):
    from conftest import tiny_preset
    from lmforge.config import PresetError, load_preset
    from lmforge.training.trainer import train

    preset = tiny_preset(small_text, max_steps=6, save_interval=3, eval_interval=100)
    train(load_preset(preset), tmp_path / "run")
    meta = CheckpointManager(tmp_path / "run" / "checkpoints").load_latest().meta
    assert meta["run_preset"]["model"]["n_layer"] == 2 and meta["run_preset"]["model"]["vocab_size"] > 0
    changed = json.loads(json.dumps(preset))
    changed["model"]["n_layer"], changed["train"]["batch_size"] = 3, 8
    saved_preset = (tmp_path / "run" / "preset.json").read_text()
    with pytest.raises(PresetError, match=r"(?s)holds checkpoints \(lm_current\) of a different run:\n"
                       r"  model\.n_layer: 2 in the checkpoint, 3 now\n  train\.batch_size: 4 in the checkpoint, 8 now\n.*--run-dir"):
        train(load_preset(changed), tmp_path / "run")
    assert (tmp_path / "run" / "preset.json").read_text() == saved_preset  # refused before anything was written
    with pytest.raises(PresetError, match=r"train\.beta2: 0\.95 in the checkpoint, 0\.9 now"):  # restored with the optimizer
        train(load_preset(json.loads(json.dumps(preset)) | {"train": preset["train"] | {"beta2": 0.9}}), tmp_path / "run")
    longer = json.loads(json.dumps(preset))
    longer["train"]["max_steps"], longer["train"]["lr"] = 9, 1e-3  # steering what comes next is fine
    assert train(load_preset(longer), tmp_path / "run").resumed_from == 6
