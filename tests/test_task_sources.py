"""Algorithmic-task sources (modular_arithmetic, mqar, needle): answer-only labels, seeded splits, exact resume,
bad options rejected at validation, and grokfast_modp_cpu training through the Trainer with val_accuracy."""
import json

import pytest
import torch

from lmforge.config import PresetError, load_preset
from lmforge.data import DataPipeline, build_tokenizer
from lmforge.data.config import DataConfig
from lmforge.data.tasks import IGNORE
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import train

MODULAR = {"sources": [{"type": "modular_arithmetic", "p": 11}], "task": "labeled", "tokenizer": {"type": "ids", "vocab_size": 13},
           "seq_length": 4, "shuffle_buffer": 0}


def _pipeline(data: dict, tmp_path, split="train", batch_size=8, seq_length=4):
    cfg = DataConfig.model_validate(data)
    tok = build_tokenizer(cfg.tokenizer, tmp_path / "tok", lambda: iter(()))
    return DataPipeline(cfg, tok, split=split, batch_size=batch_size, seq_length=seq_length), tok


def test_modular_batches_label_only_the_answer(tmp_path):
    pipe, _ = _pipeline(MODULAR, tmp_path)
    batch = next(iter(pipe))
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (8, 4)
    assert (x[:, 1] == 11).all() and (x[:, 3] == 12).all()
    assert (y[:, :3] == IGNORE).all() and torch.equal(y[:, 3], x[:, 0] * x[:, 2] % 11)


def test_modular_split_is_seeded_and_disjoint(tmp_path):
    def rows(split):
        pipe, _ = _pipeline(MODULAR, tmp_path, split=split, batch_size=200)
        seen = set()
        for batch in pipe:
            seen |= {tuple(r) for r in batch["input_ids"][:, [0, 2]].tolist()}
            if split == "train" and len(seen) >= 55:
                break
        return seen
    train_rows, val_rows = rows("train"), rows("val")
    assert len(train_rows) == 55 and len(val_rows) == 55 and not train_rows & val_rows  # 11 * 10 equations, 50/50


def test_task_positions_resume_exactly(tmp_path):
    for data in (MODULAR, {"sources": [{"type": "mqar", "seq_len": 16, "num_kv_pairs": [2, 3], "vocab_size": 32}], "task": "labeled",
                           "tokenizer": {"type": "ids", "vocab_size": 32}, "seq_length": 16}):
        seq = data["seq_length"]
        pipe, tok = _pipeline(data, tmp_path, seq_length=seq)
        it = iter(pipe)
        for _ in range(3):
            next(it)
        state = pipe.state_dict()
        expected = [next(it) for _ in range(10)]  # runs past the 55-equation epoch of the modular task
        again = DataPipeline(DataConfig.model_validate(data), tok, split="train", batch_size=8, seq_length=seq)
        again.load_state_dict(state)
        got = iter(again)
        for want in expected:
            have = next(got)
            assert all(torch.equal(want[k], have[k]) for k in ("input_ids", "labels"))


def test_mqar_labels_sit_on_queries(tmp_path):
    data = {"sources": [{"type": "mqar", "seq_len": 32, "num_kv_pairs": 4, "vocab_size": 64}], "task": "labeled",
            "tokenizer": {"type": "ids", "vocab_size": 64}, "seq_length": 32}
    pipe, _ = _pipeline(data, tmp_path, seq_length=32)
    batch = next(iter(pipe))
    x, y = batch["input_ids"], batch["labels"]
    mask = y != IGNORE
    assert (mask.sum(1) == 4).all() and (y[mask] >= 32).all()  # 4 queries, values from the upper half
    for row_x, row_y in zip(x, y):
        keys, values = row_x[0:8:2].tolist(), row_x[1:8:2].tolist()
        for t in (row_y != IGNORE).nonzero().flatten().tolist():
            assert t >= 8 and values[keys.index(int(row_x[t]))] == int(row_y[t])  # the value paired with the queried key
    val_a = next(iter(_pipeline(data, tmp_path, split="val", seq_length=32)[0]))
    val_b = next(iter(_pipeline(data, tmp_path, split="val", seq_length=32)[0]))
    assert torch.equal(val_a["input_ids"], val_b["input_ids"]) and not torch.equal(val_a["input_ids"], x)


def test_needle_trains_only_the_answer(tmp_path, shared_data):
    data = {"sources": [{"type": "needle", "path": str(shared_data / "stories.txt"), "haystack_chars": [64], "val_samples": 4}],
            "task": "labeled", "tokenizer": {"type": "byte"}, "seq_length": 256}
    pipe, tok = _pipeline(data, tmp_path, batch_size=4, seq_length=256)
    batch = next(iter(pipe))
    for x, y in zip(batch["input_ids"], batch["labels"]):
        targets = tok.decode([int(t) for t in y[y != IGNORE]])
        assert len(targets) == 7 and targets[:6].isdigit() and targets.endswith(".")  # the 6-digit value and its period
        prompt = tok.decode([int(t) for t in x[batch["attention_mask"][0].bool()]])
        assert f"is {targets[:6]}. " in prompt  # the needle itself is in the haystack the model reads


def test_a_labeled_sample_longer_than_seq_length_is_an_error(tmp_path):
    from lmforge.data import DataError

    data = {"sources": [{"type": "mqar", "seq_len": 32, "num_kv_pairs": 4, "vocab_size": 64}], "task": "labeled",
            "tokenizer": {"type": "ids", "vocab_size": 64}, "seq_length": 16}
    pipe, _ = _pipeline(data, tmp_path, seq_length=16)
    with pytest.raises(DataError, match="has 32 tokens, more than data.seq_length 16"):
        next(iter(pipe))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(task="lm"), r"source type modular_arithmetic brings answer-only labels: set data.task 'labeled'"),
    (lambda d: d["tokenizer"].update(vocab_size=12), r"uses token ids 0\.\.12: use tokenizer type 'ids' with vocab_size >= 13"),
    (lambda d: d["sources"][0].update(op="/", p=12), r"op '/' needs a prime p"),
    (lambda d: d["sources"][0].update(train_fraction=1.0), r"data\.sources\.0\.train_fraction"),
    (lambda d: d.update(sources=[{"type": "mqar", "seq_len": 16, "num_kv_pairs": 8}]), r"seq_len \(16\) must be >= 4 \* num_kv_pairs"),
    (lambda d: d.update(sources=[{"type": "text", "path": "x.txt"}]), r"data.task 'labeled' needs sources that bring their own labels"),
])
def test_bad_task_options_are_preset_errors(tmp_path, change, message):
    data = json.loads(json.dumps(MODULAR))
    change(data)
    preset = {"model": {"arch": "gpt", "n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 16}, "data": data,
              "train": {"max_steps": 1}}
    with pytest.raises(PresetError, match=message):
        load_preset(preset)


def test_grokfast_modp_preset_trains_and_logs_val_accuracy(tmp_path):
    result = train(load_preset("grokfast_modp_cpu", {"train.max_steps": 40, "train.progress_bar": False}), tmp_path / "run")
    evals = [r for r in read_metrics(tmp_path / "run") if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [20, 40] and all(r["val_tokens"] == 4656 for r in evals)  # every held-out equation
    assert result.last_val["val_accuracy"] >= 0 and "val_bpb" not in result.last_val  # ids have no bytes
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    model = load_preset("grokking_modp_cpu").model
    assert model.init == "pytorch" and model.block_size == 4
