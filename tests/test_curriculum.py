"""Stage plans (lmforge/training/stages.py): boundaries, data switches, model settings, checkpoints and resume."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from lmforge.config import PresetError, StageConfig, load_preset, resolve_stage_ends
from lmforge.inference import load_run
from lmforge.training.checkpoint import CheckpointManager
from lmforge.training.metrics import read_metrics
from lmforge.training.stages import StagePlan
from lmforge.training.trainer import Trainer, train
from helpers.stop import StopAt

CORPORA = {"dictionary": "dictionary.txt", "stories": "stories.txt", "encyclopedia": "wikitext-2/valid.txt"}


@pytest.fixture
def corpora(tmp_path: Path, shared_data: Path) -> dict[str, Path]:
    """~6 KB of each real corpus (cut at a line end, the stories past their title pages), one file per stage."""
    out = {}
    for name, rel in CORPORA.items():
        text = (shared_data / rel).read_text(encoding="utf-8")
        text = text[20_000:26_000] if name == "stories" else text[:6000]
        text = text[text.find("\n") + 1: text.rfind("\n") + 1]
        out[name] = tmp_path / f"{name}.txt"
        out[name].write_text(text, encoding="utf-8")
    return out


def plan_preset(files: dict[str, Path], arch: str = "gpt", ends=(("until_step", 4), ("until_step", 8)), settings=None, **train) -> dict:
    """A tiny byte-level run with one stage per file; `ends` are the first stages' boundaries, the last runs to the end."""
    model = {"arch": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64, "dropout": 0.0}
    if arch == "agiformer":
        model = {"arch": "agiformer", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "attn_window": 4,
                 "memory_chunk": 4, "act_max_steps": 2}
    stages = []
    for i, (name, path) in enumerate(files.items()):
        stage = {"name": name, "data": {"sources": [{"type": "text", "path": str(path), "chunk_chars": 512}]}}
        if i < len(ends):
            stage[ends[i][0]] = ends[i][1]
        if settings:
            stage["model_settings"] = settings[i]
        stages.append(stage)
    t = {"batch_size": 2, "max_steps": 12, "lr": 3e-3, "precision": "fp32", "log_interval": 1, "eval_interval": 4,
         "eval_batches": 1, "save_interval": 3, "progress_bar": False, "lr_schedule": {"name": "constant"}}
    t.update(train)
    return {
        "name": "plan", "model": model, "stages": stages, "train": t,
        "data": {"tokenizer": {"type": "byte"}, "validation": {"method": "tail", "fraction": 0.2}, "shuffle_buffer": 8},
        "samples": {"prompts": ["a"], "max_new_tokens": 4},
    }


class RecordingTrainer(Trainer):
    """Keeps (step, stage, input_ids) of every trained batch, and the model's plasticity during each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int, torch.Tensor]] = []
        self.plasticity: dict[int, float] = {}

    def train_step(self, model, data_iter):
        batch = next(data_iter)
        self.seen.append((self.step + 1, self.stage_index, batch["input_ids"].clone()))
        if hasattr(self.model, "plasticity"):
            self.plasticity[self.step + 1] = float(self.model.plasticity)
        return super().train_step(model, iter([batch]))


def _pieces(ids: torch.Tensor) -> list[str]:
    """The line pieces of each row of a byte batch, long enough to tell the corpora apart."""
    rows = [bytes(row.tolist()).decode("utf-8", errors="ignore") for row in ids]
    return [piece for row in rows for piece in row.split("\n") if len(piece) >= 20]


def test_boundaries_by_fraction_and_by_step():
    stages = [StageConfig(name="a", until_fraction=0.3), StageConfig(name="b", until_step=7), StageConfig(name="c")]
    assert resolve_stage_ends(stages, 10) == [3, 7, 10]
    stages = [StageConfig(name="a", until_fraction=0.25), StageConfig(name="b", until_fraction=0.5), StageConfig(name="c", until_fraction=1.0)]
    assert resolve_stage_ends(stages, 1000) == [250, 500, 1000]
    with pytest.raises(ValueError, match=r"stages.1.until_step: stage 'b' ends at step 2, not after .*\(3\)"):
        resolve_stage_ends([StageConfig(name="a", until_fraction=0.3), StageConfig(name="b", until_step=2), StageConfig(name="c")], 10)
    with pytest.raises(ValueError, match=r"stages.1.until_step: .*stages after it never run"):
        resolve_stage_ends([StageConfig(name="a", until_step=2), StageConfig(name="b", until_step=10), StageConfig(name="c")], 10)


def test_data_switches_at_each_boundary_and_val_covers_every_stage(tmp_path, corpora):
    """A gpt with data-only stages (the plan is not AGIFORMER's): every batch comes from its stage's file."""
    texts = {name: path.read_text() for name, path in corpora.items()}
    trainer = RecordingTrainer(load_preset(plan_preset(corpora)), tmp_path / "run")
    result = trainer.fit()
    assert result.steps == 12
    names = list(corpora)
    assert [(step, stage) for step, stage, _ in trainer.seen] == [(s, 0 if s <= 4 else 1 if s <= 8 else 2) for s in range(1, 13)]
    for step, stage, ids in trainer.seen:
        pieces = _pieces(ids)
        assert pieces, step
        for piece in pieces:
            assert piece in texts[names[stage]], (step, piece)
            assert all(piece not in texts[other] for other in names if other != names[stage]), (step, piece)
    rows = read_metrics(tmp_path / "run")
    assert [(r["step"], r["stage"], r["stage_name"]) for r in rows if "loss" in r] == [
        (s, stage, names[stage]) for s, stage, _ in trainer.seen
    ]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    for r in evals:  # one fixed val set: every stage's held-out text, pooled and per stage
        parts = [r[f"val_bpb/{n}"] for n in names]
        assert min(parts) <= r["val_bpb"] <= max(parts)
        assert r["val_tokens"] == 3 * 2 * 64


def test_plasticity_per_stage_in_checkpoints_and_after_resume(tmp_path, corpora):
    """AGIFORMER's curriculum: alpha 0.1 -> 0.5 -> 0.99 by fraction; a run stopped after a boundary resumes in the
    right stage with the checkpoint's alpha (the new trainer starts at stage 0's 0.1) and keeps it for inference."""
    raw = plan_preset(corpora, arch="agiformer", ends=(("until_fraction", 1 / 3), ("until_fraction", 2 / 3)),
                      settings=[{"plasticity": 0.1}, {"plasticity": 0.5}, {"plasticity": 0.99}], max_steps=9, eval_interval=100)
    run = tmp_path / "run"
    first = RecordingTrainer(load_preset(raw), run, [StopAt(5)])
    assert first.fit().steps == 5
    assert first.plasticity == pytest.approx({1: 0.1, 2: 0.1, 3: 0.1, 4: 0.5, 5: 0.5})
    ckpt = CheckpointManager(run / "checkpoints").load_latest()
    assert ckpt.meta["step"] == 5 and ckpt.train_state["stage"] == 1
    assert float(ckpt.model_state["plasticity"]) == pytest.approx(0.5)

    second = RecordingTrainer(load_preset(raw), run)
    assert float(second.model.plasticity) == pytest.approx(0.1)  # a fresh trainer starts in stage 0 ...
    assert second.resume() and second.stage_index == 1  # ... and the checkpoint puts it back in stage 1
    assert float(second.model.plasticity) == pytest.approx(0.5)
    second.fit()  # resumes again (same checkpoint) and finishes
    assert second.plasticity == pytest.approx({6: 0.5, 7: 0.99, 8: 0.99, 9: 0.99})
    assert float(load_run(run).model.plasticity) == pytest.approx(0.99)
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["stage_name"] for r in rows] == ["dictionary"] * 3 + ["stories"] * 3 + ["encyclopedia"] * 3


def test_resume_mid_stage_gives_the_identical_next_batches_and_losses(tmp_path, corpora):
    """Stopped at step 6 (stage 1 began at step 5): the resumed run trains the stage's 3rd and 4th batches next, and
    the whole run's losses equal an uninterrupted run's bitwise."""
    raw = plan_preset(corpora)
    reference = RecordingTrainer(load_preset(raw), tmp_path / "ref")
    reference.fit()
    stopped = RecordingTrainer(load_preset(raw), tmp_path / "run", [StopAt(6)])
    assert stopped.fit().steps == 6
    resumed = RecordingTrainer(load_preset(raw), tmp_path / "run")
    resumed.fit()
    assert resumed.resumed_from == 6 and [s for s, _, _ in resumed.seen] == list(range(7, 13))
    ref = {step: (stage, ids) for step, stage, ids in reference.seen}
    for step, stage, ids in resumed.seen:
        assert stage == ref[step][0] and torch.equal(ids, ref[step][1]), step

    fresh = Trainer(load_preset(raw), tmp_path / "fresh")  # stage 1's own pipeline from its start
    fresh._enter_stage(1)
    stage1 = [next(fresh.train_data)["input_ids"] for _ in range(4)]
    assert torch.equal(resumed.seen[0][2], stage1[2]) and torch.equal(resumed.seen[1][2], stage1[3])

    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}

    assert losses(tmp_path / "run") == losses(tmp_path / "ref")


def test_sigkill_mid_stage_resumes_from_the_checkpoint_bitwise(tmp_path, corpora):
    """Killed at step 7 (stage 1 runs steps 5-8, the last save was at 6): the restarted run repeats steps 7-12 exactly."""
    raw = plan_preset(corpora)
    train(load_preset(raw), tmp_path / "ref")
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(raw))
    helper = REPO / "tests" / "helpers" / "train_and_signal.py"
    proc = subprocess.run([sys.executable, str(helper), str(path), str(tmp_path / "run"), "7", "KILL"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = train(load_preset(raw), tmp_path / "run")
    assert resumed.resumed_from == 6 and resumed.steps == 12
    ref, got = (read_metrics(tmp_path / name) for name in ("ref", "run"))
    assert [(r["step"], r["stage_name"], r["loss"]) for r in got if "loss" in r] == [
        (r["step"], r["stage_name"], r["loss"]) for r in ref if "loss" in r
    ]


def test_tokenizer_learns_from_every_stage(tmp_path, corpora):
    raw = plan_preset(corpora)
    raw["data"]["tokenizer"] = {"type": "char"}
    trainer = Trainer(load_preset(raw), tmp_path / "run")
    vocab = set(json.loads((tmp_path / "run" / "vocab.json").read_text()))
    for path in corpora.values():
        assert set(path.read_text()) <= vocab
    assert len(StagePlan(trainer.preset, 12).union_data().sources) == 3


def test_a_stage_without_data_or_settings_keeps_the_run_defaults(tmp_path, corpora):
    """No data: the data section's sources; no setting: the value an earlier stage set stays (also after a resume)."""
    raw = plan_preset(corpora, arch="agiformer", settings=[{"plasticity": 0.2}, {}, {}], max_steps=6)
    raw["data"]["sources"] = [{"type": "text", "path": str(corpora["stories"])}]
    raw["stages"] = raw["stages"][:2]
    del raw["stages"][1]["data"]
    plan = StagePlan(load_preset(raw), 6)
    assert [s.end_step for s in plan.stages] == [4, 6]
    assert [s.path for s in plan.data(1).sources] == [str(corpora["stories"])]
    assert [s.path for s in plan.data(0).sources] == [str(corpora["dictionary"])]
    assert [label for label, _ in plan.val_parts()] == ["dictionary", "stories"]
    assert plan.settings(1) == {"plasticity": 0.2}


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["stages"][0]["model_settings"].update(plasticity=0.1),
     ["stages.0.model_settings.plasticity: model arch 'gpt' has no setting 'plasticity'", "supported: causal"]),
    (lambda r: r["stages"][0].update(until_step=9), ["stages.1.until_step: 8 must be greater than the previous stage's 9"]),
    (lambda r: r["stages"][1].update(until_step=12), ["stages.1.until_step: stage 'stories' ends at step 12, so the stages after it never run"]),
    (lambda r: r["stages"][2].update(until_fraction=0.9), ["stages.2.until_fraction: the last stage must cover the run"]),
    (lambda r: r["stages"][1].pop("until_step"), ["stages.1: stage 'stories' needs until_fraction or until_step"]),
    (lambda r: r["stages"][1].update(until_fraction=0.5), ["stages.1: set until_fraction or until_step, not both"]),
    (lambda r: r["stages"][1].update(name="dictionary"), ["stages.1.name: 'dictionary' is used by an earlier stage"]),
    (lambda r: r["stages"][0].update(until="30%"), ["stages.0.until: unknown key; allowed: activation_cache, activation_cache_gb, backup, data, growth, lr, lr_schedule, model_settings, name, objective, optimizer, reset_head, trainable, until_fraction, until_step"]),
    (lambda r: r["stages"][0]["data"].update(srcs=[]), ["stages.0.data.srcs: unknown key; allowed: mix, source_weights, sources"]),
    (lambda r: r["stages"][0]["data"]["sources"][0].update(type="txt"), ["stages.0.data.sources.0.type: unknown source type 'txt'", "text"]),
    (lambda r: r["stages"][0]["data"].update(mix="weighted"), ["stages.0.data: data.mix 'weighted' needs data.source_weights"]),
    (lambda r: r["stages"][2].pop("data"), ["data.sources: required field is missing; stages without their own data.sources train on it"]),
    (lambda r: r.update(stages=[]), ["stages: List should have at least 1 item"]),
])
def test_bad_stage_plans_name_the_field(corpora, mutate, expected):
    raw = plan_preset(corpora)
    for stage in raw["stages"]:
        stage.setdefault("model_settings", {})
    mutate(raw)
    with pytest.raises(PresetError) as err:
        load_preset(raw)
    message = str(err.value)
    for piece in expected:
        assert piece in message, message
    assert "data.sources.0" not in message.replace("stages.0.data.sources.0", "")  # the filled-in union is not blamed


def test_bad_setting_value_fails_at_validation(tmp_path, corpora):
    raw = plan_preset(corpora, arch="agiformer", settings=[{"plasticity": 0.1}, {"plasticity": 1.5}, {}])
    with pytest.raises(PresetError, match=r"stages.1.model_settings.plasticity: Input should be less than or equal to 1, got 1.5"):
        load_preset(raw)  # the model config with the stage's settings in force is validated with the preset


def test_token_budget_run_checks_ends_at_setup(tmp_path, corpora):
    raw = plan_preset(corpora, max_steps=None, train_tokens=2 * 64 * 6)  # 6 steps: until_step 8 is past the end
    with pytest.raises(PresetError, match="stages.1.until_step: stage 'stories' ends at step 8"):
        Trainer(load_preset(raw), tmp_path / "run")


def test_shipped_curriculum_preset(shared_data):
    preset = load_preset(REPO / "configs" / "agiformer_curriculum_cpu.json")
    assert preset.model.arch == "agiformer" and preset.data.tokenizer.type == "byte"
    assert [(s.name, s.model_settings["plasticity"]) for s in preset.stages] == [
        ("dictionary", 0.1), ("stories", 0.5), ("encyclopedia", 0.99)
    ]
    paths = [s.data.sources[0].path for s in preset.stages]
    assert paths == ["../shared/data/dictionary.txt", "../shared/data/stories.txt", "../shared/data/wikitext-2/valid.txt"]
    assert all((REPO / p).is_file() for p in paths)  # relative to the repo root, like the other presets
    plan = StagePlan(preset, preset.train.max_steps)
    assert [s.end_step for s in plan.stages] == [450, 900, 1500]
