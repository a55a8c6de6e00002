"""FP8 / FP4 fake quant and NF4 + LoRA (seed 004): grids bit-exact against torchao and bitsandbytes, the LoRA
forward against peft, the straight-through gradient, and the swaps training through the trainer."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import tiny_preset
from lmforge.cli import main as cli_main
from lmforge.config import load_preset
from lmforge.inference import load_run
from lmforge.models import GPT, GPTConfig
from lmforge.quant.fake_quant import FakeQuantLinear, Fp4SwapConfig, Fp8SwapConfig, swap_to_fake_quant
from lmforge.quant.formats import (
    FP8_DTYPES, NF4_CODE, dequantize_absmax_int8, dequantize_nf4, fake_fp8, fake_mxfp4, fake_nvfp4,
    quantize_absmax_int8, quantize_nf4, round_e2m1,
)
from lmforge.quant.qlora import NF4LoRALinear, NF4LoRASwapConfig, adapter_layers, merge_adapters, swap_to_nf4_lora
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train
from helpers.stop import StopAt


def _weights(rows=96, cols=128, seed=0) -> torch.Tensor:
    torch.manual_seed(seed)
    w = torch.randn(rows, cols) * torch.rand(rows, 1) * 3  # rows of different scales
    w[0, :5] = torch.tensor([6.0, -5.0, 2.5, 0.25, 1.75])  # e2m1 ties after scaling by amax: exercised below too
    return w


# ---------------------------------------------------------------- grids vs torchao / bitsandbytes


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("per_row", [True, False])
def test_fp8_matches_torchao_float8_fake_quantizer(fmt, per_row):
    qat = pytest.importorskip("torchao.quantization.qat")
    from torchao.quantization.granularity import PerRow, PerTensor

    w = _weights()
    ref = qat.Float8FakeQuantizer(qat.Float8FakeQuantizeConfig(dtype=FP8_DTYPES[fmt], granularity=PerRow() if per_row else PerTensor()))(w)
    assert torch.equal(fake_fp8(w, fmt, per_row), ref)
    if fmt == "e4m3" and per_row:  # the manual scheme: amax / 448 per row, round to e4m3, scale back
        scale = w.abs().amax(dim=1, keepdim=True) / 448
        assert torch.equal(ref, (w / scale).to(torch.float8_e4m3fn).float() * scale)


def test_e2m1_rounds_to_nearest_even_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.25, -2.5, 0.3, 4.9])
    assert round_e2m1(x).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.0, -2.0, 0.5, 4.0]


@pytest.mark.parametrize("rounding", ["floor", "rceil"])
def test_mxfp4_matches_torchao_to_mx(rounding):
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode

    w = _weights()
    scale, data = mx.to_mx(w, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR if rounding == "floor" else ScaleCalculationMode.RCEIL)
    ref = mx.to_dtype(data, scale, torch.float4_e2m1fn_x2, 32, torch.float32)
    assert torch.equal(fake_mxfp4(w, 32, rounding), ref)


def test_nvfp4_matches_torchao_two_level_scaling():
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4

    w = _weights()
    tensor_scale = nv.per_tensor_amax_to_scale(w.abs().amax())
    block_scales, packed = nv.nvfp4_quantize(w, 16, tensor_scale)
    values = f4_unpacked_to_f32(unpack_uint4(packed)).reshape(w.size(0), -1, 16)
    ref = (values * (block_scales.float().unsqueeze(-1) * tensor_scale)).reshape(w.shape)
    assert torch.equal(fake_nvfp4(w), ref)


def test_nf4_is_bit_exact_with_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes.functional")
    w = _weights(192, 64, seed=1)
    codes, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    packed, absmax = quantize_nf4(w, 64)
    assert torch.equal(packed, codes.reshape(-1)) and torch.equal(absmax, state.absmax)
    assert torch.equal(NF4_CODE, state.code.float())
    assert torch.equal(dequantize_nf4(packed, absmax, w.shape), bnb.dequantize_4bit(codes, state))


def test_double_quantized_absmax_matches_torchao_nf4():
    nf4 = pytest.importorskip("torchao.quantization.quantize_.workflows.nf4.nf4_tensor")
    w = torch.randn(512, 128)
    _, absmax = quantize_nf4(w)
    codes, factor, offset = quantize_absmax_int8(absmax, 256)
    ref = nf4.NF4Tensor.double_quantize_scalers(w.flatten(), 64, 256)
    assert torch.equal(codes, ref[0]) and torch.equal(factor, ref[1]) and torch.equal(offset, ref[2])
    assert (dequantize_absmax_int8(codes, factor, offset) - absmax).abs().max() < 0.01 * absmax.mean()


# ---------------------------------------------------------------- layers


def test_fake_quant_linear_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    layer = FakeQuantLinear.from_linear(linear, lambda t: fake_mxfp4(t), lambda t: fake_mxfp4(t), "fp4 mx")
    x = torch.randn(5, 64, requires_grad=True)
    layer(x).square().sum().backward()
    wq = fake_mxfp4(linear.weight.detach()).requires_grad_()
    xq = fake_mxfp4(x.detach()).requires_grad_()
    F.linear(xq, wq, linear.bias.detach()).square().sum().backward()
    assert torch.allclose(layer.weight.grad, wq.grad) and torch.allclose(x.grad, xq.grad)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(xq, wq, linear.bias))


def test_every_quantizing_swap_marks_its_layers_so_mfu_drops_out():
    from lmforge.protocols import has_quantized_layers
    from lmforge.quant.bitnet import BitLinearSwapConfig, swap_to_bitnet

    def fresh() -> GPT:
        return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=16, vocab_size=40))

    assert not has_quantized_layers(fresh())
    for swapped in (swap_to_bitnet(fresh(), BitLinearSwapConfig()), swap_to_fake_quant(fresh(), Fp8SwapConfig()),
                    swap_to_fake_quant(fresh(), Fp4SwapConfig()), swap_to_nf4_lora(fresh(), NF4LoRASwapConfig())):
        assert has_quantized_layers(swapped)


def test_swaps_leave_the_tied_head_and_check_block_widths():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40))
    swap_to_fake_quant(model, Fp8SwapConfig())
    assert sum(isinstance(m, FakeQuantLinear) for m in model.modules()) == 8 and isinstance(model.lm_head, nn.Linear)
    odd = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=24, block_size=16, vocab_size=40))
    with pytest.raises(ValueError, match="blocks of 32"):
        swap_to_fake_quant(odd, Fp4SwapConfig())


def _peft_lora(base_weight: torch.Tensor, bias: torch.Tensor, layer: NF4LoRALinear) -> nn.Module:
    peft = pytest.importorskip("peft")

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(base_weight.size(1), base_weight.size(0))

        def forward(self, x):
            return self.proj(x)

    model = One()
    with torch.no_grad():
        model.proj.weight.copy_(base_weight)
        model.proj.bias.copy_(bias)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=layer.rank, lora_alpha=layer.alpha, target_modules=["proj"], lora_dropout=0.0))
    with torch.no_grad():
        wrapped.base_model.model.proj.lora_A["default"].weight.copy_(layer.lora_A.weight)
        wrapped.base_model.model.proj.lora_B["default"].weight.copy_(layer.lora_B.weight)
    return wrapped


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_lora_forward_matches_peft_and_merges(double_quant):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    cfg = NF4LoRASwapConfig(rank=4, alpha=8, double_quant=double_quant)
    layer = NF4LoRALinear.from_linear(linear, cfg)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.1)  # a trained adapter (B starts at zero)
    assert [n for n, p in layer.named_parameters()] == ["lora_A.weight", "lora_B.weight"]
    ref = _peft_lora(layer.dequantized_weight(), linear.bias.detach(), layer)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        got, want = layer(x), ref(x)
        assert torch.allclose(got, want, atol=1e-6)
        if not double_quant:  # the base is bitsandbytes' NF4 of the weight
            packed, absmax = quantize_nf4(linear.weight)
            assert torch.equal(layer.weight_nf4, packed) and torch.equal(layer.absmax, absmax)
        assert torch.allclose(layer.merged_linear()(x), got, atol=1e-5)
        layer.merge()
        merged = layer(x)
        assert layer.merged and (merged - got).abs().max() < 0.1 * got.abs().max()  # NF4 rounding of the merged weight
        layer.unmerge()
        assert not layer.merged and (layer(x) - got).abs().max() < 0.1 * got.abs().max()


# ---------------------------------------------------------------- through the trainer


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.parametrize("swap", [{"name": "fp8"}, {"name": "fp8", "format": "e5m2", "granularity": "tensor"},
                                  {"name": "fp4"}, {"name": "fp4", "format": "nvfp4"}])
def test_fake_quant_swaps_train_a_gpt_preset(tmp_path, small_text, swap):
    raw = tiny_preset(small_text, max_steps=10, eval_interval=10, save_interval=10)
    raw["layer_swaps"] = [swap]
    result = train(load_preset(raw), tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert result.steps == 10 and losses[-1] < losses[0] - 0.3
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert all(r["tflops"] > 0 and "mfu" not in r for r in rows)  # torchtitan's rule: no MFU for quantized matmuls
    run = load_run(tmp_path / "run")
    assert sum(isinstance(m, FakeQuantLinear) for m in run.model.modules()) == 8


def test_nf4_lora_fine_tunes_only_adapters_from_a_full_precision_run_and_exports_merged(tmp_path, small_text):
    pytest.importorskip("transformers")
    train(load_preset(tiny_preset(small_text, max_steps=6, eval_interval=6, save_interval=6)), tmp_path / "fp")
    pretrained = load_run(tmp_path / "fp").model.state_dict()
    raw = tiny_preset(small_text, max_steps=8, eval_interval=8, save_interval=4, lr=1e-2, init_from=str(tmp_path / "fp"))
    raw["model"]["dropout"] = 0.0
    raw["layer_swaps"] = [{"name": "nf4_lora", "rank": 4, "alpha": 8, "double_quant": False}]
    trainer = Trainer(load_preset(raw), tmp_path / "qlora")
    layers = dict(adapter_layers(trainer.model))
    assert len(layers) == 8
    packed, absmax = quantize_nf4(pretrained["blocks.0.attn.c_attn.weight"])
    assert torch.equal(layers["blocks.0.attn.c_attn"].weight_nf4, packed) and torch.equal(layers["blocks.0.attn.c_attn"].absmax, absmax)
    trainable = sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.fit().steps == 8
    after = trainer.model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(".lora_" in k for k in changed)  # the NF4 base, embeddings and norms are untouched
    assert any(k.endswith("lora_B.weight") for k in changed)
    # a stop after step 4 (saved there) and a resume reproduce the uninterrupted losses bitwise
    assert train(load_preset(raw), tmp_path / "split", [StopAt(4)]).steps == 4
    assert train(load_preset(raw), tmp_path / "split").resumed_from == 4
    assert _losses(tmp_path / "split") == _losses(tmp_path / "qlora")
    # the merged export is a plain GPT with the run's logits
    run = load_run(tmp_path / "qlora")
    assert cli_main(["export", "--run-dir", str(tmp_path / "qlora"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, run.tokenizer.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, run.model(ids).logits, atol=1e-4)
    plain = merge_adapters(load_run(tmp_path / "qlora").model)
    assert not adapter_layers(plain)


def test_cli_sets_a_whole_section_by_its_name(tmp_path, small_text, capsys):
    import json

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_preset(small_text, max_steps=2, eval_interval=2, save_interval=2)))
    assert cli_main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--layer_swaps", '[{"name": "fp4", "format": "nvfp4"}]']) == 0
    assert [s["name"] for s in json.loads((tmp_path / "run" / "preset.json").read_text())["layer_swaps"]] == ["fp4"]
    assert cli_main(["train", str(path), "--layerswaps", "[]"]) == 2
    assert "or a whole section: --auxiliary" in capsys.readouterr().err
