"""DDP on CPU (gloo): 2 processes must train exactly like 1 process on the same global batch."""
import json
import os
import subprocess
import sys
import time

import torch

from conftest import REPO, tiny_preset
from lmforge.training.checkpoint import CheckpointManager
from lmforge.training.metrics import read_metrics

HELPER = REPO / "tests" / "helpers" / "ddp_equivalence.py"


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_two_processes_equal_one_process(tmp_path, small_text):
    preset = tiny_preset(small_text)
    preset["model"]["dropout"] = 0.0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    single = subprocess.run([sys.executable, str(HELPER), str(path), str(tmp_path / "r1"), str(tmp_path / "one.pt"), "3", "4"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert single.returncode == 0, single.stderr
    double = _torchrun(2, str(HELPER), str(path), str(tmp_path / "r2"), str(tmp_path / "two.pt"), "3", "4")
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert len(one["grad_norms"]) == 3 and all(n > 0 for n in one["grad_norms"])
    torch.testing.assert_close(two["grad_norms"], one["grad_norms"], rtol=1e-5, atol=0)  # the global norm, across ranks
    for key in one["init"]:
        torch.testing.assert_close(two["init"][key], one["init"][key], rtol=0, atol=0)
    moved = [k for k in one["final"] if not torch.equal(one["final"][k], one["init"][k])]
    assert len(moved) > len(one["final"]) // 2  # the steps really trained
    for key in one["final"]:
        # Updates are ~1e-2 here; without gradient all-reduce the two runs differ by that much.
        # Adam turns fp32 summation-order noise on near-zero gradients into ~1e-5 differences.
        torch.testing.assert_close(two["final"][key], one["final"][key], rtol=1e-4, atol=1e-4)


def test_torchrun_train_cli_writes_once_and_resumes(tmp_path, small_text):
    preset = tiny_preset(small_text, max_steps=6, save_interval=3, eval_interval=3)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    run = tmp_path / "run"
    proc = _torchrun(2, "-m", "lmforge", "train", str(path), "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))  # rank 0 alone writes metrics
    assert rows[-1]["tokens"] == 6 * 2 * 4 * 32
    ckpt = CheckpointManager(run / "checkpoints").load_latest()
    assert ckpt.meta["step"] == 6 and len(ckpt.train_state["ranks"]) == 2
    assert ckpt.train_state["ranks"][0]["data"] != ckpt.train_state["ranks"][1]["data"]
    proc = _torchrun(2, "-m", "lmforge", "train", str(path), "--run-dir", str(run), "--train.max_steps", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, 9))


def test_a_nan_on_one_rank_is_skipped_by_both_and_a_rollback_keeps_them_in_step(tmp_path, small_text):
    """Rank 1 alone returns NaN at steps 4 and 7-8: every rank skips those steps (one verdict from the all-reduced
    loss and grad norm), and after two in a row both roll back to step 6 together and finish."""
    preset = tiny_preset(small_text, max_steps=12, save_interval=3, eval_interval=100, rollback_after=2)
    preset["objective"] = {"name": "python", "path": "helpers.my_losses:flaky",
                           "options": {"tag": "ddp", "bad_calls": [4, 7, 8], "only_rank": 1}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    run = tmp_path / "run"
    env_path = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lmforge", "train", str(path), "--run-dir", str(run), "--trust-code"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": env_path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "skipped_step" in r] == [4]  # steps 7-8 were rolled back past: their rows went
    assert [r["data_position"] for r in rows if "skipped_step" in r] == [{"batches_consumed": 4, "ranks": 2}]  # lockstep
    rollback = [r for r in rows if "rollback_from_step" in r]
    assert len(rollback) == 1 and rollback[0]["step"] == 6 and rollback[0]["rollback_from_step"] == 8
    ckpt = CheckpointManager(run / "checkpoints").load_latest()
    assert ckpt.meta["step"] == 12 and ckpt.train_state["guard"]["skipped_steps"] == 3
    assert all(r["data"]["batches_consumed"] == 12 + 2 for r in ckpt.train_state["ranks"])  # both skipped batches 7-8
    assert all(torch.isfinite(t).all() for t in ckpt.model_state.values())


def test_a_rank_that_dies_ends_the_run_quickly_with_one_line_and_a_restart_resumes(tmp_path, small_text):
    """Rank 1 is SIGKILLed at its 7th step: rank 0's next collective fails, it says so in one line (no traceback of
    its own) and torchrun ends the run within seconds, not at a collective timeout; a restart resumes exactly: the
    same per-step losses, bitwise, as a run that was never interrupted."""
    preset = tiny_preset(small_text, max_steps=12, save_interval=3, eval_interval=100)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "helpers" / "soak_train.py"), str(path), str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**env, "SOAK_KILL_AT_STEP": "7", "SOAK_KILL_RANK": "1"})
    took = time.perf_counter() - t0
    assert proc.returncode != 0 and took < 90, (proc.returncode, took)
    lines = [line for line in proc.stderr.splitlines() if "lmforge: error: process 0 lost another process" in line]
    assert len(lines) == 1 and "restart with the same number of processes" in lines[0], proc.stderr[-3000:]
    assert "[rank0]: Traceback" not in proc.stderr
    assert CheckpointManager(run / "checkpoints").load_latest().meta["step"] == 6
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert proc.returncode == 0 and "resumed from lm_current at step 6" in proc.stderr, proc.stderr[-3000:]
    resumed = {r["step"]: r["loss"] for r in read_metrics(run) if "tokens_per_sec" in r}
    assert list(resumed) == list(range(1, 13))
    whole = tmp_path / "uninterrupted"
    proc = subprocess.run(cmd[:-1] + [str(whole)], capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert resumed == {r["step"]: r["loss"] for r in read_metrics(whole) if "tokens_per_sec" in r}
