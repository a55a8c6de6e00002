"""Supervised rows for `data.task` classification and seq2seq: one document -> one fixed-width row.

Language modelling packs documents into a token stream; supervised tasks keep each sample whole, so the
target stays attached to its input. A row is a flat int64 array of fixed width, so the shuffle buffer,
the reader state and DataLoader workers handle it exactly like a packed LM block:

- classification: `seq_length + 1` input tokens (padding -100, the input truncated to `seq_length`),
  then the class id. Batch: input_ids (B, T) right-padded with 0, attention_mask (B, T), last_index (B,)
  (the last real token, whose final hidden state a causal model has computed from the whole input),
  class_labels (B,), and next-token `labels` over the input so `clm` can share the batch (multitask).
- seq2seq: `seq_length + 1` tokens of input + target + eos (padding -100), then the prompt length.
  Batch: input_ids, labels with -100 on the input part (loss on the target tokens only), attention_mask.
- labeled: `seq_length` input ids (padding -100), then `seq_length` labels (-100 = no loss), then 0. The labels
  come with the document (`tokens` + `labels`, the algorithmic task sources), or from `segments` of text whose
  trained ones are the targets; a sample longer than `seq_length` is an error (no cut that keeps its answer
  answerable is known). Batch: input_ids (padding 0), labels, attention_mask.

The label vocabulary is every distinct train-split target, sorted, saved as `<run_dir>/labels.json` and
loaded from there on resume and evaluation, so class ids never change under a run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch

from lmforge.data.errors import DataError
from lmforge.data.packer import IGNORE_INDEX, DocumentIter

Task = Literal["lm", "classification", "seq2seq", "labeled"]
LABELS_FILE = "labels.json"


class LabelVocab:
    """Targets (strings or ints, as the JSON holds them) <-> class ids 0..K-1."""

    def __init__(self, labels: list[Any]):
        self.labels = list(labels)
        self.index = {_key(label): i for i, label in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def id(self, label: Any) -> int:
        """The class id; a label never seen in the train split gets -100 (ignored by loss and accuracy)."""
        return self.index.get(_key(label), IGNORE_INDEX)

    def save(self, run_dir: Path) -> None:
        from lmforge.data.tokenizers import atomic_write_text

        atomic_write_text(Path(run_dir) / LABELS_FILE, json.dumps({"labels": self.labels}, indent=1))

    @classmethod
    def load(cls, run_dir: Path) -> "LabelVocab":
        path = Path(run_dir) / LABELS_FILE
        try:
            return cls(json.loads(path.read_text(encoding="utf-8"))["labels"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read the label vocabulary {path}: {err}") from None


def _key(label: Any) -> tuple[str, str]:
    """Hashable and type-aware, so the label 1 and the label "1" stay two classes."""
    if isinstance(label, list):
        raise DataError(f"a classification target must be a string or an int, got the list {label[:5]}...")
    return (type(label).__name__, str(label))


def build_label_vocab(documents: Iterator[dict]) -> LabelVocab:
    """Every distinct `target` of the documents, sorted (ints numerically first, then strings)."""
    seen: dict[tuple[str, str], Any] = {}
    for doc in documents:
        if "target" not in doc:
            raise DataError(f"data.task 'classification' needs samples with a target; a document of source {doc['source']!r} has none")
        seen.setdefault(_key(doc["target"]), doc["target"])
    if not seen:
        raise DataError("data.task 'classification': the train split has no samples to build the label vocabulary from")
    labels = sorted(seen.values(), key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))
    return LabelVocab(labels)


def setup_label_vocab(run_dir: Path, documents: Callable[[], Iterator[dict]]) -> LabelVocab:
    """Loaded from the run dir when saved there (resume, eval), else built from `documents()` and saved."""
    if (Path(run_dir) / LABELS_FILE).is_file():
        return LabelVocab.load(run_dir)
    vocab = build_label_vocab(documents())
    vocab.save(run_dir)
    return vocab


class SupervisedPacker:
    """Same interface as `Packer` (blocks + state_dict), one row per document and no leftover between rows."""

    def __init__(
        self, task: Task, encode: Callable[[str], list[int]], eos_id: int | None, seq_length: int,
        labels: LabelVocab | None = None, tag_source: bool = False,
    ):
        if task == "classification" and labels is None:
            raise ValueError("classification rows need a label vocabulary")
        self.task, self.encode, self.eos_id, self.seq_length = task, encode, eos_id, seq_length
        self.labels, self.tag_source = labels, tag_source
        self.upstream: dict | None = None

    def state_dict(self) -> dict:
        return {"upstream": self.upstream, "leftover": np.zeros(0, dtype=np.int64)}

    def load_state_dict(self, state: dict) -> None:
        self.upstream = state["upstream"]

    def _ids(self, value: Any) -> list[int]:
        """Text is encoded; a list of ints (hdf5 rows, pre-tokenized targets) is taken as token ids."""
        if isinstance(value, str):
            return self.encode(value)
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return list(value)
        return self.encode(str(value))

    def labeled_ids(self, doc: dict) -> tuple[list[int], list[int]]:
        """(input ids, labels) of a labeled document, the labels aligned with the inputs (label t = target after t)."""
        if "labels" in doc:
            ids, labels = list(doc["tokens"]), list(doc["labels"])
            if len(ids) != len(labels):
                raise DataError(f"a labeled document of source {doc['source']!r} has {len(ids)} tokens but {len(labels)} labels")
            return ids, labels
        if "segments" not in doc:
            raise DataError(f"data.task 'labeled' needs documents with tokens+labels or segments; source {doc['source']!r} gave neither")
        ids, trained = [], []
        for segment in doc["segments"]:
            piece = self._ids(segment["text"])
            ids += piece
            trained += [bool(segment["train"])] * len(piece)
        labels = [ids[t + 1] if trained[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
        return ids[:-1], labels

    def row(self, doc: dict) -> np.ndarray:
        if self.task == "labeled":
            ids, labels = self.labeled_ids(doc)
            if len(ids) > self.seq_length:  # cutting would lose context an answer needs (MQAR's pairs, a needle)
                raise DataError(f"a labeled sample of source {doc['source']!r} has {len(ids)} tokens, more than data.seq_length "
                                f"{self.seq_length}; raise data.seq_length (and model.block_size) or shorten the task's samples")
            block = np.full(2 * self.seq_length + 1, IGNORE_INDEX, dtype=np.int64)
            block[: len(ids)] = ids
            block[self.seq_length : self.seq_length + len(labels)] = labels
            block[-1] = 0
            return np.append(block, doc.get("source_index", 0)) if self.tag_source else block
        if "target" not in doc:
            raise DataError(f"data.task {self.task!r} needs samples with a target; a document of source {doc['source']!r} has none")
        width = self.seq_length + 1
        block = np.full(width, IGNORE_INDEX, dtype=np.int64)
        source = doc.get("input", doc.get("tokens"))
        inputs = self._ids(source) if source is not None else self.encode(doc["text"])
        if self.task == "classification":
            ids = inputs[: self.seq_length]
            if not ids:
                raise DataError(f"an empty classification input in source {doc['source']!r}")
            block[: len(ids)] = ids
            extra = self.labels.id(doc["target"])
        else:
            target = self._ids(doc["target"]) + ([self.eos_id] if self.eos_id is not None else [])
            target = target[:width]  # keep as much target as fits, then the input's end (nearest the target)
            keep = width - len(target)
            prompt = inputs[len(inputs) - keep:] if keep > 0 else []
            ids = prompt + target
            block[: len(ids)] = ids
            extra = len(prompt)
        out = np.append(block, extra)
        return np.append(out, doc.get("source_index", 0)) if self.tag_source else out

    def blocks(self, documents: DocumentIter) -> Iterator[np.ndarray]:
        for doc, state in documents(self.upstream):
            self.upstream = state
            yield self.row(doc)


def collate_supervised(task: Task, rows: list[np.ndarray], tagged: bool = False) -> dict[str, torch.Tensor]:
    """Stack rows (see the module docstring) into the batch the supervised objectives read."""
    arr = np.stack(rows)
    out: dict[str, torch.Tensor] = {}
    if tagged:
        out["source_ids"] = torch.from_numpy(np.ascontiguousarray(arr[:, -1]))
        arr = arr[:, :-1]
    extra, block = arr[:, -1], arr[:, :-1]
    if task == "labeled":
        width = block.shape[1] // 2
        ids, labels = block[:, :width], block[:, width:]
        real = ids != IGNORE_INDEX
        return {
            "input_ids": torch.from_numpy(np.ascontiguousarray(np.where(real, ids, 0))),
            "labels": torch.from_numpy(np.ascontiguousarray(labels)),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            **out,
        }
    real = block != IGNORE_INDEX
    inputs = np.where(real[:, :-1], block[:, :-1], 0)
    labels = block[:, 1:].copy()
    attention = real[:, :-1]
    if task == "seq2seq":
        positions = np.arange(labels.shape[1])[None, :]
        labels[positions < (extra[:, None] - 1)] = IGNORE_INDEX  # label j predicts token j+1: inputs' own tokens are not targets
        out.update(attention_mask=torch.from_numpy(attention.astype(np.int64)))
    else:
        lengths = attention.sum(axis=1)
        out.update(
            attention_mask=torch.from_numpy(attention.astype(np.int64)),
            last_index=torch.from_numpy((lengths - 1).astype(np.int64)),
            class_labels=torch.from_numpy(np.ascontiguousarray(extra)),
        )
    out["input_ids"] = torch.from_numpy(np.ascontiguousarray(inputs))
    out["labels"] = torch.from_numpy(np.ascontiguousarray(labels))
    return {"input_ids": out.pop("input_ids"), "labels": out.pop("labels"), **out}
