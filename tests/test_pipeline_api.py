"""Seed 001's async API: create_training_pipeline / setup / await train, callbacks, failures as results."""
import asyncio
import json

import pytest
import torch

from helpers.phase5_data import write_corpus_classification
from lmforge import create_training_pipeline
from lmforge.config import load_preset, list_presets
from lmforge.training.metrics import read_metrics

TINY = {"arch": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}


def _classification_pipeline(tmp_path, shared_data, **options):
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=48)
    opts = dict(task="classification", epochs=2, batch_size=16, learning_rate=3e-3, use_amp=False, eval_batches=8,
                validation_split=0.15, run_dir=str(tmp_path / "run"))
    opts.update(options)
    return create_training_pipeline(model=TINY, train_data_path=str(path), experiment_name="cls", **opts)


def test_training_runs_off_the_loop_with_sync_and_async_callbacks(tmp_path, shared_data):
    pipeline = _classification_pipeline(tmp_path, shared_data)
    events = []
    ticks = {"n": 0}

    def on_epoch_end(epoch, metrics):  # the seed's example callback, unchanged
        events.append(("epoch_end", epoch, f"Epoch {epoch}: Loss={metrics['loss']:.4f}, Acc={metrics['accuracy']:.2%}", ticks["n"]))

    async def on_eval(step, metrics):
        await asyncio.sleep(0)  # runs on the caller's loop
        events.append(("eval", step, metrics["val_accuracy"], ticks["n"]))

    pipeline.register_callback("epoch_end", on_epoch_end)
    pipeline.register_callback("eval", on_eval)
    pipeline.register_callback("train_start", lambda info: events.append(("train_start", info["steps_per_epoch"])))
    pipeline.register_callback("step_end", lambda step, m: events.append(("step_end", step)))
    pipeline.register_callback("checkpoint", lambda step, slot: events.append(("checkpoint", step, slot)))
    pipeline.register_callback("train_end", lambda metrics: events.append(("train_end", metrics["epochs_completed"])))
    with pytest.raises(ValueError, match="unknown event"):
        pipeline.register_callback("batch_end", print)

    async def main():
        async def ticker():
            while True:
                ticks["n"] += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        pipeline.setup()
        assert pipeline.error is None, pipeline.error
        result = await pipeline.train()
        task.cancel()
        return result

    result = asyncio.run(main())
    assert result.success and result.error is None
    spe = pipeline.steps_per_epoch
    assert spe >= 4 and events[0] == ("train_start", spe)
    assert [e[1] for e in events if e[0] == "step_end"] == list(range(1, 2 * spe + 1))
    epochs = [e for e in events if e[0] == "epoch_end"]
    assert [e[1] for e in epochs] == [1, 2] and epochs[0][2].startswith("Epoch 1: Loss=")
    evals = [e for e in events if e[0] == "eval"]
    assert [e[1] for e in evals] == [spe, 2 * spe]
    assert ("checkpoint", 2 * spe, "rolling") in events and events[-1] == ("train_end", 2)
    # the loop kept ticking while the worker thread trained: ticks advanced between the two evaluations
    assert ticks["n"] > 10 and evals[1][3] > evals[0][3]
    m = result.metrics
    assert m["epochs_completed"] == 2 and m["steps"] == 2 * spe and m["training_time_hours"] > 0
    assert m["final_accuracy"] == evals[-1][2] and m["best_accuracy"] == max(e[2] for e in evals) and m["best_accuracy"] >= 0.9
    assert m["best_val_loss"] <= m["last_val"]["val_loss"] and m["final_loss"] is not None
    assert isinstance(result.model, torch.nn.Module) and hasattr(result.model, "classification_head")
    assert result.to_dict()["success"] is True


def test_separate_val_file_is_read_whole_for_lm(tmp_path, shared_data):
    lines = (shared_data / "kjv.txt").read_text().splitlines()
    train_file, val_file = tmp_path / "train.txt", tmp_path / "val.txt"
    train_file.write_text("\n".join(lines[:300]) + "\n")
    val_file.write_text("\n".join(lines[300:330]) + "\n")
    pipeline = create_training_pipeline(model=TINY, train_data_path=train_file, val_data_path=val_file, experiment_name="lm",
                                        max_steps=3, batch_size=8, use_amp=False, eval_batches=1000, run_dir=str(tmp_path / "run"))
    result = asyncio.run(pipeline.setup().train())
    assert result.success, result.error
    val_bytes = len(val_file.read_bytes())
    # every val byte is a target except the first of the file (byte tokenizer, no eos): the val file is not split
    assert result.metrics["last_val"]["val_tokens"] == val_bytes - 1
    preset = json.loads((tmp_path / "run" / "preset.json").read_text())
    assert preset["data"]["val_sources"][0]["path"] == str(val_file)
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r] == [1, 2, 3]
    # model= a run dir: its model config and tokenizer, its weights as the starting point
    more = create_training_pipeline(model=str(tmp_path / "run"), train_data_path=train_file, val_data_path=val_file, experiment_name="more",
                                    max_steps=1, batch_size=8, use_amp=False, run_dir=str(tmp_path / "more"))
    result = asyncio.run(more.setup().train())
    assert result.success, result.error
    preset = json.loads((tmp_path / "more" / "preset.json").read_text())
    assert preset["train"]["init_from"] == str(tmp_path / "run") and preset["model"]["n_embd"] == 32


@pytest.mark.parametrize("options, reason", [
    ({"train_data_path": "/no/such/file.json"}, "does not exist"),
    ({"batch_size": 0}, "train.batch_size"),
    ({"bogus_option": 1}, "unknown option(s) bogus_option"),
    ({"weight_bits": 4}, "ternary"),
    ({"quantization_mode": "stochastic"}, "nearest ternary"),
    ({"weight_bits": 1, "use_bitnet": False}, "use_bitnet=False"),
    ({"model": torch.nn.Linear(3, 3)}, "no config of a registered arch"),
    ({"model": "no_such_arch"}, "neither a registered arch"),
])
def test_bad_setup_comes_back_as_a_failed_result(tmp_path, shared_data, options, reason):
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=10)
    kwargs = {"model": TINY, "train_data_path": str(path), "experiment_name": "bad", "run_dir": str(tmp_path / "run"), **options}
    result = asyncio.run(create_training_pipeline(**kwargs).train())  # train() without setup() sets up first
    assert not result.success and result.model is None and reason in result.error


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_exception_mid_training_from_a_callback_fails_the_result(tmp_path, shared_data, kind):
    pipeline = _classification_pipeline(tmp_path, shared_data, epochs=1)
    if kind == "sync":
        def boom(step, metrics):
            if step == 2:
                raise RuntimeError("disk full at step 2")
    else:
        async def boom(step, metrics):
            if step == 2:
                raise RuntimeError("disk full at step 2")
    pipeline.register_callback("step_end", boom)
    result = asyncio.run(asyncio.wait_for(pipeline.setup().train(), timeout=120))
    assert not result.success and "disk full at step 2" in result.error and "step_end" in result.error
    assert result.metrics["steps"] == 2


def test_phase5_presets_validate_and_drive_the_pipeline(tmp_path, shared_data):
    names = {p.stem for p in list_presets()}
    assert {"phase5_fast_cpu", "phase5_quality_cpu"} <= names
    for name in ("phase5_fast_cpu", "phase5_quality_cpu"):
        load_preset(name)
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=40)
    pipeline = create_training_pipeline(model=None, train_data_path=path, experiment_name="fast", preset="phase5_fast_cpu",
                                        task="classification", max_steps=2, validation_split=0.2, warmup_steps=1,
                                        run_dir=str(tmp_path / "run"))
    result = asyncio.run(pipeline.setup().train())
    assert result.success, result.error
    preset = json.loads((tmp_path / "run" / "preset.json").read_text())
    assert preset["objective"]["name"] == "classification" and preset["data"]["sources"][0]["path"] == str(path)
    assert preset["model"]["n_layer"] == 4 and preset["train"]["lr"] == 0.002 and preset["train"]["lr_schedule"]["warmup_steps"] == 1
    # the seed's Fast values: BitNet b1.58 + Grokfast EMA alpha 0.95 / lambda 3; High Quality: lambda 1
    assert [s["name"] for s in preset["layer_swaps"]] == ["bitlinear"]
    assert [(f["name"], f["alpha"], f["lamb"]) for f in preset["grad_filters"]] == [("grokfast_ema", 0.95, 3.0)]
    quality = load_preset("phase5_quality_cpu")
    assert [(f.name, f.alpha, f.lamb) for f in quality.grad_filters] == [("grokfast_ema", 0.98, 1.0)] and not quality.layer_swaps


def test_seed_documented_options_map_onto_bitnet_grokfast_and_streaming(tmp_path, shared_data):
    """The seed's Default Configuration: weight_bits=1 / quantization_mode='deterministic' select the bitlinear swap,
    streaming is accepted, and use_grokfast over a preset with its own grokfast_ema sets that one filter's values."""
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=40)
    with pytest.warns(UserWarning, match="always stream"):
        pipeline = create_training_pipeline(
            model=TINY, train_data_path=path, experiment_name="seed", preset="phase5_fast_cpu", task="classification",
            max_steps=1, use_bitnet=True, quantization_mode="deterministic", weight_bits=1, use_grokfast=True,
            grokfast_alpha=0.98, grokfast_lambda=2.0, streaming=False, run_dir=str(tmp_path / "run"))
        raw = pipeline.build_preset()
    assert [s["name"] for s in raw["layer_swaps"]] == ["bitlinear"]
    assert raw["grad_filters"] == [{"name": "grokfast_ema", "alpha": 0.98, "lamb": 2.0}]
    assert asyncio.run(pipeline.setup().train()).success


def test_a_given_lmforge_module_is_trained_from_its_own_weights(tmp_path, shared_data):
    from lmforge.models import build_model
    from lmforge.models.gpt import GPTConfig

    torch.manual_seed(7)
    module = build_model(GPTConfig(**{k: v for k, v in TINY.items() if k != "arch"}, vocab_size=300))
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=40)
    pipeline = create_training_pipeline(model=module, train_data_path=path, experiment_name="given", max_steps=2,
                                        batch_size=4, use_amp=False, run_dir=str(tmp_path / "run")).setup()
    assert pipeline.error is None, pipeline.error
    start = pipeline.trainer.model.state_dict()
    for key, value in module.state_dict().items():
        assert torch.equal(start[key], value), key  # the module's weights, not a fresh init
    result = asyncio.run(pipeline.train())
    assert result.success, result.error
    assert not torch.equal(result.model.state_dict()["lm_head.weight"], module.state_dict()["lm_head.weight"])


def test_epoch_end_carries_its_validation_when_log_interval_does_not_divide_the_epoch(tmp_path, shared_data):
    pipeline = _classification_pipeline(tmp_path, shared_data, log_interval=4)
    epochs = []
    pipeline.register_callback("epoch_end", lambda epoch, metrics: epochs.append((epoch, metrics)))
    result = asyncio.run(pipeline.setup().train())
    assert result.success, result.error
    spe = pipeline.steps_per_epoch
    assert spe % 4 != 0
    assert [(e, m["step"]) for e, m in epochs] == [(1, spe), (2, 2 * spe)]
    assert all("val_accuracy" in m and m["accuracy"] == m["val_accuracy"] and "loss" in m for _, m in epochs)
