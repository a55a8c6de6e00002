"""Kill soak: SIGKILL a run at >= 10 instants, some at random times and some inside checkpoint writes, restart
it each time, and it must finish with bitwise the same per-step losses as a run never interrupted.

The random instants are a random train step of each launch plus a random fraction of a second, not a time from the
launch: on a fast machine (CI's) a 60-step run used to finish inside the start-up-plus-wait of a few launches,
leaving too few kills."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_preset
from lmforge.training.metrics import read_metrics

HELPER = REPO / "tests" / "helpers" / "soak_train.py"
KILLS = 10


def _command(nproc: int, preset: Path, run_dir: Path) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(HELPER), str(preset), str(run_dir)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(HELPER),
            str(preset), str(run_dir)]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "tokens_per_sec" in r}


def _launch(cmd: list[str], extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra_env}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (torchrun puts its workers in sessions of their own, so a process-group kill
    would leave them training)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launch and every process it started, as a power cut would."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _wait_for(marker: Path, proc: subprocess.Popen, limit: float = 120.0) -> None:
    """Until the launch has begun training (the helper creates `marker`), or it has exited."""
    deadline = time.monotonic() + limit
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_at_ten_instants_resumes_to_the_same_losses(tmp_path, small_text, nproc):
    preset = tiny_preset(small_text, max_steps=60, save_interval=2, eval_interval=10)
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    reference = subprocess.run(_command(nproc, path, tmp_path / "ref"), cwd=REPO, capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    rng = random.Random(nproc)
    run, kills, in_write, finished = tmp_path / "soaked", 0, 0, False
    log = []  # what each launch did, for the failure message
    for attempt in range(4 * KILLS):
        if kills >= KILLS:
            proc = _launch(_command(nproc, path, run), {})
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            finished = True
            break
        if attempt % 2 == 0:  # inside a checkpoint write: just before the N-th fsync of this session
            n = rng.randint(2, 12)
            proc = _launch(_command(nproc, path, run), {"SOAK_KILL_AT_FSYNC": str(n)})
            _, err = proc.communicate(timeout=300)
            log.append(("fsync", n, proc.returncode, max(_losses(run), default=0)))
            if proc.returncode == 0:  # fewer writes were left than N: the run finished before the kills did
                finished = True
                break
            assert "Traceback" not in err or nproc > 1, err[-3000:]  # torchrun reports the dead worker itself
            in_write += 1
        else:  # at a random instant after training started (mid-step, mid-eval or mid-save)
            started = tmp_path / f"started_{attempt}"
            at, wait = rng.randint(1, 6), rng.uniform(0.0, 0.1)
            proc = _launch(_command(nproc, path, run), {"SOAK_STARTED": str(started), "SOAK_STARTED_AT": str(at)})
            try:
                _wait_for(started, proc)
                proc.wait(timeout=wait)
                log.append(("instant", at, round(wait, 2), proc.returncode, max(_losses(run), default=0)))
                finished = proc.returncode == 0
                assert finished, proc.stderr.read()[-3000:]
                break
            except subprocess.TimeoutExpired:
                _kill_tree(proc)
                log.append(("instant", at, round(wait, 2), "killed", max(_losses(run), default=0)))
        kills += 1
    assert finished and kills >= KILLS and in_write >= KILLS // 2, (kills, in_write, log)
    ref, got = _losses(tmp_path / "ref"), _losses(run)
    assert sorted(got) == sorted(ref) == list(range(1, 61)), log
    assert all(got[s] == ref[s] for s in ref), [(s, got[s], ref[s]) for s in ref if got[s] != ref[s]][:5]
