"""StackWise part 2 (seed 004): layer-wise / block-wise / fusion / progressive / MIDAS stage plans, the activation
cache, growth, fresh heads per stage, time-step masking and stage backups, through the one trainer."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_preset
from lmforge.config import PresetError, load_preset, validate_preset
from lmforge.data.packer import IGNORE_INDEX, Packer
from lmforge.models import GPT, GPTConfig
from lmforge.models.activation_cache import ActivationCache
from lmforge.training.callbacks import Callback
from lmforge.training.growth import grow, midas_moves
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train
from helpers.stop import StopAt


def _raw(data, mode="layerwise", steps=40, **stackwise):
    raw = tiny_preset(data, max_steps=steps, eval_interval=steps, save_interval=10, log_interval=1)
    raw["model"].update({"n_layer": 4, "dropout": 0.0, "tie_embeddings": False})
    raw["data"]["packing"] = "per_document"
    raw["stackwise"] = {"mode": mode, **stackwise}
    raw["samples"] = {"interval": 0, "prompts": []}
    return raw


def _rows(run_dir):
    return [r for r in read_metrics(run_dir) if "loss" in r]


# ---------------------------------------------------------------- the plans a stackwise section writes


def test_layerwise_plan_trains_one_block_at_a_time_then_jointly(small_text):
    preset = load_preset(_raw(small_text))
    stages = preset.stages
    assert [s.name for s in stages] == ["layer0", "layer1", "layer2", "layer3", "joint"]
    assert [s.until_fraction for s in stages] == [0.2, 0.4, 0.6, 0.8, None]
    assert [s.model_settings["depth"] for s in stages] == [1, 2, 3, 4, 4]
    assert stages[0].trainable == ["wte.*", "blocks.0.*", "ln_f.*", "lm_head.*"]  # rope: no wpe
    assert stages[2].trainable == ["blocks.2.*", "ln_f.*", "lm_head.*"] and stages[4].trainable is None
    assert [s.activation_cache for s in stages] == ["off", "memory", "memory", "memory", "off"]
    assert all(s.backup for s in stages)
    again = load_preset(preset.to_dict())  # a resolved preset holds stackwise and its stages
    assert [s.model_dump() for s in again.stages] == [s.model_dump() for s in stages]


def test_blockwise_fusion_progressive_and_midas_plans(small_text):
    block = load_preset(_raw(small_text, "blockwise", block_size=2, joint_fraction=0)).stages
    assert [(s.name, s.model_settings["depth"], s.trainable) for s in block] == [
        ("blocks0-1", 2, ["wte.*", "blocks.0.*", "blocks.1.*", "ln_f.*", "lm_head.*"]),
        ("blocks2-3", 4, ["blocks.2.*", "blocks.3.*", "ln_f.*", "lm_head.*"])]
    fusion = load_preset(_raw(small_text, "fusion", block_size=2, backbone="trainable")).stages
    assert fusion[1].trainable == ["wte.*", "blocks.0.*", "blocks.1.*", "blocks.2.*", "blocks.3.*", "ln_f.*", "lm_head.*"]
    assert fusion[1].activation_cache == "off"  # nothing frozen below
    prog = load_preset(_raw(small_text, "progressive", start_depth=0)).stages
    assert [(s.until_fraction, s.model_settings["depth"]) for s in prog] == [(0.8, 0), (None, 4)]
    assert prog[1].growth.method == "random" and prog[1].trainable is None
    assert load_preset(_raw(small_text, "progressive")).stages[1].growth.method == "copy"  # one layer: copied
    midas = load_preset(_raw(small_text, "midas")).stages
    assert [s.model_settings["depth"] for s in midas] == [1, 2, 3, 4]
    assert [s.until_fraction for s in midas] == [0.1, 0.3, 0.6, None]  # PROP-1: stage i runs in proportion to i
    assert midas[0].growth is None and all(s.growth.method == "midas" for s in midas[1:])


@pytest.mark.parametrize("change, match", [
    ({"stackwise": {"mode": "layerwise", "block_size": 2}}, "block_size must be 1"),
    ({"stackwise": {"mode": "blockwise", "block_size": 3}}, "does not divide model.n_layer"),
    ({"stackwise": {"mode": "layerwise", "mask_schedule": [0.2, 0.8]}}, "time-step masking is for objective mask_diffusion"),
    ({"stackwise": {"mode": "layerwise"}, "stages": [{"name": "x"}]}, "remove one of the two"),
    ({"stackwise": {"mode": "midas", "block_size": 4}}, "at least two groups"),
    ({"stackwise": {"mode": "wrong"}}, "stackwise.mode"),
])
def test_bad_stackwise_sections_name_the_field(small_text, change, match):
    raw = _raw(small_text)
    raw.update(change)
    with pytest.raises(PresetError, match=match):
        load_preset(raw)


def test_per_stage_heads_need_an_untied_head(tmp_path, small_text):
    raw = _raw(small_text, head="per_stage")
    raw["model"]["tie_embeddings"] = True
    with pytest.raises(PresetError, match="tie_embeddings false"):
        Trainer(load_preset(raw), tmp_path / "run")


# ---------------------------------------------------------------- growth


def _gpt(n_layer=4, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=32, block_size=16, vocab_size=40, **kw))


def test_zero_growth_preserves_the_function_exactly():
    model = _gpt(bias=True).eval()
    ids = torch.randint(0, 40, (2, 16))
    model.set_depth(2)
    with torch.no_grad():
        before = model(ids).logits
    grow(model, None, "zero", 2, 4)
    model.set_depth(4)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_midas_duplicates_the_middle_group_and_copy_cycles_the_trained_blocks():
    assert midas_moves(1, 2, 1) == [(1, 0)]
    assert midas_moves(2, 3, 1) == [(2, 1)]
    assert midas_moves(3, 4, 1) == [(3, 2), (2, 1)]  # [A, B, C] -> [A, B, B, C]
    model = _gpt(n_layer=6)
    tags = {i: model.blocks[i].attn.c_attn.weight.clone() for i in range(6)}
    opt = torch.optim.AdamW(model.parameters())
    model.set_depth(4)
    model(torch.randint(0, 40, (1, 8))).logits.sum().backward()
    opt.step()
    tags = {i: model.blocks[i].attn.c_attn.weight.clone() for i in range(6)}
    grow(model, opt, "midas", 4, 6, block_size=2)  # groups [AB][CD] -> [AB][CD][CD]: the middle group (index 1) copied
    got = [model.blocks[i].attn.c_attn.weight for i in range(6)]
    for i, j in enumerate([0, 1, 2, 3, 2, 3]):
        assert torch.equal(got[i], tags[j]), i
    moved = model.blocks[4].attn.c_attn.weight
    assert torch.equal(opt.state[moved]["exp_avg"], opt.state[model.blocks[2].attn.c_attn.weight]["exp_avg"])
    one = _gpt(n_layer=3)
    grow(one, None, "copy", 1, 3)
    assert all(torch.equal(one.blocks[i].mlp.c_fc.weight, one.blocks[0].mlp.c_fc.weight) for i in (1, 2))
    with pytest.raises(ValueError, match="at least one trained block"):
        grow(_gpt(), None, "copy", 0, 4)


def test_progressive_run_grows_once_at_80_percent_with_a_continuous_loss(tmp_path, small_text):
    raw = _raw(small_text, "progressive", steps=30, grow_init="zero")
    raw["train"]["lr_schedule"] = {"name": "wsd", "warmup_steps": 2, "decay_fraction": 0.2}
    trainer = Trainer(load_preset(raw), tmp_path / "run")
    seen = {}

    class Watch(Callback):
        def on_step_end(self, t, step, metrics):
            seen[step] = (t.model.depth, metrics["loss"])

    trainer.callbacks.append(Watch())
    trainer.fit()
    assert [seen[s][0] for s in (24, 25)] == [1, 4]  # one layer until step 24, four after
    assert abs(seen[25][1] - seen[24][1]) < 0.25  # zero-init growth: no jump at the boundary
    rows = _rows(tmp_path / "run")
    assert [r["stage_name"] for r in rows[23:25]] == ["depth1", "depth4"]


# ---------------------------------------------------------------- the activation cache


def test_per_document_packing_gives_each_document_the_same_blocks():
    docs = [{"text": "abcdefghij", "eos": True}, {"text": "klmno", "eos": True}]
    enc = lambda t: [ord(c) for c in t]  # noqa: E731
    packer = Packer(enc, 0, 4, finite=False, per_document=True)
    blocks = [b.copy() for b in packer.blocks(lambda state: iter([(d, {}) for d in docs]))]
    # 11 ids (with eos) -> 2 whole blocks and a padded one; the next document starts its own blocks
    assert [b.tolist() for b in blocks] == [[97, 98, 99, 100, 101], [101, 102, 103, 104, 105], [105, 106, 0] + [IGNORE_INDEX] * 2,
                                            [107, 108, 109, 110, 111], [111, 0] + [IGNORE_INDEX] * 3]


def test_cache_serves_frozen_rows_once_and_deepens_by_one_block():
    model = _gpt().train()
    calls = []

    def advance(ids, h, first, stop):
        calls.append((first, stop))
        return model._frozen_prefix(ids, h, first, stop, None)

    cache = ActivationCache(1, 2**20)
    ids = torch.randint(0, 40, (3, 16))
    out = cache.lookup(ids, advance)
    with torch.no_grad():
        want = model.blocks[0](model.wte(ids), None, None)
    assert torch.allclose(out, want, atol=1e-6) and calls == [(0, 1)] * 3
    assert torch.equal(cache.lookup(ids[1:], advance), out[1:]) and cache.hits == 2 and len(calls) == 3
    cache.deepen(2)
    deeper = cache.lookup(ids, advance)
    assert calls[3:] == [(1, 2)] * 3  # one block, not the prefix again
    with torch.no_grad():
        assert torch.allclose(deeper, model.blocks[1](want, None, None), atol=1e-6)


def test_cached_layerwise_run_equals_uncached_and_resumes_bitwise(tmp_path, small_text):
    raw = _raw(small_text, steps=40)
    cached = train(load_preset(raw), tmp_path / "cached")
    rows = _rows(tmp_path / "cached")
    assert cached.steps == 40 and rows[-1]["ce"] < rows[0]["ce"] - 0.3
    # stage layer1 (steps 9-16) misses its 32 rows; layer2 and layer3 restart the data and meet them all again
    assert [rows[i]["act_cache_hit_rate"] for i in (15, 23, 31)] == [0.0, 0.5, round(2 / 3, 4)]
    assert rows[31]["act_cache_rows"] == 32 and "act_cache_rows" not in rows[32]  # the joint stage trains everything
    off = copy.deepcopy(raw)
    off["stackwise"]["activation_cache"] = "off"
    train(load_preset(off), tmp_path / "off")
    for a, b in zip(rows, _rows(tmp_path / "off")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
    # a stop inside a cached stage (step 22: stage layer2) and a resume with an empty cache: the same losses
    assert train(load_preset(raw), tmp_path / "split", [StopAt(22)]).steps == 22
    assert train(load_preset(raw), tmp_path / "split").resumed_from == 22
    assert [r["loss"] for r in _rows(tmp_path / "split")] == [r["loss"] for r in rows]
    # every stage's trained parameters are backed up in fp32 under backups/<run id>/
    run_id = (tmp_path / "cached" / "run_id").read_text().strip()
    files = sorted(p.name for p in (tmp_path / "cached" / "backups" / run_id).iterdir())
    assert files == ["stage0-layer0.safetensors", "stage1-layer1.safetensors", "stage2-layer2.safetensors",
                     "stage3-layer3.safetensors", "stage4-joint.safetensors"]
    layer2 = load_file(tmp_path / "cached" / "backups" / run_id / "stage2-layer2.safetensors")
    assert all(k.startswith(("blocks.2.", "ln_f.", "lm_head.")) for k in layer2) and all(v.dtype == torch.float32 for v in layer2.values())


def test_disk_cache_and_fresh_heads_per_stage(tmp_path, small_text):
    raw = _raw(small_text, steps=20, head="per_stage", activation_cache="disk", joint_fraction=0, backups=False)
    trainer = Trainer(load_preset(raw), tmp_path / "run")
    heads = {}

    class Watch(Callback):
        def on_step_end(self, t, step, metrics):
            heads[step] = t.model.lm_head.weight.detach().clone()
            if t.stages.cache is not None:
                assert t.stages.cache.path.parent == tmp_path / "run" / "activation_cache"

    trainer.callbacks.append(Watch())
    trainer.fit()
    assert not torch.allclose(heads[5], heads[6], atol=0.01)  # layer1 starts from a fresh head
    assert not (tmp_path / "run" / "activation_cache" / "stage3.bin").exists()  # freed at the end


def test_time_step_masking_raises_the_masking_rate_across_stages(tmp_path, small_text):
    raw = _raw(small_text, steps=20, mask_schedule=[0.15, 0.9], backups=False)
    raw["objective"] = {"name": "mask_diffusion"}
    raw["model"]["causal"] = False
    preset = load_preset(raw)
    ranges = [s.objective.mask_range for s in preset.stages]
    assert ranges[0] == pytest.approx((0.15, 0.3375)) and ranges[3] == pytest.approx((0.7125, 0.9))
    assert ranges[4] == pytest.approx((0.15, 0.9))  # the joint stage: the whole range
    assert train(preset, tmp_path / "run").steps == 20


def test_shipped_stackwise_presets_load():
    for name in ("stackwise_layerwise_cpu", "stackwise_progressive_cpu", "stackwise_qlora_cpu"):
        raw = json.loads((REPO / "configs" / f"{name}.json").read_text())
        preset = load_preset(raw)
        assert preset.stages or preset.layer_swaps, name
        raw["model"]["vocab_size"] = 65
        resolved = load_preset(raw).to_dict()  # as a run saves it: stackwise and its stages, with every default
        assert validate_preset(resolved).to_dict() == resolved, name


def test_stage_plans_count_the_flops_their_stages_cost(small_text):
    from lmforge.config import resolve_stage_ends
    from lmforge.run_shape import run_shape, stage_flops_per_token, training_flops_per_token

    raw = _raw(small_text)
    raw["model"]["vocab_size"] = 40
    preset = load_preset(raw)
    full = training_flops_per_token(preset.model_copy(update={"stages": None}), 32)
    head = 6 * 32 * 40
    block = (full - head) / 4
    costs = stage_flops_per_token(preset, 32)
    # layer0 trains block 0 and the head; layer1 runs block 0 forward once per sequence into the cache, layer2 and
    # layer3 only the block they newly froze; the joint stage is the full model
    assert costs == pytest.approx([block + head, block / 3 + block + head, block / 3 + block + head, block / 3 + block + head, full])
    budget = 100 * 4 * 32 * full  # 100 end-to-end steps of 4 x 32 tokens
    raw["train"].update(max_steps=None, train_flops=budget)
    steps = run_shape(load_preset(raw), 1, 40).total_steps
    ends = resolve_stage_ends(load_preset(raw).stages, steps)
    spent = sum(c * (e - s) * 4 * 32 for c, s, e in zip(costs, [0, *ends[:-1]], ends))
    assert steps > 150 and spent == pytest.approx(budget, rel=0.01)
