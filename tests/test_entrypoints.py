"""main.py's zero-flag choice, `python -m lmforge`, and `lmforge generate` on a trained run."""
import subprocess
import sys

import pytest

from conftest import REPO, tiny_preset
from lmforge.config import DEFAULT_PRESET, list_presets, load_preset
from lmforge.training.trainer import train

sys.path.insert(0, str(REPO))
import main as main_script  # noqa: E402


def test_default_preset_exists_and_uses_embedded_stdlib_text():
    names = [p.stem for p in list_presets(REPO / "configs")]
    assert DEFAULT_PRESET in names
    preset = load_preset(DEFAULT_PRESET)
    assert [s.type for s in preset.data.sources] == ["python_stdlib"]


def test_no_terminal_takes_default(monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main_script.choose_preset() == DEFAULT_PRESET


def test_terminal_enter_takes_default_and_number_picks(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    answers = iter(["", "2", "nonsense", "shakespeare_char_cpu"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main_script.choose_preset() == DEFAULT_PRESET
    assert main_script.choose_preset() == [p.stem for p in list_presets(REPO / "configs")][1]
    assert main_script.choose_preset() == "shakespeare_char_cpu"
    assert "not a preset" in capsys.readouterr().out


def test_python_dash_m_lists_presets():
    proc = subprocess.run([sys.executable, "-m", "lmforge", "presets"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and DEFAULT_PRESET in proc.stdout.split()


@pytest.fixture
def trained_run(tmp_path, small_text):
    preset = tiny_preset(small_text, max_steps=30, eval_interval=30, save_interval=30)
    train(load_preset(preset), tmp_path / "run")
    return tmp_path / "run"


def _generate(run, *args):
    cmd = [sys.executable, "-m", "lmforge", "generate", "--run-dir", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_generate_cli_greedy_cache_equals_no_cache(trained_run):
    cached = _generate(trained_run, "--temperature", "0")
    uncached = _generate(trained_run, "--temperature", "0", "--no-cache")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.startswith("ROMEO:") and len(cached.stdout) > len("ROMEO:") + 20
    assert cached.stdout == uncached.stdout


def test_generate_cli_sampling_options_and_slots(trained_run):
    a = _generate(trained_run, "--top-k", "5", "--top-p", "0.9", "--no-repeat-ngram-size", "3", "--seed", "1", "--slot", "best")
    b = _generate(trained_run, "--top-k", "5", "--top-p", "0.9", "--no-repeat-ngram-size", "3", "--seed", "1", "--slot", "best")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    text = a.stdout[len("ROMEO:"):].rstrip("\n")
    trigrams = [text[i:i + 3] for i in range(len(text) - 2)]
    assert len(trigrams) == len(set(trigrams))
    missing = _generate(trained_run, "--slot", "nope")
    assert missing.returncode == 2 and "present" in missing.stderr


def test_torchrun_main_py_takes_default_on_rank0_and_broadcasts(tmp_path, small_text):
    """`torchrun --nproc_per_node=2 main.py` with no terminal: rank 0 picks, both ranks train the same preset."""
    import json
    import os

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.json").write_text(json.dumps(tiny_preset(small_text, max_steps=4, eval_interval=4)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "main.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("no terminal: training the default preset 'tiny'") == 1  # only rank 0 chose
    from lmforge.training.checkpoint import CheckpointManager

    ckpt = CheckpointManager(tmp_path / "runs" / "tiny" / "checkpoints").load_latest()
    assert ckpt.meta["step"] == 4 and ckpt.meta["world_size"] == 2
