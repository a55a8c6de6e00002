"""The training loop end to end on real text: metrics, eval, checkpoints, exact resume, signals."""
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_preset
from lmforge.config import load_preset
from lmforge.training.callbacks import Callback
from lmforge.training.checkpoint import CheckpointManager
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train

HELPER = REPO / "tests" / "helpers" / "train_and_signal.py"


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def _run_helper(preset: dict, tmp_path: Path, run_dir: Path, step: int, sig: str) -> subprocess.CompletedProcess:
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    return subprocess.run([sys.executable, str(HELPER), str(path), str(run_dir), str(step), sig],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_training_run_writes_metrics_checkpoints_samples(tmp_path, small_text):
    seen = []

    class Record(Callback):
        def on_step_end(self, trainer, step, metrics):
            seen.append(("step", step))

        def on_eval(self, trainer, step, metrics):
            seen.append(("eval", step))

        def on_save(self, trainer, step, slot):
            seen.append((slot, step))

    result = train(load_preset(tiny_preset(small_text, tensorboard=True)), tmp_path / "run", [Record()])
    run = tmp_path / "run"
    assert result.steps == 12 and result.stop_reason == "completed"
    rows = read_metrics(run)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    for key in ("step", "tokens", "loss", "lr", "tokens_per_sec", "mfu", "elapsed", "grad_norm", "ce"):
        assert key in train_rows[0], key
    assert train_rows[-1]["tokens"] == 12 * 4 * 32
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert all(0 < r["mfu"] < 1 for r in train_rows)
    peaks = {r["tflops"] * 1e12 / r["mfu"] for r in train_rows}  # one peak for the whole run: MFU moves only with speed
    assert max(peaks) == pytest.approx(min(peaks), rel=1e-9)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert all(math.isclose(r["val_bpc"], r["val_loss"] / math.log(2), rel_tol=1e-6) for r in evals)  # char level, ASCII
    resolved = json.loads((run / "preset.json").read_text())
    assert resolved["train"]["max_steps"] == 12 and resolved["data"]["tokenizer"]["type"] == "char"
    assert resolved["model"]["vocab_size"] == len(json.loads((run / "vocab.json").read_text()))
    assert (run / "vocab.json").exists()
    assert ("step", 12) in seen and ("eval", 12) in seen and ("rolling", 12) in seen and ("best", 4) in seen
    ckpts = CheckpointManager(run / "checkpoints")
    assert [s for s, _ in ckpts.candidates()] == [12, 9, 6]
    assert ckpts.load("best").meta["step"] == min(evals, key=lambda r: r["val_loss"])["step"]
    legacy = torch.load(run / "simple_lm_trained.pth", weights_only=True)
    assert torch.equal(legacy[next(iter(legacy))], ckpts.load_latest().model_state[next(iter(legacy))])
    assert list((run / "samples").glob("step_*.txt"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_exact_resume_after_sigkill(tmp_path, small_text):
    """Killed at step 8 (last save at 6), restarted: steps 7..12 give bitwise the same losses."""
    preset = tiny_preset(small_text, max_steps=12, save_interval=3)
    reference = train(load_preset(preset), tmp_path / "ref")
    assert reference.steps == 12
    proc = _run_helper(preset, tmp_path, tmp_path / "killed", 8, "KILL")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert max(_losses(tmp_path / "killed")) == 8
    resumed = train(load_preset(preset), tmp_path / "killed")
    assert resumed.resumed_from == 6 and resumed.steps == 12
    ref, got = _losses(tmp_path / "ref"), _losses(tmp_path / "killed")
    assert sorted(got) == list(range(1, 13))  # rows after the checkpoint were replaced, not duplicated
    for step in range(1, 13):
        assert got[step] == ref[step], (step, got[step], ref[step])
    elapsed = [r["elapsed"] for r in read_metrics(tmp_path / "killed") if "loss" in r]
    assert elapsed == sorted(elapsed)  # wall time counts the earlier session too


def test_sigterm_saves_and_stops_gracefully(tmp_path, small_text):
    preset = tiny_preset(small_text, max_steps=50, save_interval=100, eval_interval=100)
    proc = _run_helper(preset, tmp_path, tmp_path / "run", 5, "TERM")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"steps": 5, "stop_reason": "signal SIGTERM"}
    assert CheckpointManager(tmp_path / "run" / "checkpoints").load_latest().meta["step"] == 5


def test_corrupt_current_slot_resumes_from_previous(tmp_path, small_text):
    preset = tiny_preset(small_text, max_steps=9, save_interval=3)
    train(load_preset(preset), tmp_path / "run")
    state = tmp_path / "run" / "checkpoints" / "lm_current" / "model.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    preset["train"]["max_steps"] = 12
    with pytest.warns(UserWarning, match="lm_current"):
        result = train(load_preset(preset), tmp_path / "run")
    assert result.resumed_from == 6 and result.steps == 12


def test_early_stopping(tmp_path, small_text):
    # lr 0 never improves the val loss after the first evaluation
    preset = tiny_preset(small_text, max_steps=40, lr=1e-9, eval_interval=2, early_stopping_patience=2,
                         early_stopping_min_delta=1.0)
    result = train(load_preset(preset), tmp_path / "run")
    assert result.stop_reason.startswith("early stopping") and result.steps == 6


def test_budget_from_train_tokens(tmp_path, small_text):
    preset = tiny_preset(small_text, max_steps=None, train_tokens=4 * 32 * 5 + 1)
    trainer = Trainer(load_preset(preset), tmp_path / "run")
    assert trainer.total_steps == 6


def test_grad_accumulation_matches_bigger_batch(tmp_path, small_text):
    """batch 4 x accum 2 and batch 8 x accum 1 see the same data and reach the same weights (dropout off)."""
    base = tiny_preset(small_text, max_steps=3, save_interval=100, eval_interval=100)
    base["model"]["dropout"] = 0.0
    base["data"]["shuffle_buffer"] = 0
    a = Trainer(load_preset(base | {"train": base["train"] | {"batch_size": 8, "grad_accum_steps": 1}}), tmp_path / "a")
    b = Trainer(load_preset(base | {"train": base["train"] | {"batch_size": 4, "grad_accum_steps": 2}}), tmp_path / "b")
    batches = [next(iter(a.train_data)) for _ in range(1)]
    big = batches[0]
    halves = [{k: v[:4] for k, v in big.items()}, {k: v[4:] for k, v in big.items()}]
    a.train_step(a.model, iter([big]))
    b.train_step(b.model, iter(halves))
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-4)  # Adam magnifies summation-order noise on near-zero grads


def test_unwritable_run_dir_is_a_clear_error(tmp_path, small_text):
    if os.geteuid() == 0:
        target = Path("/proc/lmforge_cannot_write_here")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "run"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(tiny_preset(small_text)))
    proc = subprocess.run([sys.executable, "-m", "lmforge", "train", str(path), "--run-dir", str(target)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_path_is_a_clear_error(tmp_path, small_text):
    preset = tiny_preset(tmp_path / "does_not_exist.txt")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    proc = subprocess.run([sys.executable, "-m", "lmforge", "train", str(path), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "does_not_exist.txt" in proc.stderr and "Traceback" not in proc.stderr


def test_milestone_snapshots_keep_last_k(tmp_path, small_text):
    preset = tiny_preset(small_text, max_steps=10, milestone_interval=2, milestone_prefix="vgt_8L_step_", keep_milestones=2)
    train(load_preset(preset), tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("vgt_8L_step_"))
    assert names == ["vgt_8L_step_10", "vgt_8L_step_8"]
    assert CheckpointManager(tmp_path / "run" / "checkpoints").load("vgt_8L_step_8").meta["step"] == 8
