"""MQAR (Zoology's multi-query associative recall): the generator's layout, the patch expansion, and that a
tiny model learns a trivial setting well above chance."""
import numpy as np
import pytest
import torch

from lmforge.config import load_preset
from lmforge.evaluation.mqar import IGNORE, MQARSetting, expand_tokens, masked_loss, mqar_batch
from lmforge.training.trainer import train


def test_shape_and_determinism():
    s = MQARSetting(seq_len=64, num_kv_pairs=8)
    x1, y1 = mqar_batch(s, 16, np.random.default_rng(3))
    x2, y2 = mqar_batch(s, 16, np.random.default_rng(3))
    x3, _ = mqar_batch(s, 16, np.random.default_rng(4))
    assert x1.shape == y1.shape == (16, 64) and x1.dtype == y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert int(x1.min()) >= 0 and int(x1.max()) < 256


def test_layout_keys_values_queries_and_labels():
    s = MQARSetting(seq_len=64, num_kv_pairs=8, vocab_size=64)
    x, y = mqar_batch(s, 32, np.random.default_rng(0))
    n, half = 8, 32
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        keys, values = row_x[0 : 2 * n : 2], row_x[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(1 <= k < half for k in keys)  # unique keys from the key half
        assert all(half <= v < 64 for v in values)
        answers = [t for t, label in enumerate(row_y) if label != IGNORE]
        assert len(answers) == n  # one labelled position per pair, nothing else
        assert sorted(row_x[t] for t in answers) == sorted(keys)  # each position holds a query key
        for t in answers:
            assert t >= 2 * n  # the query comes after every pair
            assert row_y[t] == values[keys.index(row_x[t])]  # and its label is that key's value


def test_power_law_prefers_near_queries():
    s = MQARSetting(seq_len=256, num_kv_pairs=4, power_a=0.01)
    _, y = mqar_batch(s, 200, np.random.default_rng(0))
    offsets = (torch.nonzero(y != IGNORE)[:, 1] - 8) // 2  # query slot index in the query region
    assert (offsets < 16).float().mean() > 0.5  # 124 slots, most of the mass on the first few


def test_expand_tokens_puts_labels_on_patch_ends():
    s = MQARSetting(seq_len=16, num_kv_pairs=2)
    x, y = mqar_batch(s, 4, np.random.default_rng(0))
    bx, by = expand_tokens(x, y, 4)
    assert bx.shape == by.shape == (4, 64)
    assert torch.equal(bx.view(4, 16, 4), x.unsqueeze(-1).expand(4, 16, 4))
    assert torch.equal(by[:, 3::4], y) and (by.view(4, 16, 4)[..., :3] == IGNORE).all()


def test_loss_only_on_answers():
    s = MQARSetting(seq_len=16, num_kv_pairs=2, vocab_size=32)
    _, y = mqar_batch(s, 2, np.random.default_rng(0))
    logits = torch.randn(2, 16, 32)
    moved = logits.clone()
    moved[y == IGNORE] = torch.randn_like(moved[y == IGNORE]) * 10  # scramble every unlabelled position
    assert torch.allclose(masked_loss(logits, y), masked_loss(moved, y))


@pytest.mark.parametrize("arch", ["gpt", "agiformer"])
def test_tiny_model_learns_trivial_mqar_through_the_trainer(tmp_path, arch):
    """2 pairs, vocab 32, the `mqar` source in lmforge's Trainer: chance is 1/16 over the value half; picking one of
    the two values in context gives ~0.5, so > 0.3 means the model reads the pairs."""
    patch = 1 if arch == "gpt" else 4
    model = ({"arch": "gpt", "n_embd": 32, "n_layer": 2, "n_head": 2, "block_size": 16} if arch == "gpt" else
             {"arch": "agiformer", "n_embd": 32, "n_layer": 1, "n_head": 2, "block_size": 64, "attn_window": 4,
              "memory_chunk": 8, "act_max_steps": 1})
    preset = {
        "name": "mqar_tiny", "model": model,
        "data": {"sources": [{"type": "mqar", "seq_len": 16, "num_kv_pairs": 2, "vocab_size": 32, "patch_size": patch, "val_samples": 128}],
                 "task": "labeled", "tokenizer": {"type": "ids", "vocab_size": 32}, "seq_length": 16 * patch, "shuffle_buffer": 0},
        "train": {"batch_size": 32, "max_steps": 150, "lr": 3e-3, "lr_schedule": {"name": "warmup_cosine", "warmup_steps": 10},
                  "weight_decay": 0.1, "beta2": 0.98, "precision": "fp32", "eval_interval": 150, "eval_batches": 4,
                  "save_interval": 150, "progress_bar": False},
        "samples": {"prompts": ["1 2"], "max_new_tokens": 1},
    }
    result = train(load_preset(preset), tmp_path / "run")
    assert result.last_val["val_tokens"] == 128 * 2  # one answer position per query, every val sample
    assert result.last_val["val_accuracy"] > 0.3, result.last_val
