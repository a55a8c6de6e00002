"""Runtime decisions and LR schedules: small pure functions with exact expected values."""
import math

import pytest
import torch

from lmforge import runtime
from lmforge.training.schedules import ConstantConfig, WarmupCosineConfig, WSDConfig, build_schedule


def test_auto_precision_on_cpu_follows_measured_width_threshold(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_amx_or_avx512_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert runtime._pick_precision("auto", cpu, runtime.CPU_BF16_MIN_WIDTH, []) == "bf16"
    notes = []
    assert runtime._pick_precision("auto", cpu, 128, notes) == "fp32" and "width 128" in notes[0]
    monkeypatch.setattr(runtime, "cpu_has_amx_or_avx512_bf16", lambda: False)
    assert runtime._pick_precision("auto", cpu, 1024, []) == "fp32"
    assert runtime._pick_precision("bf16", cpu, 64, []) == "bf16"  # an explicit choice is kept


def test_runtime_autocast_and_scaler():
    rt = runtime.setup_runtime("cpu", "bf16")
    with rt.autocast():
        y = torch.nn.Linear(8, 8)(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16
    assert not rt.grad_scaler().is_enabled()
    fp32 = runtime.setup_runtime("cpu", "fp32")
    with fp32.autocast():
        assert torch.nn.Linear(8, 8)(torch.randn(2, 8)).dtype == torch.float32
    assert runtime.lookup_cuda_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert runtime.peak_flops(fp32, override=123.0) == 123.0
    assert runtime.measure_matmul_peak_flops(fp32, size=128, repeats=1) > 0


def test_the_mfu_peak_is_measured_once_per_machine_dtype_and_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    calls = []
    real = runtime.measure_gemm_peak_flops
    monkeypatch.setattr(runtime, "measure_gemm_peak_flops", lambda rt, shapes: calls.append((rt.autocast_dtype, shapes)) or real(rt, shapes, repeats=2))
    from lmforge.models import GPT, GPTConfig

    shapes = runtime.gemm_shapes(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=40)), 64)
    assert shapes == sorted(set(shapes)) and (64, 32, 96) in shapes and all(m == 64 for m, _, _ in shapes)  # c_attn among them
    fp32, bf16 = runtime.setup_runtime("cpu", "fp32"), runtime.setup_runtime("cpu", "bf16")
    first = runtime.peak_flops(fp32, None, shapes)
    assert first > 0 and runtime.peak_flops(fp32, None, shapes) == first and len(calls) == 1  # the cached number
    runtime.peak_flops(bf16, None, shapes)
    runtime.peak_flops(fp32, None, shapes[:1])
    assert len(calls) == 3  # another dtype, other shapes: measured once each
    assert (tmp_path / "peak_flops.json").exists()
    monkeypatch.setenv("LMFORGE_REMEASURE_PEAK", "1")
    runtime.peak_flops(fp32, None, shapes)
    assert len(calls) == 4
    assert runtime.peak_flops(fp32, 5.0, shapes) == 5.0 and len(calls) == 4  # train.peak_flops wins


def test_measuring_the_peak_leaves_the_runs_random_stream_alone():
    """A run that measures the MFU peak (first run on a machine) and one that reads it from the cache must see the
    same dropout masks and data order: the measurement draws from a generator of its own."""
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    runtime.measure_gemm_peak_flops(runtime.setup_runtime("cpu", "fp32"), [(16, 16, 16)], repeats=1)
    assert torch.equal(torch.rand(4), expected)


def test_warmup_cosine_is_nanogpts_get_lr():
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 100, 2000

    def nanogpt_get_lr(it):
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay:
            return min_lr
        ratio = (it - warmup) / (decay - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    fn = build_schedule(WarmupCosineConfig(warmup_steps=warmup, min_lr_ratio=0.1, decay_steps=decay), total_steps=5000)
    for it in (0, 50, 99, 100, 101, 1000, 1999, 2000, 2001, 4000):
        assert lr * fn(it) == pytest.approx(nanogpt_get_lr(it), rel=1e-12)


def test_constant_and_wsd():
    const = build_schedule(ConstantConfig(warmup_steps=4), 100)
    assert [const(s) for s in (0, 3, 4, 99)] == [0.2, 0.8, 1.0, 1.0]
    wsd = build_schedule(WSDConfig(warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0), 100)
    assert wsd(50) == 1.0 and wsd(79) == 1.0
    assert wsd(90) == pytest.approx(0.5) and wsd(100) == 0.0
    sqrt = build_schedule(WSDConfig(warmup_steps=0, decay_fraction=0.5, decay_shape="sqrt"), 100)
    assert sqrt(75) == pytest.approx(1 - math.sqrt(0.5))


def test_run_point_is_one_rule_for_every_boundary():
    import pytest

    from lmforge.quant.schedule import BitNetTwoStageConfig, TwoStageSchedule
    from lmforge.run_point import at_step, check_run_point
    from lmforge.training.forge_controller import ForgeControllerConfig, forge_controller

    assert at_step(40, 100) == 40 and at_step(0.4, 100) == 40 and at_step(0.05, 30) == 2 and at_step(1.0, 7) == 7
    with pytest.raises(ValueError, match="a float, so a fraction of the run"):
        check_run_point(4000.0, "warmup")
    alpha = forge_controller(ForgeControllerConfig(warmup=0.05, compaction_end=0.7), 30)  # warm-up ends at at_step(0.05, 30) = 2
    assert alpha(1) == 0.0 and alpha(2) > 0.0
    assert TwoStageSchedule(BitNetTwoStageConfig(warmup_steps=0, split_fraction=0.25), 30).split == at_step(0.25, 30)
