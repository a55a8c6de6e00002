"""`lmforge compare`, the budgets it sets, and the per-run views (`plot`, `runs`, `presets`) and the W&B sink."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmforge
from conftest import REPO, tiny_preset
from lmforge.cli import main
from lmforge.compare import load_spec, recipe_names, run_compare, spec_from_presets, summarize_run
from lmforge.config import load_preset
from lmforge.errors import PresetError
from lmforge.run_shape import training_flops_per_token
from lmforge.training.metrics import read_metrics


def _preset_file(tmp_path, name, data, **train):
    raw = tiny_preset(data, **{"max_steps": 6, "eval_interval": 3, "save_interval": 3, **train})
    raw["name"] = name
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


def _readable(path) -> bool:
    try:
        path.read_text()
        return True
    except OSError:
        return False


def _val(run_dir):
    return [r for r in read_metrics(run_dir) if "val_loss" in r]


def test_two_presets_give_a_table_plots_and_a_report_and_finished_runs_are_reused(tmp_path, small_text):
    a = _preset_file(tmp_path, "base", small_text)
    b = _preset_file(tmp_path, "wider", small_text)
    raw_b = json.loads(b.read_text())
    raw_b["model"]["n_embd"] = 48
    b.write_text(json.dumps(raw_b))
    spec = spec_from_presets([str(a), str(b)], "steps", 5, [3], {})
    out = tmp_path / "cmp"
    result = run_compare(spec, out, echo=False)
    assert [o.status for o in result.outcomes] == ["trained", "trained"]
    rows = {r["name"]: r for r in json.loads((out / "compare.json").read_text())["table"]}
    for outcome in result.outcomes:  # the budget and the seed reached the run; the table holds its final eval
        preset = json.loads((outcome.run_dir / "preset.json").read_text())
        assert preset["train"]["max_steps"] == 5 and preset["train"]["seed"] == 3 and preset["data"]["seed"] == 3
        assert rows[outcome.planned.name]["val_loss"] == _val(outcome.run_dir)[-1]["val_loss"]
        assert rows[outcome.planned.name]["steps"] == 5
    assert rows["wider"]["val_loss_delta"] == pytest.approx(rows["wider"]["val_loss"] - rows["base"]["val_loss"])
    assert rows["wider"]["params"] > rows["base"]["params"]
    assert rows["base"]["flops"] == pytest.approx(5 * 4 * 32 * training_flops_per_token(load_preset(
        json.loads((result.outcomes[0].run_dir / "preset.json").read_text())), 32))
    table = (out / "table.md").read_text()
    assert "| base |" in table and "| wider |" in table and "val bpb" in table
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    for png in ("val_loss.png", "loss_terms.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    before = [(o.run_dir / "metrics.jsonl").read_text() for o in result.outcomes]
    again = run_compare(spec, out, echo=False)
    assert [o.status for o in again.outcomes] == ["reused", "reused"]
    assert [(o.run_dir / "metrics.jsonl").read_text() for o in again.outcomes] == before
    assert again.table == result.table


def test_a_failing_run_is_a_row_not_the_end(tmp_path, small_text):
    good = _preset_file(tmp_path, "good", small_text)
    bad = _preset_file(tmp_path, "bad", tmp_path / "missing.txt")
    result = run_compare(spec_from_presets([str(good), str(bad)], "steps", 4, [1], {}), tmp_path / "out", echo=False)
    assert [o.status for o in result.outcomes] == ["trained", "failed"]
    assert "missing.txt" in result.outcomes[1].error
    assert "Failed runs:" in result.table and "missing.txt" in result.table
    assert result.groups[0].summaries[0].val_loss is not None


def test_seeds_give_mean_and_std(tmp_path, small_text):
    a = _preset_file(tmp_path, "a", small_text)
    result = run_compare(spec_from_presets([str(a)], "steps", 4, [1, 2], {}), tmp_path / "out", echo=False)
    losses = [s.val_loss for s in result.groups[0].summaries]
    assert len(losses) == 2 and losses[0] != losses[1]  # the seed changed init and data order
    row = json.loads((tmp_path / "out" / "compare.json").read_text())["table"][0]
    assert row["val_loss"] == pytest.approx(statistics.fmean(losses))
    assert row["val_loss_std"] == pytest.approx(statistics.stdev(losses))
    assert f"{row['val_loss']:.4f} ± {row['val_loss_std']:.4f}" in result.table


def test_token_and_flop_budgets_set_the_steps(tmp_path, small_text):
    raw = tiny_preset(small_text, max_steps=None, train_tokens=1000)  # 4 x 32 = 128 tokens per step
    assert lmforge.train(raw, run_dir=tmp_path / "tokens").steps == math.ceil(1000 / 128)
    assert json.loads((tmp_path / "tokens" / "preset.json").read_text())["model"]["vocab_size"] == 58
    probe = load_preset(tiny_preset(small_text))
    per_token = training_flops_per_token(probe.model_copy(update={"model": probe.model.model_copy(update={"vocab_size": 58})}), 32)
    for steps_worth, steps in ((5.01, 6), (4.99, 5)):  # the count must be exact to a fraction of a percent
        raw = tiny_preset(small_text, max_steps=None, train_flops=steps_worth * per_token * 128)
        assert lmforge.train(raw, run_dir=tmp_path / f"flops{steps}").steps == steps


def test_a_time_budget_stops_with_a_final_eval_and_save(tmp_path, small_text):
    raw = tiny_preset(small_text, max_steps=100_000, max_seconds=3.0, eval_interval=10_000, save_interval=10_000)
    result = lmforge.train(raw, run_dir=tmp_path / "timed")
    assert 0 < result.steps < 100_000 and result.stop_reason.startswith("time budget")
    assert result.elapsed >= 3.0
    assert _val(tmp_path / "timed")[-1]["step"] == result.steps  # evaluated where it stopped
    saved = json.loads((tmp_path / "timed" / "result.json").read_text())
    assert saved["steps"] == result.steps and saved["stop_reason"] == result.stop_reason
    assert summarize_run(tmp_path / "timed").status.startswith("time budget")


def test_recipe_specs_load_and_plan(tmp_path):
    from lmforge.compare.spec import plan_runs

    names = recipe_names()
    assert {"forge", "bitnet", "grokfast", "agiformer", "mdlm"} <= set(names)
    for name in names:
        spec = load_spec(name)
        planned = plan_runs(spec)  # every run is a valid preset
        assert len(planned) == len(spec.runs) * len(spec.seeds) and spec.verdict
    with pytest.raises(PresetError, match="the recipes are: .*forge"):
        load_spec("no_such_recipe")


def test_cli_compare_errors_name_the_problem(tmp_path, small_text, capsys):
    a = _preset_file(tmp_path, "a", small_text)
    assert main(["compare", str(a), "--budget", "epochs", "3"]) == 2
    assert "steps, tokens, flops, seconds" in capsys.readouterr().err
    assert main(["compare", str(a), "--seeds", "1,x"]) == 2
    assert main(["compare", str(a), "--train.lr", "-1", "--budget", "steps", "2"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_runs_plot_and_presets_commands(tmp_path, small_text, capsys):
    a = _preset_file(tmp_path, "a", small_text)
    assert main(["train", str(a), "--run-dir", str(tmp_path / "runs" / "one")]) == 0
    (tmp_path / "runs" / "two").mkdir()
    (tmp_path / "runs" / "two" / "preset.json").write_text(json.dumps({"name": "b"}))
    (tmp_path / "runs" / "two" / "metrics.jsonl").write_text(json.dumps({"step": 2, "tokens": 8, "loss": 3.0, "tokens_per_sec": 5.0}) + "\n")
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "preset", "steps", "best", "val", "tokens/s", "status"]
    one = next(ln for ln in lines if ln.startswith("one"))
    best = min(r["val_loss"] for r in _val(tmp_path / "runs" / "one"))
    assert one.split()[1:4] == ["a", "6", f"{best:.4f}"] and one.endswith("completed")
    assert next(ln for ln in lines if ln.startswith("two")).endswith("incomplete (step 2)")
    assert main(["plot", "--run-dir", str(tmp_path / "runs" / "one")]) == 0
    assert (tmp_path / "runs" / "one" / "plots.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("grokking_modp_cpu "))
    assert line.split(None, 1)[1] == ("The Grokfast paper's grokking setup on x*y mod 97 (Power et al. 2022; Lee et al. 2024): a "
                                      "2-layer, width-128, 4-head transformer with PyTorch's default init, Adam (coupled L2, lr "
                                      "1e-3, betas 0.9/0.98), batch 512, 50% of the 9,312 equations for training, loss and "
                                      "val_accuracy on the answer token only.")


def test_wandb_offline_sink_logs_every_row_and_a_resume_continues_the_same_run(tmp_path, small_text):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "wb"
    raw = tiny_preset(small_text, max_steps=4, wandb={"project": "lmforge-test", "mode": "offline"})
    lmforge.train(raw, run_dir=run_dir)
    run_id = (run_dir / "wandb_id").read_text().strip()
    runs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1
    log_file = next(runs[0].glob("*.wandb"))
    for _ in range(100):  # W&B's service process writes the file: under load it can trail finish() by a moment
        if b"tokens_per_sec" in log_file.read_bytes():
            break
        time.sleep(0.1)
    log = log_file.read_bytes()
    assert b"val_loss" in log and b"tokens_per_sec" in log
    lmforge.train(tiny_preset(small_text, max_steps=6, wandb={"project": "lmforge-test", "mode": "offline"}), run_dir=run_dir)
    assert (run_dir / "wandb_id").read_text().strip() == run_id
    assert all(p.name.endswith(run_id) for p in (run_dir / "wandb").glob("offline-run-*"))


def test_train_wandb_is_validated(small_text):
    with pytest.raises(PresetError, match="mode"):
        load_preset(tiny_preset(small_text, wandb={"mode": "sometimes"}))


@pytest.mark.skipif(sys.platform != "linux", reason="ctrl-c semantics")
def test_compare_cli_end_to_end(tmp_path, small_text):
    a = _preset_file(tmp_path, "a", small_text)
    proc = subprocess.run([sys.executable, "-m", "lmforge", "compare", str(a), "--budget", "tokens", "300",
                           "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| a | 1 |" in proc.stdout and "report.html" in proc.stdout
    row = json.loads((tmp_path / "o" / "compare.json").read_text())["table"][0]
    assert row["steps"] == math.ceil(300 / 128) and row["tokens"] == row["steps"] * 128


@pytest.mark.parametrize("via_terminal", [True, False], ids=["ctrl_c", "kill_int_of_compare_alone"])
def test_ctrl_c_reports_what_finished_and_the_same_command_resumes(tmp_path, small_text, via_terminal):
    """A terminal's Ctrl-C reaches compare and its run (the process group); `kill -INT` reaches compare alone,
    which then stops its run gracefully too. Either way nothing keeps training behind the user's back."""
    import os
    import signal
    import time

    quick = _preset_file(tmp_path, "quick", small_text)
    slow = _preset_file(tmp_path, "slow", small_text, max_steps=400, save_interval=5, eval_interval=400)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "ctrl_c", "runs": [{"name": "quick", "preset": str(quick)},
                                                            {"name": "slow", "preset": str(slow)}]}))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "lmforge", "compare", "--recipe", str(spec), "--out", str(out)]
    # a terminal's SIGINT disposition (an earlier test in this process may leave SIGINT ignored, which children inherit)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    slow_metrics = lambda: [p for p in out.glob("runs/slow_*/metrics.jsonl") if len(read_metrics(p.parent)) >= 12]  # noqa: E731
    while not slow_metrics() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT) if via_terminal else proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted during slow" in stderr and "| quick | 1 |" in stdout
    slow_dir = slow_metrics()[0].parent
    stopped = json.loads((slow_dir / "result.json").read_text())
    assert stopped["stop_reason"] == ("signal SIGINT" if via_terminal else "signal SIGTERM") and stopped["steps"] >= 12
    assert not any("lmforge" in p.read_text() and str(out) in p.read_text()
                   for p in Path("/proc").glob("[0-9]*/cmdline") if _readable(p))  # the run's process is gone
    # the same command again: quick is reused, slow resumes from the checkpoint its graceful stop wrote
    again = run_compare(load_spec(str(spec)), out, echo=False)
    assert [o.status for o in again.outcomes] == ["reused", "trained"]
    done = json.loads((slow_dir / "result.json").read_text())
    assert done["stop_reason"] == "completed" and done["steps"] == 400 and done["resumed_from"] == stopped["steps"]
