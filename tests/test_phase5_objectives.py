"""Phase 5 (seed 001): supervised json_samples batches, classification / distill / multitask objectives."""
import json
import math

import pytest
import torch

from conftest import tiny_preset
from helpers.phase5_data import write_corpus_classification, write_definitions_seq2seq
from lmforge.config import PresetError, load_preset
from lmforge.data import DataConfig, DataPipeline, build_val_batches
from lmforge.data.stream import train_documents
from lmforge.data.supervised import LabelVocab, build_label_vocab
from lmforge.data.tokenizers import ByteTokenizer
from lmforge.inference import load_run
from lmforge.objectives.distill import distillation_kl
from lmforge.training.checkpoint import CheckpointManager
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import Trainer, train

SEQ = 32


def _data_cfg(path, task, **extra) -> DataConfig:
    return DataConfig.model_validate({
        "sources": [{"type": "json_samples", "path": str(path)}], "task": task, "tokenizer": {"type": "byte"},
        "validation": {"method": "hash", "fraction": 0.1}, "shuffle_buffer": 0, **extra,
    })


def _cls_preset(path, objective=None, **train) -> dict:
    preset = tiny_preset(path, **{"batch_size": 8, "max_steps": 20, "eval_interval": 10, "eval_batches": 8, "save_interval": 10, **train})
    preset["model"].update(block_size=SEQ, dropout=0.0)
    preset["data"].update(sources=[{"type": "json_samples", "path": str(path)}], task="classification",
                          tokenizer={"type": "byte"}, validation={"method": "hash", "fraction": 0.1})
    preset["objective"] = objective or {"name": "classification"}
    preset["samples"] = {"prompts": ["In"], "max_new_tokens": 4}
    return preset


def test_classification_batches_carry_class_ids(tmp_path, shared_data):
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=30)
    cfg = _data_cfg(path, "classification")
    tok = ByteTokenizer()
    vocab = build_label_vocab(train_documents(cfg))
    assert vocab.labels == ["bible", "dictionary"]
    docs = list(train_documents(cfg))
    batch = next(iter(DataPipeline(cfg, tok, batch_size=8, seq_length=SEQ, labels=vocab)))
    assert set(batch) >= {"input_ids", "labels", "attention_mask", "last_index", "class_labels"}
    for i, doc in enumerate(docs[:8]):
        ids = tok.encode(doc["input"])[:SEQ]
        n = len(ids)
        assert batch["class_labels"][i].item() == vocab.id(doc["target"]) == ["bible", "dictionary"].index(doc["target"])
        assert batch["input_ids"][i, :n].tolist() == ids and batch["input_ids"][i, n:].eq(0).all()
        assert batch["attention_mask"][i].sum().item() == n and batch["last_index"][i].item() == n - 1
        assert batch["labels"][i, : n - 1].tolist() == ids[1:] and batch["labels"][i, n - 1 :].eq(-100).all()


def test_label_vocab_types_unknown_labels_and_file(tmp_path):
    vocab = build_label_vocab(iter([{"target": 2, "source": "s"}, {"target": 0, "source": "s"}, {"target": "0", "source": "s"}]))
    assert vocab.labels == [0, 2, "0"] and vocab.id(2) == 1 and vocab.id("0") == 2 and vocab.id("never seen") == -100
    vocab.save(tmp_path)
    assert LabelVocab.load(tmp_path).labels == [0, 2, "0"]


def test_seq2seq_batches_mask_the_input(tmp_path, shared_data):
    path = write_definitions_seq2seq(tmp_path / "s2s.json", shared_data, n=20)
    cfg = _data_cfg(path, "seq2seq")
    tok = ByteTokenizer()
    docs = list(train_documents(cfg))
    batch = next(iter(DataPipeline(cfg, tok, batch_size=4, seq_length=80)))  # every sample fits: nothing truncated
    for i, doc in enumerate(docs[:4]):
        prompt, target = tok.encode(doc["input"]), tok.encode(doc["target"]) + ([tok.eos_id] if tok.eos_id is not None else [])
        labels = batch["labels"][i].tolist()
        assert labels[: len(prompt) - 1] == [-100] * (len(prompt) - 1)  # no loss on the input
        assert labels[len(prompt) - 1 : len(prompt) - 1 + len(target)] == target  # loss on every target token, eos included
        assert all(v == -100 for v in labels[len(prompt) - 1 + len(target):])
        assert batch["input_ids"][i, : len(prompt) + len(target) - 1].tolist() == (prompt + target)[:-1]


def test_supervised_stream_resumes_exactly_with_a_worker(tmp_path, shared_data):
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=40)
    cfg = _data_cfg(path, "classification", num_workers=1, shuffle_buffer=8)
    tok, vocab = ByteTokenizer(), build_label_vocab(train_documents(_data_cfg(path, "classification")))
    ref = DataPipeline(cfg, tok, batch_size=4, seq_length=SEQ, labels=vocab)
    it = iter(ref)
    for _ in range(5):
        next(it)
    state = ref.state_dict()
    expected = [next(it) for _ in range(3)]
    ref.close()
    resumed = DataPipeline(cfg, tok, batch_size=4, seq_length=SEQ, labels=vocab)
    resumed.load_state_dict(state)
    got = [next(iter(resumed)) for _ in range(3)]
    resumed.close()
    for a, b in zip(expected, got):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_classification_trains_to_high_accuracy_and_checkpoints_its_head(tmp_path, shared_data):
    path = write_corpus_classification(tmp_path / "cls.json", shared_data)
    run = tmp_path / "run"
    result = train(load_preset(_cls_preset(path, early_stopping_patience=3, early_stopping_metric="val_accuracy")), run)
    assert json.loads((run / "labels.json").read_text())["labels"] == ["bible", "dictionary"]
    evals = [r for r in read_metrics(run) if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert result.last_val["val_accuracy"] >= 0.95 and result.last_val["val_samples"] >= 30
    rows = [r for r in read_metrics(run) if "cls_loss" in r]
    assert rows[0]["cls_loss"] > 0.5 and "accuracy" in rows[-1]  # starts near ln 2
    ckpt = CheckpointManager(run / "checkpoints").load_latest()
    assert {"classification_head.weight", "classification_head.bias"} <= set(ckpt.model_state)
    assert ckpt.model_state["classification_head.weight"].shape[0] == 2
    # a resumed trainer rebuilds the head before loading, so the checkpoint fits and evaluation matches
    more = Trainer(load_preset(_cls_preset(path, max_steps=20)), run)
    assert more.resume() and math.isclose(more.evaluate()["val_accuracy"], result.last_val["val_accuracy"])
    # load_run (generation, eval, distillation teacher) re-attaches the head with its trained weights
    loaded = load_run(run)
    assert torch.equal(loaded.model.classification_head.weight, more.model.classification_head.weight)


def test_early_stopping_metric_is_validated(tmp_path):
    with pytest.raises(PresetError, match="early_stopping_metric"):
        load_preset(tiny_preset(tmp_path / "x.txt", early_stopping_metric="val_f1"))


def test_classification_objective_needs_the_classification_task(tmp_path, small_text):
    preset = tiny_preset(small_text)
    preset["objective"] = {"name": "classification"}
    with pytest.raises(PresetError, match="data.task 'classification'"):
        Trainer(load_preset(preset), tmp_path / "run")


def test_distillation_kl_hand_checked():
    labels = torch.tensor([[5, -100]])
    student = torch.tensor([[[0.0, 0.0], [9.0, -9.0]]])  # the masked second position must not count
    teacher = torch.tensor([[[math.log(3.0), 0.0], [-9.0, 9.0]]])
    # T=1: p = (3/4, 1/4), q = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    assert math.isclose(distillation_kl(student, teacher, labels, 1.0).item(), 0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel_tol=1e-5)
    # T=2: p = softmax(ln3/2, 0) = (sqrt3, 1)/(sqrt3+1), q uniform; times T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert math.isclose(distillation_kl(student, teacher, labels, 2.0).item(), 4 * kl2, rel_tol=1e-5)
    same = torch.randn(2, 3, 7)
    assert distillation_kl(same, same.clone(), torch.zeros(2, 3, dtype=torch.long), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_student_learns_from_a_teacher_run(tmp_path, small_text):
    teacher_run = tmp_path / "teacher"
    train(load_preset(tiny_preset(small_text, max_steps=10, eval_interval=10, save_interval=10)), teacher_run)
    student = tiny_preset(small_text, max_steps=8, eval_interval=8, save_interval=8)
    student["model"].update(n_embd=16, n_head=2, dropout=0.0)
    student["objective"] = {"name": "distill", "teacher": f"{teacher_run}:lm_current", "temperature": 2.0}
    trainer = Trainer(load_preset(student), tmp_path / "student")
    assert not any(p.requires_grad for p in trainer.objective.teacher.parameters()) and not trainer.objective.teacher.training
    result = trainer.fit()
    rows = [r for r in read_metrics(tmp_path / "student") if "kd" in r]
    assert len(rows) == 8 and rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["kd"] < rows[0]["kd"]
    assert all(math.isclose(r["loss"], 0.7 * r["ce"] + 0.3 * r["kd"], rel_tol=1e-4) for r in rows)
    assert not any("teacher" in k for k in CheckpointManager(result.run_dir / "checkpoints").load_latest().model_state)
    # a teacher with another tokenizer is refused with the reason
    byte_student = dict(student, data={**student["data"], "tokenizer": {"type": "byte"}})
    with pytest.raises(PresetError, match="different tokenizer"):
        Trainer(load_preset(byte_student), tmp_path / "byte_student")


def test_multitask_logs_each_term_and_sums_them(tmp_path, shared_data):
    path = write_corpus_classification(tmp_path / "cls.json", shared_data, n=60)
    objective = {"name": "multitask", "tasks": [{"name": "clm", "weight": 1.0}, {"name": "classification", "weight": 0.5}]}
    run = tmp_path / "run"
    train(load_preset(_cls_preset(path, objective, max_steps=4, eval_interval=4, save_interval=4)), run)
    rows = read_metrics(run)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 4
    for r in steps:
        assert {"clm/ce", "clm/loss", "classification/cls_loss", "classification/accuracy", "classification/loss"} <= set(r)
        assert math.isclose(r["loss"], r["clm/loss"] + 0.5 * r["classification/loss"], rel_tol=1e-4)
    val = [r for r in rows if "val_loss" in r][-1]
    assert math.isclose(val["val_loss"], val["clm/val_loss"] + 0.5 * val["classification/val_loss"], rel_tol=1e-6)
    assert val["val_accuracy"] == val["classification/val_accuracy"]
    with pytest.raises(PresetError, match="unknown objective"):
        load_preset(_cls_preset(path, {"name": "multitask", "tasks": [{"name": "nope"}]}))


def test_hdf5_targets_reach_the_batch_as_class_ids(tmp_path, shared_data):
    h5py = pytest.importorskip("h5py")
    tok = ByteTokenizer()
    kjv = [line.split(" ", 1)[1] for line in (shared_data / "kjv.txt").read_text().splitlines()[:40]]
    rows = [tok.encode(line)[:16] for line in kjv]
    path = tmp_path / "rows.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset/inputs", data=torch.tensor(rows).numpy())
        f.create_dataset("dataset/targets", data=torch.tensor([i % 3 for i in range(40)]).numpy())
    cfg = DataConfig.model_validate({"sources": [{"type": "hdf5", "path": str(path)}], "task": "classification",
                                     "validation": {"method": "tail", "fraction": 0.25}, "shuffle_buffer": 0})
    vocab = build_label_vocab(train_documents(cfg))
    assert vocab.labels == [0, 1, 2]
    batch = next(iter(DataPipeline(cfg, tok, batch_size=6, seq_length=SEQ, labels=vocab)))
    assert batch["class_labels"].tolist() == [0, 1, 2, 0, 1, 2]
    assert batch["input_ids"][:, :16].tolist() == rows[:6] and batch["last_index"].tolist() == [15] * 6
    val = build_val_batches(cfg, tok, batch_size=20, seq_length=SEQ, max_batches=1, labels=vocab)[0]
    assert val["class_labels"].tolist() == [i % 3 for i in range(30, 40)]
