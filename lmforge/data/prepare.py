"""`lmforge data prepare` and `lmforge data inspect`: one pass over a preset's sources, tokenized ahead of training.

prepare writes nanoGPT-style token files, `<out>/train.bin` and `<out>/val.bin` (uint16 when the vocab
fits, else uint32), each with the `<file>.json` sidecar the `binary` source reads, plus the tokenizer
files, so a preset can train from `{"type": "binary", "path": "<out>/train.bin"}` without tokenizing again.
Sources are written one after another, each in its epoch-0 document order (what `data.mix: sequential`
reads first), with eos after each document as the packer would add it. inspect does the same pass
without writing and prints documents, tokens and rejects per source.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lmforge.data.config import DataConfig
from lmforge.data.loader import iter_texts
from lmforge.data.sources.base import Document
from lmforge.data.splits import Split
from lmforge.data.stream import build_sources
from lmforge.data.tokenizers import Tokenizer, build_tokenizer

SPLITS: tuple[Split, ...] = ("train", "val")
FLUSH_TOKENS = 1 << 20  # ids buffered before a write: bounded memory whatever the corpus size


@dataclass
class SourceStats:
    name: str
    split: str
    documents: int = 0
    tokens: int = 0
    rejects: dict[str, int] = field(default_factory=dict)


def preset_tokenizer(cfg: DataConfig, directory: Path) -> Tokenizer:
    """The tokenizer training would build (char: vocab of all the data; bpe: trained on the train split), saved in `directory`."""
    split = "all" if cfg.tokenizer.type == "char" else "train"
    return build_tokenizer(cfg.tokenizer, directory, lambda: iter_texts(cfg, split, cfg.tokenizer.train_chars))


def document_ids(doc: Document, tokenizer: Tokenizer) -> list[int]:
    """The ids the packer would take from `doc`: its tokens or its encoded text, then eos when the document asks for it."""
    ids = list(doc["tokens"]) if "tokens" in doc else tokenizer.encode(doc["text"])
    if doc["eos"] and tokenizer.eos_id is not None:
        ids.append(tokenizer.eos_id)
    return ids


def scan(cfg: DataConfig, tokenizer: Tokenizer, split: Split, progress: bool = False) -> Iterator[tuple[SourceStats, np.ndarray | None]]:
    """Per source: (stats so far, ids of the next document); after a source's last document, (final stats, None)."""
    from tqdm.auto import tqdm

    for source in build_sources(cfg, split):
        stats = SourceStats(source.name, split)
        bar = tqdm(desc=f"{split} {source.name}", unit="doc", disable=not progress, dynamic_ncols=True)
        for doc, _ in source.documents(None, 0):
            ids = np.asarray(document_ids(doc, tokenizer), dtype=np.int64)
            stats.documents += 1
            stats.tokens += len(ids)
            bar.update(1)
            bar.set_postfix(tokens=f"{stats.tokens:,}", refresh=False)
            yield stats, ids
        bar.close()
        stats.rejects = dict(source.skipped)
        yield stats, None


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size < 2**16 else "uint32"


def prepare(cfg: DataConfig, out: Path, progress: bool = True) -> list[SourceStats]:
    """Write `<out>/{train,val}.bin` with sidecars and the tokenizer; returns the per-source counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = preset_tokenizer(cfg, out)
    dtype = token_dtype(tokenizer.vocab_size)
    report: list[SourceStats] = []
    for split in SPLITS:
        path = out / f"{split}.bin"
        tmp = path.with_suffix(".bin.tmp")
        pending: list[np.ndarray] = []
        buffered = 0
        with open(tmp, "wb") as f:
            for stats, ids in scan(cfg, tokenizer, split, progress):
                if ids is None:
                    report.append(stats)
                    continue
                pending.append(ids)
                buffered += len(ids)
                if buffered >= FLUSH_TOKENS:
                    np.concatenate(pending).astype(dtype).tofile(f)
                    pending, buffered = [], 0
            if pending:
                np.concatenate(pending).astype(dtype).tofile(f)
        tmp.replace(path)
        mine = [s for s in report if s.split == split]
        sidecar = {
            "dtype": dtype, "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.type, "eos_id": tokenizer.eos_id,
            "documents": sum(s.documents for s in mine), "tokens": sum(s.tokens for s in mine),
            "sources": {s.name: {"documents": s.documents, "tokens": s.tokens} for s in mine},
        }
        path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return report


def inspect(cfg: DataConfig, tokenizer_dir: Path | None = None) -> list[SourceStats]:
    """Per-source counts of both splits, tokenizing with the preset's tokenizer (built in a temporary dir unless given)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = preset_tokenizer(cfg, Path(tokenizer_dir or tmp))
        return [stats for split in SPLITS for stats, ids in scan(cfg, tokenizer, split) if ids is None]


def format_table(report: list[SourceStats], write: Callable[[str], None] = print) -> None:
    """One row per (split, source): documents, tokens, and each reject reason with its count."""
    width = max([len(s.name) for s in report] + [6])
    write(f"{'split':<5}  {'source':<{width}}  {'documents':>10}  {'tokens':>12}  rejects")
    for s in report:
        rejects = ", ".join(f"{reason} {n}" for reason, n in sorted(s.rejects.items())) or "-"
        write(f"{s.split:<5}  {s.name:<{width}}  {s.documents:>10,}  {s.tokens:>12,}  {rejects}")
