"""Forge-VGT recipe (seed 000): the Forge Controller, the forge loss, the pluggable loss, the VGT model, resume of α."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import REPO, tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.generation import SamplingConfig, generate
from lmforge.models import VGT, VGTConfig
from lmforge.objectives import StepContext, compute_forge_loss
from lmforge.registry import ALPHA_SCHEDULES, OBJECTIVES
from lmforge.training.callbacks import Callback
from lmforge.training.forge_controller import ForgeControllerConfig
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train

SEED_CONTROLLER = {"warmup": 4000, "compaction_end": 0.7, "start": 1.0, "peak": 30.0, "floor": 1.0}
TINY_CONTROLLER = {"warmup": 2, "compaction_end": 0.5, "start": 0.5, "peak": 2.0, "floor": 0.25}


def controller(options: dict, total_steps: int):
    return ALPHA_SCHEDULES.get("forge_controller")(ForgeControllerConfig(**options), total_steps)


# ---------------------------------------------------------------------------- controller


def test_controller_phase_values_at_boundaries():
    alpha = controller({"warmup": 10, "compaction_end": 0.5, "start": 1.0, "peak": 30.0, "floor": 1.0}, 100)
    assert alpha(0) == 0.0 and alpha(9) == 0.0  # warm-up: plain cross-entropy
    assert alpha(10) == 1.0  # compaction starts with the jump to `start`
    assert alpha(30) == 15.5  # halfway up the linear ramp
    assert alpha(50) == 30.0  # annealing starts at the peak
    assert alpha(75) == 15.0  # halfway down
    assert alpha(99) == 1.0  # held at the floor (30 * (1 - 49/50) = 0.6 < 1)
    fractions = controller({"warmup": 0.05, "compaction_end": 0.7, "start": 0.1, "peak": 1.0, "floor": 0.1}, 200)
    assert fractions(9) == 0.0 and fractions(10) == 0.1 and fractions(140) == 1.0


def test_controller_reproduces_the_seed_and_rejects_bad_boundaries():
    """With the seed's numbers the schedule is the public VGTForgeController, step for step."""
    total, warmup = 120000, 4000
    limit = int(total * 0.7)

    def seed_alpha(step):
        if step < warmup:
            return 0.0
        if step < limit:
            return 1.0 + (30.0 - 1.0) * (step - warmup) / (limit - warmup)
        return max(30.0 * (1.0 - (step - limit) / (total - limit)), 1.0)

    alpha = controller(SEED_CONTROLLER, total)
    assert all(alpha(s) == seed_alpha(s) for s in range(0, total, 997))
    with pytest.raises(ValueError, match="fraction"):
        ForgeControllerConfig(warmup=1.5)
    with pytest.raises(ValueError, match="must not come after"):
        ForgeControllerConfig(warmup=0.8, compaction_end=0.7)
    with pytest.raises(ValueError, match="after compaction ends"):
        controller({"warmup": 500, "compaction_end": 0.7}, 100)


# ---------------------------------------------------------------------------- loss


def _embedding(rows: list[list[float]]) -> nn.Embedding:
    emb = nn.Embedding(len(rows), len(rows[0]))
    with torch.no_grad():
        emb.weight.copy_(torch.tensor(rows))
    return emb


def test_compute_forge_loss_against_hand_computed_example():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # (1, 2, 3)
    targets = torch.tensor([[0, 2]])
    h = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]], requires_grad=True)  # (1, 2, 2)
    emb = _embedding([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    total, m = compute_forge_loss(logits, targets, h, emb, 3, alpha=2.0)

    ce = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(1 / (2 + math.e))) / 2
    rms = math.sqrt((9 + 16 + 1 + 0) / 4)
    cos_loss = ((1 - 3 / 5) + (1 - 1 / math.sqrt(2))) / 2  # cos([3,4],[1,0]) = 0.6, cos([1,0],[1,1]) = 1/sqrt(2)
    assert m["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert m["h_norm"].item() == pytest.approx(rms, rel=1e-6)
    assert m["cos_loss"].item() == pytest.approx(cos_loss, rel=1e-6)
    assert m["alpha"] == 2.0
    assert total.item() == pytest.approx(ce + 2 * 0.15 * rms + 2 * 0.40 * cos_loss, rel=1e-6)
    total.backward()
    assert h.grad is not None and emb.weight.grad is None  # the target embedding is looked up under no_grad

    heavier, m2 = compute_forge_loss(logits, targets, h, emb, 3, alpha=2.0, h_norm_weight=1.0, cos_weight=0.0)
    assert heavier.item() == pytest.approx(ce + 2 * rms, rel=1e-6)


def test_ignored_targets_count_nowhere():
    torch.manual_seed(0)
    logits, h = torch.randn(1, 3, 5), torch.randn(1, 3, 4)
    emb = nn.Embedding(5, 4)
    padded, mp = compute_forge_loss(logits, torch.tensor([[1, -100, 3]]), h, emb, 5, alpha=1.5)
    kept, mk = compute_forge_loss(logits[:, [0, 2]], torch.tensor([[1, 3]]), h[:, [0, 2]], emb, 5, alpha=1.5)
    assert padded.item() == pytest.approx(kept.item(), rel=1e-6)
    for key in ("ce", "h_norm", "cos_loss"):
        assert mp[key].item() == pytest.approx(mk[key].item(), rel=1e-6), key
    h_all = h.clone().requires_grad_(True)
    nothing, _ = compute_forge_loss(logits, torch.full((1, 3), -100), h_all, emb, 5, alpha=1.0)
    nothing.backward()
    assert nothing.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(h_all.grad).all()  # no NaN from sqrt(0)


# ---------------------------------------------------------------------------- pluggable loss


def test_loss_function_by_import_path(small_text):
    """`python` runs a function named by path with the model, batch and α; seed-style functions work unchanged."""
    raw = tiny_preset(small_text) | {"objective": {"name": "python", "path": "helpers.my_losses:ce_only"}}
    cfg = load_preset(raw, trust_code=True).objective
    torch.manual_seed(0)
    model = VGT(VGTConfig(vocab_size=20, n_layer=2, n_embd=16, block_size=8)).eval()  # no dropout: calls compare exactly
    ids = torch.randint(0, 20, (2, 9))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:].masked_fill(torch.rand(2, 8) < 0.2, -100)}
    ctx = StepContext(step=50, total_steps=100)
    loss, metrics = OBJECTIVES.get("python")(cfg)(model, batch, ctx)
    clm, _ = OBJECTIVES.get("clm")(None)(model, batch, ctx)
    assert torch.equal(loss, clm) and set(metrics) == {"alpha", "ce", "h_rms"}
    assert metrics["alpha"] == pytest.approx(0.1 + 0.9 * (50 - 5) / (70 - 5))  # default controller: warm-up 5%, compaction to 70%

    # the shipped compute_forge_loss named by path, with options, equals objective forge
    by_path = load_preset(raw | {"objective": {"name": "python", "path": "lmforge.objectives:compute_forge_loss",
                                               "options": {"h_norm_weight": 0.3}}}, trust_code=True).objective
    forge = load_preset(raw | {"objective": {"name": "forge", "h_norm_weight": 0.3}}).objective
    a, ma = OBJECTIVES.get("python")(by_path)(model, batch, ctx)
    b, mb = OBJECTIVES.get("forge")(forge)(model, batch, ctx)
    assert torch.equal(a, b) and ma["h_norm"] == mb["h_norm"]

    with pytest.raises(PresetError, match=r"objective.path.*no_such_module"):
        load_preset(raw | {"objective": {"name": "python", "path": "no_such_module:f"}}, trust_code=True)
    broken = load_preset(raw | {"objective": {"name": "python", "path": "helpers.my_losses:returns_a_number"}}, trust_code=True).objective
    with pytest.raises(TypeError, match=r"\(loss, metrics dict\)"):
        OBJECTIVES.get("python")(broken)(model, batch, ctx)


def test_a_preset_that_names_code_runs_only_when_trusted(small_text, tmp_path):
    """As transformers' trust_remote_code: the refusal names the key and the opt-in, and nothing was imported."""
    raw = tiny_preset(small_text) | {"objective": {"name": "python", "path": "helpers.never_imported:f"}}
    with pytest.raises(PresetError, match=r"objective.path: .*names Python code to import.*--trust-code.*trust_code=True"):
        load_preset(raw)
    staged = tiny_preset(small_text) | {"stages": [{"name": "a", "until_fraction": 0.5},
                                                   {"name": "b", "objective": {"name": "python", "path": "helpers.never_imported:f"}}]}
    with pytest.raises(PresetError, match=r"stages.1.objective.path: .*names Python code"):
        load_preset(staged)
    assert "helpers.never_imported" not in sys.modules
    path = tmp_path / "p.json"
    path.write_text(json.dumps(raw))
    proc = subprocess.run([sys.executable, "-m", "lmforge", "train", str(path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "--trust-code" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- model


def _vgt(block_size: int = 16) -> VGT:
    torch.manual_seed(0)
    return VGT(VGTConfig(vocab_size=40, n_layer=3, n_embd=32, block_size=block_size, dropout=0.1)).eval()


def test_vgt_shapes_and_causality():
    model = _vgt()
    ids = torch.randint(0, 40, (2, 12))
    out = model(ids)
    assert out.logits.shape == (2, 12, 40) and out.hidden_states.shape == (2, 12, 32)
    assert model.get_input_embeddings() is model.wte and model.lm_head.weight is not model.wte.weight  # separate head
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 40
    after = model(changed).logits
    assert torch.equal(after[:, :7], out.logits[:, :7]) and not torch.equal(after[:, 7:], out.logits[:, 7:])
    n_gru = sum(p.numel() for b in model.blocks for p in b.gru.parameters())
    assert model.flops_per_token(16) == 6 * model.num_params(exclude_embeddings=True) and n_gru == 3 * 2 * (3 * 32 * 32 + 3 * 32)


def test_vgt_incremental_step_equals_full_forward():
    model = _vgt()
    ids = torch.randint(0, 40, (2, 14))
    full = model(ids).logits
    cache = model.new_cache(2)
    pieces = [model.step(ids[:, :5], cache).logits, model.step(ids[:, 5:8], cache).logits]
    pieces += [model.step(ids[:, t : t + 1], cache).logits for t in range(8, 14)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)
    assert cache.length == 14 and cache.max_len == 16
    with pytest.raises(ValueError, match="window is full"):
        model.step(ids[:, :3], cache)


def test_vgt_greedy_generation_with_cache_equals_without():
    """Past block_size the cached path re-prefills the window a cacheless pass sees, so the tokens agree."""
    model = _vgt(block_size=10)
    greedy = SamplingConfig(temperature=0)
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert generate(model, prompts, 25, greedy, use_cache=True) == generate(model, prompts, 25, greedy, use_cache=False)


# ---------------------------------------------------------------------------- training


@pytest.fixture
def encyclopedia(tmp_path: Path, shared_data: Path) -> Path:
    """`train_encyclopedia.json` laid out as the seed streams it: one JSON object per line, from WikiText-2 paragraphs."""
    rows, title = [], None
    for line in (shared_data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("= ") and not line.startswith("= ="):
            title = line.strip("= ")
        elif line and not line.startswith("="):
            rows.append({"title": title, "text": line})
        if sum(len(r["text"]) for r in rows) > 30000:
            break
    path = tmp_path / "train_encyclopedia.json"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def vgt_preset(data: Path, vocab: Path, **train_overrides) -> dict:
    """A 2-layer VGT with the forge objective on the JSONL encyclopedia, char vocab at `vocab`."""
    raw = tiny_preset(data, **train_overrides)
    raw["model"] = {"arch": "vgt", "n_layer": 2, "n_embd": 32, "block_size": 32, "dropout": 0.1}
    raw["data"]["sources"] = [{"type": "jsonl", "path": str(data), "text_field": "text"}]
    raw["data"]["tokenizer"] = {"type": "char", "path": str(vocab)}
    raw["objective"] = {"name": "forge", "controller": TINY_CONTROLLER}
    raw["samples"]["prompts"] = ["The "]
    return raw


def test_forge_training_logs_every_term_each_step(tmp_path, encyclopedia):
    vocab = tmp_path / "vocab.json"
    preset = vgt_preset(encyclopedia, vocab, max_steps=12, milestone_interval=4, milestone_prefix="vgt_8L_step_", keep_milestones=2)
    result = train(load_preset(preset), tmp_path / "run")
    assert result.steps == 12
    chars = json.loads(vocab.read_text())  # built from the data because it was missing, as the seed's vocab.json
    assert set("".join(json.loads(line)["text"] for line in encyclopedia.read_text().splitlines())) == set(chars)
    alpha = controller(TINY_CONTROLLER, 12)
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:
        assert r["alpha"] == pytest.approx(alpha(r["step"] - 1), rel=1e-6)  # the α the step trained with (logged as fp32)
        assert r["loss"] == pytest.approx(r["ce"] + r["alpha"] * (0.15 * r["h_norm"] + 0.40 * r["cos_loss"]), rel=1e-5)
    assert {r["alpha"] for r in rows[:2]} == {0.0} and rows[6]["alpha"] == 2.0 and rows[-1]["alpha"] == pytest.approx(2 / 6, rel=1e-6)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("vgt_8L_step_*"))
    assert checkpoints == ["vgt_8L_step_12", "vgt_8L_step_8"]
    assert "val_bpc" in result.last_val


class CrashAt(Callback):
    """Raise mid-run, after the step is logged and before it is saved: an in-process stand-in for a kill."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_restores_alpha_and_losses(tmp_path, encyclopedia):
    preset = vgt_preset(encyclopedia, tmp_path / "vocab.json", max_steps=10, save_interval=3, eval_interval=100)
    reference = train(load_preset(preset), tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_preset(preset), tmp_path / "crashed", [CrashAt(8)])
    probe = Trainer(load_preset(preset), tmp_path / "crashed")
    assert probe.objective.state_dict() == {"alpha": 0.0}
    assert probe.resume() and probe.step == 6
    assert probe.objective.state_dict() == {"alpha": controller(TINY_CONTROLLER, 10)(5)}  # α of the last saved step
    resumed = train(load_preset(preset), tmp_path / "crashed")
    assert resumed.resumed_from == 6 and resumed.steps == reference.steps == 10

    def losses(run):
        return {r["step"]: (r["loss"], r["alpha"]) for r in read_metrics(run) if "loss" in r}

    assert losses(tmp_path / "crashed") == losses(tmp_path / "ref")  # bitwise, steps 1..10
