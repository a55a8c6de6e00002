"""Data pipeline: sources, splits, sharding, mixing, tokenizers, packing, exact resume.

Real text comes from ../shared/data (the `shared_data` fixture); small files are written to tmp_path
where a test needs a specific shape (malformed JSONL, invalid UTF-8, empty files).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lmforge.data import (
    DataConfig,
    DataError,
    DataPipeline,
    DataWarning,
    TokenizerConfig,
    ValidationConfig,
    build_tokenizer,
    build_val_batches,
    iter_texts,
    load_tokenizer,
)
from lmforge.data.mixer import RoundRobin
from lmforge.data.packer import IGNORE_INDEX, Packer
from lmforge.data.sharding import ShardedDocuments
from lmforge.data.sources import JsonlSource, PythonStdlibSource, TextSource
from lmforge.data.stream import build_sources
from lmforge.data.tokenizers import ByteTokenizer, CharTokenizer

HASH = ValidationConfig(method="hash", fraction=0.1)
TAIL = ValidationConfig(method="tail", fraction=0.1)


def data_config(sources: list[dict], **kw) -> DataConfig:
    return DataConfig.model_validate({"sources": sources, **kw})


def text_source(path, split="train", validation=TAIL, **kw) -> TextSource:
    cfg = data_config([{"type": "text", "path": str(path), "shuffle": False, **kw}])
    return TextSource(cfg.sources[0], split=split, validation=validation)


def all_docs(source, state=None):
    return list(source.documents(state))


@pytest.fixture(scope="module")
def shakespeare(shared_data: Path) -> str:
    return (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def kjv_lines(shared_data: Path) -> list[str]:
    with open(shared_data / "kjv.txt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(3000)]


# ---------------------------------------------------------------------------- config


def test_config_validates_sources_with_their_registered_class(tmp_path):
    cfg = data_config([{"type": "text", "path": "a.txt"}, {"type": "jsonl", "path": ["x.jsonl"], "text_field": "body"}])
    assert type(cfg.sources[0]).__name__ == "TextSourceConfig" and cfg.sources[0].chunk_chars == 4096
    assert cfg.sources[0].name == "text:a.txt"
    assert cfg.sources[1].text_field == "body"
    assert data_config(cfg.model_dump(mode="json")["sources"]).sources == cfg.sources  # round-trips through JSON

    with pytest.raises(ValidationError) as err:
        data_config([{"type": "txt", "path": "a.txt"}])
    assert "unknown source type 'txt'; allowed: auto, binary, hdf5, hf, json_samples, jsonl, modular_arithmetic, mqar, needle, pdf, pickle, python_stdlib, text" in str(err.value)
    with pytest.raises(ValidationError) as err:
        data_config([{"type": "text", "path": "a.txt", "chunk_size": 5}])
    assert err.value.errors()[0]["loc"] == ("sources", 0, "chunk_size") and "allowed: chunk_chars, name, path, shuffle, type" in str(err.value)
    with pytest.raises(ValidationError):
        data_config([])
    with pytest.raises(ValidationError):
        ValidationConfig(fraction=1.0)
    with pytest.raises(ValidationError):
        TokenizerConfig(type="pretrained")
    with pytest.raises(ValidationError):
        TokenizerConfig(type="bpe", vocab_size=100)


# ---------------------------------------------------------------------------- sources


def test_text_chunks_reassemble_the_file_and_resume_by_offset(tmp_path, shakespeare):
    long_line = "naïve café ✓ " * 900  # one 11.7k-byte line without a newline: cut at character boundaries
    content = shakespeare[:20_000] + "héllo — wörld\n" + long_line
    path = tmp_path / "mixed.txt"
    path.write_text(content, encoding="utf-8")

    train = all_docs(text_source(path, "train", chunk_chars=256))
    val = all_docs(text_source(path, "val", chunk_chars=256))
    assert "".join(d["text"] for d, _ in train + val) == content
    assert len(train) > 50
    assert [d["eos"] for d, _ in train] == [False] * (len(train) - 1) + [True]
    assert [d["eos"] for d, _ in val] == [False] * (len(val) - 1) + [True]
    assert all(d["text"].endswith("\n") for d, _ in train[:60])  # chunks end at line breaks
    assert all(200 <= len(d["text"]) < 700 for d, _ in train[:60])
    assert {d["source"] for d, _ in train} == {f"text:{path}"}

    source = text_source(path, "train", chunk_chars=256)
    for k in (0, 17, len(train) - 1):
        assert all_docs(source, train[k][1]) == train[k + 1:]


def test_text_folder_reads_text_suffixes_sorted_and_counts_bad_bytes(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("second\n")
    (folder / "a.txt").write_text("first\n")
    (folder / "sub" / "c.text").write_bytes(b"ok\n\xff\xfe bad\n")
    (folder / "skip.json").write_text('{"text": "not a text file"}\n')
    (folder / "empty.rst").write_text("")
    source = text_source(folder, "train", validation=ValidationConfig(method="hash", fraction=1e-6))
    assert [p.name for p in source.files] == ["a.txt", "b.md", "empty.rst", "c.text"]
    with pytest.warns(DataWarning, match="1 empty files skipped.*2 invalid UTF-8"):
        docs = all_docs(source)
    assert [d["text"] for d, _ in docs] == ["first\n", "second\n", "ok\n\ufffd\ufffd bad\n"]
    assert source.skipped == {"empty_file": 1, "invalid_utf8": 2}


def test_jsonl_skips_and_counts_malformed_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(
        b'{"text": "first document"}\n'
        b"this is not json\n"
        b"[1, 2, 3]\n"
        b'{"body": "wrong field"}\n'
        b'{"text": 5}\n'
        b'{"text": "bad \xff byte"}\n'
        b"\n"
        b'{"text": "second document", "id": 2}\n'
    )
    cfg = data_config([{"type": "jsonl", "path": str(path)}])
    source = JsonlSource(cfg.sources[0], split="train", validation=ValidationConfig(method="hash", fraction=1e-6))
    with pytest.warns(DataWarning) as record:
        docs = all_docs(source)
    assert [d["text"] for d, _ in docs] == ["first document", "second document"]
    assert all(d["eos"] for d, _ in docs)
    assert source.skipped == {"not_json": 2, "not_object": 1, "missing_field": 2}
    assert len(record) == 1 and f"first at {path} byte 27" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert all_docs(source, docs[0][1]) == docs[1:]

    other = data_config([{"type": "jsonl", "path": str(path), "text_field": "body"}]).sources[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert [d["text"] for d, _ in JsonlSource(other, split="train", validation=HASH).documents()] == ["wrong field"]


def test_jsonl_tail_split_cuts_between_lines(tmp_path, kjv_lines):
    path = tmp_path / "kjv.jsonl"
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in kjv_lines[:500]))
    cfg = data_config([{"type": "jsonl", "path": str(path)}])
    train = [d["text"] for d, _ in JsonlSource(cfg.sources[0], split="train", validation=TAIL).documents()]
    val = [d["text"] for d, _ in JsonlSource(cfg.sources[0], split="val", validation=TAIL).documents()]
    assert train + val == kjv_lines[:500]
    assert 40 <= len(val) <= 60


def test_python_stdlib_finds_real_stdlib_files_only():
    cfg = data_config([{"type": "python_stdlib"}])
    source = PythonStdlibSource(cfg.sources[0], split="train", validation=HASH)
    rel = {p.relative_to(source.root).as_posix() for p in source.files}
    assert {"os.py", "json/__init__.py", "collections/__init__.py"} <= rel
    assert not any(part in ("site-packages", "dist-packages", "__pycache__") for p in source.files for part in p.parts)
    assert all(p.suffix == ".py" for p in source.files)
    docs = []
    for doc, _ in source.documents():
        docs.append(doc)
        if len(docs) == 20:
            break
    assert any("import " in d["text"] or "def " in d["text"] for d in docs)
    with pytest.raises(DataError, match="python_stdlib.*cannot do validation.method 'tail'"):
        PythonStdlibSource(cfg.sources[0], split="train", validation=TAIL)


def test_bad_paths_raise_data_error_naming_source_and_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"'text:{missing}'.*{missing}.*does not exist"):
        text_source(missing)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=f"folder {tmp_path / 'empty_dir'} has no files"):
        text_source(tmp_path / "empty_dir")
    with pytest.raises(DataError, match="matches no files"):
        text_source(tmp_path / "*.txt")
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(DataError, match=f"every file is empty: {tmp_path / 'blank.txt'}"):
        text_source(tmp_path / "blank.txt")
    cfg = data_config([{"type": "text", "path": str(missing)}])
    with pytest.raises(DataError, match="does not exist"):
        DataPipeline(cfg, ByteTokenizer(), batch_size=2, seq_length=8)


# ---------------------------------------------------------------------------- splits and sharding


def test_tail_split_matches_nanogpt_shakespeare_char(tmp_path, shared_data, shakespeare):
    """nanoGPT: chars = sorted(set(data)); train = data[:int(n*0.9)]; val = data[int(n*0.9):]."""
    n = len(shakespeare)
    cfg = data_config(
        [{"type": "text", "path": str(shared_data / "tinyshakespeare.txt"), "shuffle": False}],
        tokenizer={"type": "char"}, validation={"method": "tail", "fraction": 0.1},
    )
    tok = build_tokenizer(cfg.tokenizer, tmp_path, lambda: iter_texts(cfg, "all", cfg.tokenizer.train_chars))
    assert tok.vocab_size == 65 and tok.chars == sorted(set(shakespeare))

    train_ids: list[int] = []
    for doc, _ in build_sources(cfg, "train")[0].documents():
        train_ids += tok.encode(doc["text"])
    assert tok.decode(train_ids) == shakespeare[:int(n * 0.9)]

    batches = build_val_batches(cfg, tok, batch_size=12, seq_length=64, max_batches=1000)
    assert len(batches) == math.ceil(math.ceil((n - int(n * 0.9) - 1) / 64) / 12)
    labels = torch.cat([b["labels"].flatten() for b in batches])
    val_ids = [int(batches[0]["input_ids"][0, 0])] + labels[labels != IGNORE_INDEX].tolist()
    assert tok.decode(val_ids) == shakespeare[int(n * 0.9):]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_hash_split_is_deterministic_and_disjoint(tmp_path, kjv_lines):
    path = write_jsonl(tmp_path / "kjv.jsonl", kjv_lines)
    spec = data_config([{"type": "jsonl", "path": str(path)}]).sources[0]

    def texts(split):
        return [d["text"] for d, _ in JsonlSource(spec, split=split, validation=HASH).documents()]

    train, val = texts("train"), texts("val")
    assert texts("train") == train and texts("val") == val
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(kjv_lines)
    assert 0.07 < len(val) / len(kjv_lines) < 0.13


def test_readers_together_see_every_document_once_per_epoch(tmp_path, kjv_lines):
    path = write_jsonl(tmp_path / "kjv.jsonl", kjv_lines[:200])
    spec = data_config([{"type": "jsonl", "path": str(path)}]).sources[0]
    source = JsonlSource(spec, split="train", validation=HASH)
    everything = [d["text"] for d, _ in source.documents()]
    seen = []
    for reader in range(3):
        seen += [d["text"] for d, _ in ShardedDocuments(source, reader, 3, loop=False).documents()]
    assert sorted(seen) == sorted(everything) and len(set(seen)) == len(seen)

    looping = ShardedDocuments(source, 1, 3, loop=True).documents()
    per_epoch = math.ceil((len(everything) - 1) / 3)
    got = [next(looping) for _ in range(2 * per_epoch + 1)]
    assert [s["epoch"] for _, s in got] == [0] * per_epoch + [1] * per_epoch + [2]
    assert [d for d, _ in got[:per_epoch]] == [d for d, _ in got[per_epoch:2 * per_epoch]]

    tiny = write_jsonl(tmp_path / "tiny.jsonl", ["only one document"])
    one = JsonlSource(data_config([{"type": "jsonl", "path": str(tiny)}]).sources[0], split="train", validation=ValidationConfig(method="hash", fraction=1e-6))
    with pytest.raises(DataError, match="1 documents in the train split, fewer than the 2 readers"):
        next(ShardedDocuments(one, 1, 2, loop=True).documents())


# ---------------------------------------------------------------------------- mixer


def test_mixer_round_robin_drops_a_failing_source_and_fails_when_all_do(tmp_path, kjv_lines):
    a = write_jsonl(tmp_path / "a.jsonl", kjv_lines[:30])
    b = tmp_path / "b.txt"
    b.write_text("".join(line + "\n" for line in kjv_lines[30:60]))
    cfg = data_config([{"type": "jsonl", "path": str(a)}, {"type": "text", "path": str(b), "chunk_chars": 64}])
    no_val = ValidationConfig(method="hash", fraction=1e-6)
    good, doomed = (ShardedDocuments(s, 0, 1, loop=True) for s in build_sources(cfg.model_copy(update={"validation": no_val}), "train"))

    docs = list(zip(range(6), RoundRobin([good, doomed]).documents()))
    assert [d["source"] for _, (d, _) in docs] == [f"jsonl:{a}", f"text:{b}"] * 3

    b.unlink()  # the text source now breaks when it opens its file
    stream = RoundRobin([good, doomed]).documents()
    with pytest.warns(DataWarning, match=f"data source 'text:{b}' failed and is dropped: FileNotFoundError"):
        got = [next(stream) for _ in range(40)]
    assert all(d["source"] == f"jsonl:{a}" for d, _ in got)
    assert [d["text"] for d, _ in got[:30]] == kjv_lines[:30]  # the good source goes on, then its next epoch
    assert got[-1][1]["status"] == ["live", "failed"]

    a.unlink()
    with pytest.raises(DataError, match="all data sources failed: .*FileNotFoundError"), pytest.warns(DataWarning):
        list(RoundRobin([ShardedDocuments(s.source, 0, 1, loop=True) for s in (good, doomed)]).documents())


# ---------------------------------------------------------------------------- tokenizers


def test_char_tokenizer_round_trips_and_drops_unknown_chars(tmp_path, shakespeare):
    tok = CharTokenizer(sorted(set(shakespeare)))
    assert tok.vocab_size == 65 and tok.eos_id is None
    ids = tok.encode(shakespeare)
    assert tok.decode(ids) == shakespeare and max(ids) == 64
    assert tok.encode("\n !") == [0, 1, 2]  # sorted order, as nanoGPT's stoi
    with pytest.warns(DataWarning, match="not in its vocabulary"):
        assert tok.decode(tok.encode("Hi ✓ there")) == "Hi  there"
    assert tok.dropped_chars == 1
    assert torch.equal(tok.token_char_lengths(), torch.ones(65, dtype=torch.int64))

    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab["\n"] == 0 and len(vocab) == 65


def test_char_vocab_path_is_reused(tmp_path, shakespeare):
    vocab_path = tmp_path / "shared_vocab.json"
    cfg = TokenizerConfig(type="char", path=str(vocab_path))
    first = build_tokenizer(cfg, tmp_path / "run1", lambda: iter([shakespeare[:5000]]))
    assert vocab_path.is_file()

    def no_text():
        raise AssertionError("the vocab file should have been loaded")

    second = build_tokenizer(cfg, tmp_path / "run2", no_text)
    assert second.chars == first.chars


def test_bpe_trains_saves_and_is_reused_from_the_run_dir(tmp_path, shakespeare):
    cfg = TokenizerConfig(type="bpe", vocab_size=400, train_chars=200_000)
    tok = build_tokenizer(cfg, tmp_path, lambda: iter([shakespeare[i:i + 4096] for i in range(0, 400_000, 4096)]))
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    assert tok.vocab_size == 400 and tok.eos_id == 0

    def no_text():
        raise AssertionError("a saved tokenizer must be loaded, not retrained")

    reused = build_tokenizer(cfg, tmp_path, no_text)
    loaded = load_tokenizer(tmp_path)
    sample = shakespeare[500_000:520_000] + "héllo ✓"
    ids = tok.encode(sample)
    assert len(ids) < len(sample) * 0.7  # merges were learned
    assert reused.encode(sample) == ids and loaded.encode(sample) == ids
    assert tok.decode(ids) == sample
    lengths = tok.token_byte_lengths()
    assert lengths.shape == (400,) and lengths[0] == 0
    assert int(lengths[ids].sum()) == len(sample.encode("utf-8"))
    assert tok.token_char_lengths() is None
    with pytest.raises(DataError, match="holds a 'bpe' tokenizer but the preset asks for 'char'"):
        build_tokenizer(TokenizerConfig(type="char"), tmp_path, no_text)


def test_byte_tokenizer_lengths():
    tok = ByteTokenizer()
    assert torch.equal(tok.token_byte_lengths(), torch.ones(256, dtype=torch.int64))
    text = "naïve ✓ ok"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_char_lengths()[ids].sum()) == len(text)
    with pytest.raises(DataError, match="no tokenizer saved"):
        load_tokenizer(Path("/nonexistent-run-dir"))


# ---------------------------------------------------------------------------- packer


def numbered_docs(lengths: list[int], eos: bool):
    start = 0
    docs = []
    for i, n in enumerate(lengths):
        docs.append(({"text": " ".join(str(t) for t in range(start, start + n)), "source": "s", "eos": eos}, {"doc": i}))
        start += n
    return lambda state: iter(docs[state["doc"] + 1:] if state else docs)


def test_packer_blocks_overlap_by_one_and_pad_the_end():
    encode = lambda text: [int(t) for t in text.split()]  # noqa: E731
    packer = Packer(encode, eos_id=None, seq_length=8, finite=True)
    blocks = [b.copy() for b in packer.blocks(numbered_docs([5, 11, 3, 7], eos=False))]
    assert [len(b) for b in blocks] == [9] * 4
    for block in blocks[:-1]:
        inputs, labels = block[:-1], block[1:]
        assert np.array_equal(labels, inputs + 1)
    assert all(a[-1] == b[0] for a, b in zip(blocks, blocks[1:]))
    last = blocks[-1]
    assert list(last[:2]) == [24, 25] and (last[2:] == IGNORE_INDEX).all()  # tokens 0..25: 25 targets, 1 in the last block

    from lmforge.data.stream import collate

    batch = collate(blocks)
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape == (4, 8)
    assert batch["labels"][-1].tolist() == [25] + [-100] * 7
    assert batch["input_ids"][-1].tolist() == [24] + [0] * 7
    targets = batch["labels"][batch["labels"] != -100]
    assert targets.tolist() == list(range(1, 26))  # every token after the first is a target exactly once

    with_eos = Packer(encode, eos_id=999, seq_length=4, finite=False)
    flat = np.concatenate([b[:-1] for b in with_eos.blocks(numbered_docs([3, 3, 3], eos=True))])
    assert flat.tolist() == [0, 1, 2, 999, 3, 4, 5, 999]


# ---------------------------------------------------------------------------- loader and resume


def resume_config(tmp_path: Path, shakespeare: str, kjv_lines: list[str], **kw) -> DataConfig:
    (tmp_path / "play.txt").write_text(shakespeare[:3000])
    write_jsonl(tmp_path / "verses.jsonl", kjv_lines[:40])
    return data_config(
        [
            {"type": "text", "path": str(tmp_path / "play.txt"), "chunk_chars": 64},
            {"type": "jsonl", "path": str(tmp_path / "verses.jsonl")},
        ],
        validation={"method": "hash", "fraction": 0.1}, shuffle_buffer=16, seed=7, **kw,
    )


def check_exact_resume(cfg: DataConfig, saved_after: int, then: int, tmp_path: Path) -> None:
    tok = ByteTokenizer()
    kw = dict(batch_size=4, seq_length=32)
    reference = DataPipeline(cfg, tok, **kw)
    expected = [next(reference) for _ in range(saved_after + then)]
    reference.close()

    first = DataPipeline(cfg, tok, **kw)
    for k in range(saved_after):
        assert torch.equal(next(first)["input_ids"], expected[k]["input_ids"])
    torch.save(first.state_dict(), tmp_path / "data_state.pt")
    first.close()
    state = torch.load(tmp_path / "data_state.pt", weights_only=True)
    assert state["batches_consumed"] == saved_after
    json.dumps(state)  # plain containers only

    resumed = DataPipeline(cfg, tok, **kw)
    resumed.load_state_dict(state)
    for k in range(saved_after, saved_after + then):
        got = next(resumed)
        assert torch.equal(got["input_ids"], expected[k]["input_ids"]), f"batch {k} differs after resume"
        assert torch.equal(got["labels"], expected[k]["labels"])
    resumed.close()


def test_exact_resume_in_process(tmp_path, shakespeare, kjv_lines):
    cfg = resume_config(tmp_path, shakespeare, kjv_lines)
    pipe = DataPipeline(cfg, ByteTokenizer(), batch_size=4, seq_length=32)
    batches = [next(pipe) for _ in range(120)]  # several epochs of this small corpus
    assert batches[0]["input_ids"].shape == (4, 32)
    assert torch.equal(batches[0]["labels"][:, :-1], batches[0]["input_ids"][:, 1:])
    assert max(s["epoch"] for s in pipe.state_dict()["readers"][0]["mixer"]["sources"]) >= 2
    check_exact_resume(cfg, saved_after=9, then=20, tmp_path=tmp_path)
    check_exact_resume(cfg, saved_after=50, then=60, tmp_path=tmp_path)  # across epoch boundaries


def test_exact_resume_with_two_workers(tmp_path, shakespeare, kjv_lines):
    cfg = resume_config(tmp_path, shakespeare, kjv_lines, num_workers=2)
    check_exact_resume(cfg, saved_after=5, then=6, tmp_path=tmp_path)  # odd: the next batch comes from worker 1


def test_resume_refuses_a_different_reader_layout(tmp_path, shakespeare, kjv_lines):
    cfg = resume_config(tmp_path, shakespeare, kjv_lines)
    pipe = DataPipeline(cfg, ByteTokenizer(), batch_size=4, seq_length=32)
    next(pipe)
    state = pipe.state_dict()
    other = DataPipeline(cfg, ByteTokenizer(), batch_size=4, seq_length=32, rank=0, world_size=2)
    with pytest.raises(DataError, match="same data.num_workers"):
        other.load_state_dict(state)


def test_reader_errors_reach_the_trainer_as_data_error(tmp_path):
    write_jsonl(tmp_path / "one.jsonl", ["a single short document"])
    cfg = data_config([{"type": "jsonl", "path": str(tmp_path / "one.jsonl")}], validation={"fraction": 1e-6})
    pipe = DataPipeline(cfg, ByteTokenizer(), batch_size=2, seq_length=8, rank=1, world_size=2)
    with pytest.raises(DataError, match="all data sources failed: .*fewer than the 2 readers"):
        next(pipe)


def test_val_batches_are_deterministic_and_empty_val_is_an_error(tmp_path, shakespeare, kjv_lines):
    cfg = resume_config(tmp_path, shakespeare, kjv_lines)
    tok = ByteTokenizer()
    a = build_val_batches(cfg, tok, batch_size=4, seq_length=32, max_batches=50)
    b = build_val_batches(cfg, tok, batch_size=4, seq_length=32, max_batches=50)
    assert len(a) == len(b) and 1 < len(a) < 50
    assert all(torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    assert len(build_val_batches(cfg, tok, batch_size=4, seq_length=32, max_batches=2)) == 2

    write_jsonl(tmp_path / "few.jsonl", kjv_lines[:3])
    tiny = data_config([{"type": "jsonl", "path": str(tmp_path / "few.jsonl")}], validation={"fraction": 1e-6})
    with pytest.raises(DataError, match="validation split is empty"):
        build_val_batches(tiny, tok, batch_size=4, seq_length=32, max_batches=5)


def test_iter_texts_limits_characters(tmp_path, shakespeare, kjv_lines):
    cfg = resume_config(tmp_path, shakespeare, kjv_lines)
    texts = list(iter_texts(cfg, "train", 1000))
    assert sum(map(len, texts)) == 1000
    assert {t[:20] for t in texts} & {line[:20] for line in kjv_lines[:40]}  # both sources are interleaved


def test_shuffled_epochs_are_permutations_and_resume_mid_epoch(shared_data):
    path = shared_data / "tinyshakespeare.txt"
    ordered = [d["text"] for d, _ in text_source(path, chunk_chars=8192).documents()]
    shuffled = text_source(path, chunk_chars=8192, shuffle=True)
    epoch0 = [d["text"] for d, _ in shuffled.documents(None, epoch=0)]
    epoch1 = [d["text"] for d, _ in shuffled.documents(None, epoch=1)]
    assert sorted(epoch0) == sorted(ordered) and sorted(epoch1) == sorted(ordered)
    assert epoch0 != ordered and epoch0 != epoch1
    stream = shuffled.documents(None, epoch=1)
    for _ in range(7):
        _, state = next(stream)
    fresh = text_source(path, chunk_chars=8192, shuffle=True)
    assert [d["text"] for d, _ in fresh.documents(state, epoch=1)] == epoch1[7:]
    val = text_source(path, "val", chunk_chars=8192, shuffle=True)
    assert "".join(d["text"] for d, _ in val.documents()) == path.read_text()[int(path.stat().st_size * 0.9):]
