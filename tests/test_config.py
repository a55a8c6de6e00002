"""Presets: every shipped preset loads; bad ones fail with the field path and what is allowed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_preset
from lmforge.cli import parse_dotted_overrides
from lmforge.config import PresetError, apply_overrides, list_presets, load_preset


@pytest.mark.parametrize("path", list_presets(REPO / "configs"), ids=lambda p: p.stem)
def test_every_shipped_preset_validates(path: Path):
    preset = load_preset(path)
    assert preset.name == path.stem
    assert preset.model.arch


def test_yaml_preset_loads_like_json(tmp_path, small_text):
    import yaml

    raw = tiny_preset(small_text)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert load_preset(tmp_path / "p.yaml").to_dict() == load_preset(raw).to_dict() | {"name": "tiny"}


def _error(raw) -> str:
    with pytest.raises(PresetError) as info:
        load_preset(raw)
    return str(info.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["train"].update(lrr=1e-3), ["train.lrr: unknown key", "allowed:", "lr,"]),
        (lambda r: r["train"].update(lr="fast"), ["train.lr:", "'fast'"]),
        (lambda r: r["train"].update(lr=-1), ["train.lr:", "greater than 0"]),
        (lambda r: r["model"].update(arch="gtp"), ["model.arch: unknown model arch 'gtp'", "allowed:", " gpt"]),
        (lambda r: r["model"].update(n_embd=33), ["n_embd", "n_head"]),
        (lambda r: r["model"].update(norm="batchnorm"), ["model.norm", "rmsnorm", "layernorm"]),
        (lambda r: r["data"]["sources"][0].update(type="txt"), ["data.sources.0", "txt", "text"]),
        (lambda r: r["train"].update(precision="fp8"), ["train.precision", "bf16"]),
        (lambda r: r["train"]["lr_schedule"].update(name="cosine2"), ["train.lr_schedule.name", "warmup_cosine"]),
        (lambda r: r["objective"].update(name="nope") if "objective" in r else r.update(objective={"name": "nope"}), ["objective.name", "clm"]),
        (lambda r: r.update(trian={}), ["trian: unknown key"]),
    ],
)
def test_bad_preset_names_field_and_allowed_values(small_text, mutate, expected):
    raw = tiny_preset(small_text)
    mutate(raw)
    message = _error(raw)
    for fragment in expected:
        assert fragment in message, message


def test_all_problems_reported_at_once(small_text):
    raw = tiny_preset(small_text)
    raw["train"]["lrr"] = 1
    raw["model"]["n_layerz"] = 2
    message = _error(raw)
    assert "train.lrr" in message and "model.n_layerz" in message


def test_dotted_overrides_parse_and_apply(small_text):
    over = parse_dotted_overrides(["--train.lr", "3e-4", "--model.n_layer=3", "--train.compile", "true", "--data.sources.0.path", "x.txt"])
    assert over == {"train.lr": 3e-4, "model.n_layer": 3, "train.compile": True, "data.sources.0.path": "x.txt"}
    raw = apply_overrides(tiny_preset(small_text), over)
    assert raw["train"]["lr"] == 3e-4 and raw["model"]["n_layer"] == 3 and raw["data"]["sources"][0]["path"] == "x.txt"
    preset = load_preset(tiny_preset(small_text), {"train.lr": 3e-4})
    assert preset.train.lr == 3e-4


def test_cli_bad_preset_exits_2_without_traceback(tmp_path, small_text):
    raw = tiny_preset(small_text)
    raw["train"]["batch_sise"] = 4
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(raw))
    proc = subprocess.run([sys.executable, "-m", "lmforge", "train", str(path), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "train.batch_sise: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "lmforge", "train", str(path), "--train.lr", "1e-3", "--oops"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_unknown_preset_name_lists_available():
    with pytest.raises(PresetError, match="shakespeare_char_cpu"):
        load_preset("no_such_preset")


def test_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(PresetError, match="not valid JSON"):
        load_preset(bad)
