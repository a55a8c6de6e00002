"""`lmforge eval`: the run's val split gives the trainer's own numbers; a whole source is evaluated too."""
import contextlib
import io
import json
import math
import subprocess

import pytest

from conftest import tiny_preset
from lmforge.cli import main
from lmforge.config import load_preset
from lmforge.training.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("eval")
    text = (shared_data / "tinyshakespeare.txt").read_text()[:40000]
    data = tmp / "head.txt"
    data.write_text(text[: text.rfind("\n") + 1])
    preset = tiny_preset(data, max_steps=20, eval_interval=20, save_interval=20, eval_batches=3)
    result = train(load_preset(preset), tmp / "run")
    return tmp / "run", result


def _eval(run, *args):
    """`lmforge eval` in this process (the CLI's own code path, without a fresh interpreter per call)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["eval", "--run-dir", str(run), *args])
    return subprocess.CompletedProcess([], rc, out.getvalue(), err.getvalue())


def test_eval_val_split_matches_trainer_and_writes_json(trained):
    run, result = trained
    proc = _eval(run, "--slot", "lm_current")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((run / "eval_lm_current.json").read_text())
    assert saved == json.loads(proc.stdout)
    assert saved["step"] == 20 and saved["batches"] == 3
    # dropout is off in eval, the batches are the same: the trainer's last val numbers come back
    assert saved["val_loss"] == pytest.approx(result.last_val["val_loss"], rel=1e-5)
    assert saved["val_ppl"] == pytest.approx(math.exp(saved["val_loss"]), rel=1e-9)
    assert saved["val_bpb"] == pytest.approx(result.last_val["val_bpb"], rel=1e-5)
    assert 0 < saved["val_accuracy"] < 1


def test_eval_whole_source(trained, shared_data, tmp_path):
    run, _ = trained
    text = (shared_data / "tinyshakespeare.txt").read_text()[100000:103000]
    other = tmp_path / "other.txt"
    other.write_text(text)
    spec = json.dumps({"type": "text", "path": str(other)})
    proc = _eval(run, "--data", spec)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # 3000 chars (all in the run's vocab), block 32, batch 4: every character but the first is a target once
    assert out["val_tokens"] == len(text) - 1
    assert out["batches"] == math.ceil(math.ceil((len(text) - 1) / 32) / 4)
    assert out["val_bpb"] > 0 and out["data"].startswith("source ")


def test_eval_bad_slot_fails_cleanly(trained):
    proc = _eval(trained[0], "--slot", "nope")
    assert proc.returncode == 2 and "lmforge: error" in proc.stderr


@pytest.mark.filterwarnings("ignore:char tokenizer. dropping characters")  # the other text has letters the run never saw
def test_eval_another_presets_val_split(trained, shared_data, tmp_path):
    run, _ = trained
    text = (shared_data / "tinyshakespeare.txt").read_text()[200000:230000]
    other = tmp_path / "other.txt"
    other.write_text(text)
    preset = tmp_path / "other.json"
    preset.write_text(json.dumps(tiny_preset(other)))
    proc = _eval(run, "--data", str(preset), "--batches", "2", "--slot", "best")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((run / "eval_best.json").read_text())
    assert out["batches"] == 2 and out["val_tokens"] == 2 * 4 * 32  # two full batches of the last 10% of other.txt
    assert out["data"] == f"val split of preset {preset}"


def test_eval_progress_bar_counts_the_batches_and_leaves_the_numbers_alone(trained, capsys):
    from lmforge.evaluation.run_eval import evaluate_run

    run, _ = trained
    quiet = evaluate_run(run, "lm_current", progress=False)
    assert capsys.readouterr().err == ""
    shown = evaluate_run(run, "lm_current", progress=True)
    err = capsys.readouterr().err
    assert "eval lm_current" in err and "3/3" in err
    assert shown == quiet
