"""BitNet b1.58: quantizer grids, STE gradients, the generic layer swap, packing, export, schedule, training."""
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import tiny_preset
from lmforge.cli import main as cli_main
from lmforge.config import load_preset
from lmforge.export.ternary_export import WEIGHTS_FILE, export_ternary, load_ternary
from lmforge.inference import load_run
from lmforge.models import GPT, VGT, GPTConfig, VGTConfig
from lmforge.models.output import ModelOutput
from lmforge.quant.bitlayers import BitGRU, BitLinear
from lmforge.quant.bitnet import BitLinearSwapConfig, swap_to_bitnet, ternary_layers
from lmforge.quant.packing import pack_ternary, unpack_ternary
from lmforge.quant.schedule import BitNetTwoStageConfig, bitnet_two_stage
from lmforge.quant.ternary import grid_distance, quantize_activation, quantize_weight, ternarize
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train
from helpers.stop import StopAt

EPS = 1e-5


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=16, **kw))


# ---------------------------------------------------------------- quantizers


def test_weights_are_ternary_times_absmean_scale():
    w = torch.randn(33, 17) * 0.05
    codes, s = ternarize(w, EPS)
    assert math.isclose(s.item(), w.abs().mean().item() + EPS, rel_tol=1e-6)
    assert set(codes.unique().tolist()) == {-1, 0, 1}
    assert torch.equal(codes, torch.clamp(torch.round(w / s), -1, 1).to(torch.int8))
    wq = quantize_weight(w, EPS)
    assert set((wq / s).round().unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(wq, codes.float() * s)
    # |W| < s/2 rounds to 0, |W| > 1.5 s clamps to +-1: the seed's sign(W) would give +-1 everywhere
    assert torch.all(codes[w.abs() < 0.5 * s] == 0) and torch.all(codes[w > 1.5 * s] == 1)


def test_activations_land_on_the_per_token_int8_grid():
    x = torch.randn(3, 5, 64) * torch.tensor([0.01, 1.0, 30.0]).view(3, 1, 1)
    xq = quantize_activation(x, EPS)
    step = x.abs().amax(-1, keepdim=True) / 127
    levels = xq / step
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.round().min() >= -128 and levels.round().max() <= 127
    assert torch.allclose(levels.abs().amax(-1), torch.full((3, 5), 127.0), atol=1e-4)  # each token's absmax -> 127
    assert (xq - x).abs().le(step / 2 + 1e-6).all()  # round to nearest level
    assert torch.equal(quantize_activation(x.bfloat16(), EPS), quantize_activation(x.bfloat16().float(), EPS))  # fp32 math


def test_ste_gradient_reaches_latent_weight_norm_gain_and_input():
    torch.manual_seed(1)
    layer = BitLinear(16, 8, bias=True)
    x = torch.randn(4, 16, requires_grad=True)
    g = torch.randn(4, 8)
    (layer(x) * g).sum().backward()
    # STE: d/dW equals the gradient of the same product with Wq and Q8(x_norm) as plain leaves
    xn = F.rms_norm(x.detach(), (16,), layer.norm.weight.detach(), layer.norm.eps)
    xq = quantize_activation(xn, EPS)
    wq = quantize_weight(layer.weight, EPS).requires_grad_(True)
    xq_leaf = xq.clone().requires_grad_(True)
    (F.linear(xq_leaf, wq, layer.bias.detach()) * g).sum().backward()
    assert torch.allclose(layer.weight.grad, wq.grad, atol=1e-5)
    assert torch.allclose(layer.bias.grad, g.sum(0))
    # the input gradient is the norm's backward applied to the straight-through gradient dL/dxq
    xr = x.detach().clone().requires_grad_(True)
    F.rms_norm(xr, (16,), layer.norm.weight.detach(), layer.norm.eps).backward(xq_leaf.grad)
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)
    assert layer.norm.weight.grad is not None and layer.norm.weight.grad.abs().sum() > 0


def test_bitlinear_works_under_bf16_autocast():
    layer = BitLinear(32, 16, bias=False)
    x = torch.randn(2, 3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), layer(x), atol=0.1)  # same quantized operands, only bf16 matmul rounding


# ---------------------------------------------------------------- the swap


def test_swap_replaces_inner_linears_and_leaves_tied_embedding_and_head():
    model = _gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wte, head = model.wte, model.lm_head
    swap_to_bitnet(model, BitLinearSwapConfig())
    names = [n for n, _ in ternary_layers(model)]
    assert names == [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert model.wte is wte and model.lm_head is head and type(head) is nn.Linear
    assert model.lm_head.weight is model.wte.weight
    after = model.state_dict()
    for k, v in before.items():  # every original weight copied unchanged; only the norm gains are new
        assert torch.equal(after[k], v), k
    assert sorted(set(after) - set(before)) == sorted(f"{n}.norm.weight" for n in names)


def test_swap_is_generic_untied_head_and_custom_arch_and_vgt():
    untied = swap_to_bitnet(_gpt(tie_embeddings=False), BitLinearSwapConfig())
    assert type(untied.lm_head) is nn.Linear and not isinstance(untied.lm_head, BitLinear)

    class Custom(nn.Module):  # an architecture the swap has never seen: found by type, head by vocab width
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.body = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Sequential(nn.Linear(12, 8)))
            self.out = nn.Linear(8, 30)

        def get_input_embeddings(self):
            return self.emb

    custom = swap_to_bitnet(Custom(), BitLinearSwapConfig())
    assert [n for n, _ in ternary_layers(custom)] == ["body.0", "body.2.0"] and type(custom.out) is nn.Linear

    vgt = swap_to_bitnet(VGT(VGTConfig(vocab_size=40, n_layer=2, n_embd=16)), BitLinearSwapConfig())
    assert [type(m) for _, m in ternary_layers(vgt)] == [BitGRU, BitGRU] and type(vgt.lm_head) is nn.Linear
    with pytest.raises(ValueError, match="found no nn.Linear"):
        swap_to_bitnet(VGT(VGTConfig(vocab_size=40, n_layer=1, n_embd=16)), BitLinearSwapConfig(gru=False))


def test_regularizer_reaches_aux_losses_with_gradient():
    model = swap_to_bitnet(_gpt(), BitLinearSwapConfig(reg_weight=0.5))
    out = model(torch.randint(0, 40, (2, 8)))
    assert isinstance(out, ModelOutput) and set(out.aux_losses) == {"bitnet_reg"}
    layers = ternary_layers(model)
    expected = 0.5 * torch.stack([grid_distance(m.weight, EPS) for _, m in layers]).mean()
    assert torch.allclose(out.aux_losses["bitnet_reg"], expected)
    out.aux_losses["bitnet_reg"].backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for _, m in layers)
    model.eval()
    assert model(torch.randint(0, 40, (2, 8))).aux_losses == {}  # training-only term


# ---------------------------------------------------------------- packing and export


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 13, 1001])
def test_pack_unpack_round_trip(n):
    torch.manual_seed(n)
    codes = torch.randint(-1, 2, (n,), dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 4)
    assert torch.equal(unpack_ternary(packed, (n,)), codes)


def test_pack_unpack_keeps_shape_and_rejects_non_ternary():
    codes = torch.randint(-1, 2, (7, 5), dtype=torch.int8)
    assert torch.equal(unpack_ternary(pack_ternary(codes), (7, 5)), codes)
    with pytest.raises(ValueError):
        pack_ternary(torch.tensor([0, 2]))


@pytest.mark.parametrize("arch", ["gpt", "vgt"])
def test_packed_export_gives_the_fake_quant_logits(tmp_path, small_text, arch):
    raw = tiny_preset(small_text)
    if arch == "vgt":
        raw["model"] = {"arch": "vgt", "n_layer": 2, "n_embd": 32, "block_size": 32}
    raw["model"]["vocab_size"] = 40
    raw["layer_swaps"] = [{"name": "bitlinear"}]
    preset = load_preset(raw)
    from lmforge.models import build_model

    torch.manual_seed(0)
    model = swap_to_bitnet(build_model(preset.model), preset.layer_swaps[0]).eval()
    sizes = export_ternary(model, preset, None, tmp_path / "out")
    loaded = load_ternary(tmp_path / "out").model
    ids = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        ref, got = model(ids).logits, loaded(ids).logits
    assert torch.equal(ref, got) or torch.allclose(ref, got, atol=1e-5)
    assert not any(isinstance(p, nn.Parameter) and n.endswith(("c_attn.weight", "gru.weight_hh_l0")) for n, p in loaded.named_parameters())
    assert 7.5 < sizes["ternary_ratio_vs_fp16"] <= 8.0
    assert sizes["file_bytes"] == (tmp_path / "out" / WEIGHTS_FILE).stat().st_size


# ---------------------------------------------------------------- schedule


def test_two_stage_schedule_boundaries():
    cfg = BitNetTwoStageConfig(warmup_steps=10, split_fraction=0.5, stage1_end_ratio=0.8, stage2_start_ratio=0.5,
                               min_lr_ratio=0.1, weight_decay_shape="constant")
    fn = bitnet_two_stage(cfg, 100)
    assert math.isclose(fn(0), 1 / 11) and math.isclose(fn(9), 10 / 11)
    assert fn(10) == 1.0 and math.isclose(fn(30), 0.9)  # stage 1: linear 1 -> 0.8 over steps 10..50
    assert math.isclose(fn(49), 1 - 0.2 * 39 / 40)
    assert fn(50) == 0.5 and math.isclose(fn(99), 0.1)  # sharp drop at the split, then down to min at the last step
    assert (fn(49) - fn(10)) / 39 > (fn(99) - fn(50)) / 49  # stage 2 decays more steeply
    assert [fn.weight_decay_multiplier(s) for s in (0, 49, 50, 99)] == [1.0, 1.0, 0.0, 0.0]
    assert fn.describe(49) == {"lr_stage": 1, "wd_multiplier": 1.0} and fn.describe(50) == {"lr_stage": 2, "wd_multiplier": 0.0}
    cos = bitnet_two_stage(cfg.model_copy(update={"weight_decay_shape": "cosine"}), 100)
    assert cos.weight_decay_multiplier(0) == 1.0 and math.isclose(cos.weight_decay_multiplier(25), 0.5)
    assert cos.weight_decay_multiplier(50) == 0.0
    with pytest.raises(ValueError, match="stage2_start_ratio"):
        BitNetTwoStageConfig(stage1_end_ratio=0.5, stage2_start_ratio=0.7)


# ---------------------------------------------------------------- through the trainer


def _bitnet_preset(data, **train):
    raw = tiny_preset(data, lr=3e-3, **train)
    raw["layer_swaps"] = [{"name": "bitlinear", "reg_weight": 0.01}]
    raw["train"]["lr_schedule"] = {"name": "bitnet_two_stage", "warmup_steps": 2}
    return raw


def test_training_with_swap_learns_logs_and_resumes_exactly(tmp_path, small_text, capsys):
    raw = _bitnet_preset(small_text)
    ref = train(load_preset(raw), tmp_path / "ref")
    rows = [r for r in read_metrics(tmp_path / "ref") if "loss" in r]
    assert ref.steps == 12 and rows[-1]["ce"] < rows[0]["ce"] - 0.3
    assert all("bitnet_reg" in r and r["bitnet_reg"] > 0 for r in rows)
    assert [r["lr_stage"] for r in rows] == [1] * 6 + [2] * 6  # describe(step - 1): split at step 6
    # stop after step 5 (saved there), then a second session resumes and must reproduce steps 6..12 bitwise
    first = train(load_preset(raw), tmp_path / "split", [StopAt(5)])
    assert first.steps == 5
    second = train(load_preset(raw), tmp_path / "split")
    assert second.resumed_from == 5 and second.steps == 12
    got = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "split") if "loss" in r}
    assert got == {r["step"]: r["loss"] for r in rows}
    # the trained run loads through load_run (swap reapplied), and its packed export gives the same logits
    run = load_run(tmp_path / "ref")
    assert ternary_layers(run.model)
    assert cli_main(["export", "--run-dir", str(tmp_path / "ref"), "--format", "ternary", "--out", str(tmp_path / "packed")]) == 0
    ratio = re.search(r"ternary layers (\d+\.\d+)x", capsys.readouterr().out)
    assert ratio and 7.5 < float(ratio.group(1)) <= 8.0  # 2 bits vs 16, plus one fp32 scale per tensor
    packed = load_ternary(tmp_path / "packed")
    ids = torch.randint(0, run.tokenizer.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.allclose(run.model(ids).logits, packed.model(ids).logits, atol=1e-5)
    assert packed.tokenizer is not None and packed.tokenizer.vocab_size == run.tokenizer.vocab_size


def test_init_from_a_full_precision_run(tmp_path, small_text):
    """The swap keeps the latent weights' names, so a fp checkpoint fine-tunes into b1.58 (norm gains start at 1)."""
    train(load_preset(tiny_preset(small_text, max_steps=3, eval_interval=3)), tmp_path / "fp")
    fp_state = load_run(tmp_path / "fp").model.state_dict()
    raw = _bitnet_preset(small_text, max_steps=2, eval_interval=2, init_from=str(tmp_path / "fp"))
    trainer = Trainer(load_preset(raw), tmp_path / "bit")
    state = trainer.model.state_dict()
    for k, v in fp_state.items():
        assert torch.equal(state[k], v), k
    gains = [v for k, v in state.items() if k.endswith(".norm.weight") and k not in fp_state]
    assert len(gains) == 8 and all(torch.equal(g, torch.ones_like(g)) for g in gains)
    assert trainer.fit().steps == 2
