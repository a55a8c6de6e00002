"""DDP on CPU (gloo): 2 processes must train exactly like 1 process on the same global batch."""
import json
import os
import subprocess
import sys

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
