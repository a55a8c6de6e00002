"""Extra source types (pickle, json_samples, binary, hdf5, pdf), mixing modes and the quality filter.

Every file a test reads is written to tmp_path from real text in ../shared/data.
"""
from __future__ import annotations

import json
import os
from itertools import islice
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lmforge.data import DataConfig, DataError, DataPipeline, ValidationConfig
from lmforge.data.packer import IGNORE_INDEX, Packer
from lmforge.data.sharding import ShardedDocuments
from lmforge.data.sources import BinarySource, Hdf5Source, JsonSamplesSource, PdfSource, PickleSource
from lmforge.data.sources.pdf import chunk_text
from lmforge.data.sources.pickle_source import restricted_load
from lmforge.data.stream import build_mixer, build_sources
from lmforge.data.tokenizers import ByteTokenizer

HASH = ValidationConfig(method="hash", fraction=0.1)
TAIL = ValidationConfig(method="tail", fraction=0.1)
ALL_TRAIN = ValidationConfig(method="hash", fraction=1e-9)  # practically every document is train


def canonical(value) -> str:
    """repr with every set's members sorted, so two equal sets print alike whatever their insertion order."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(map(canonical, value))})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{canonical(k)}: {canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}({[canonical(item) for item in value]})"
    return repr(value)


def source_config(spec: dict):
    return DataConfig.model_validate({"sources": [spec]}).sources[0]


def texts(source, state=None) -> list[str]:
    return [doc["text"] for doc, _ in source.documents(state)]


@pytest.fixture(scope="module")
def story_lines(shared_data: Path) -> list[str]:
    """The first 400 non-empty lines of stories.txt."""
    out = []
    with open(shared_data / "stories.txt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(line.strip())
            if len(out) == 400:
                break
    return out


@pytest.fixture(scope="module")
def samples(story_lines: list[str]) -> list[dict]:
    """Seed 001 samples: a story line cut into input and target, with a quality score in metadata."""
    return [
        {"input": line[: len(line) // 2], "target": line[len(line) // 2:], "metadata": {"quality": round((i % 10) / 10, 1)}}
        for i, line in enumerate(story_lines)
    ]


# ---------------------------------------------------------------------------- pickle


class _SystemCall:
    """Pickles to a call of os.system, the classic malicious pickle."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def pickle_source(path: Path, split="train", **kw) -> PickleSource:
    return PickleSource(source_config({"type": "pickle", "path": str(path), **kw}), split=split, validation=HASH)


def test_pickle_reads_strings_dicts_and_samples_by_hash_split(tmp_path, story_lines, samples):
    (tmp_path / "strings.pkl").write_bytes(pickle.dumps(story_lines[:100]))
    (tmp_path / "dicts.pkl").write_bytes(pickle.dumps([{"body": t} for t in story_lines[100:200]]))
    (tmp_path / "samples.pickle").write_bytes(pickle.dumps({"samples": samples[:100]}))
    # files of a folder come sorted: dicts.pkl, samples.pickle, strings.pkl
    expected = story_lines[100:200] + [s["input"] + s["target"] for s in samples[:100]] + story_lines[:100]
    train = texts(pickle_source(tmp_path, text_field="body"))
    val = texts(pickle_source(tmp_path, "val", text_field="body"))
    assert sorted(train + val) == sorted(expected) and len(val) > 0
    assert train == [t for t in expected if t not in set(val)]


def test_pickle_allows_numpy_arrays_and_resumes(tmp_path, samples):
    ids = [np.frombuffer(s["target"].encode(), dtype=np.uint8).astype(np.int64) for s in samples[:50]]
    records = [{"input": s["input"], "target": a, "metadata": {"quality": np.float64(0.5)}} for s, a in zip(samples, ids)]
    path = tmp_path / "arrays.pkl"
    path.write_bytes(pickle.dumps({"samples": records}, protocol=5))
    cfg = source_config({"type": "pickle", "path": str(path), "template": "{input}"})
    src = PickleSource(cfg, split="train", validation=ALL_TRAIN)
    docs = list(src.documents())
    assert [d["text"] for d, _ in docs] == [s["input"] for s in samples[:50]]
    assert [d["target"] for d, _ in docs] == [a.tolist() for a in ids]
    assert all(d["quality"] == 0.5 and type(d["quality"]) is float for d, _ in docs)
    assert [d["text"] for d, _ in src.documents(docs[9][1])] == [d["text"] for d, _ in docs[10:]]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_reads_allowed_types_in_every_protocol(tmp_path, story_lines, protocol):
    records = [
        {"text": story_lines[0], "ids": np.arange(7, dtype=np.uint16), "score": np.float32(0.25), "shape": (2, 3)},
        {"input": story_lines[1], "target": np.zeros((2, 3), dtype=np.int64), "metadata": {"quality": 0.5, "tags": {"a", "b"}}},
        {"text": story_lines[2], "raw": b"\x00\xff", "buf": bytearray(b"ok"), "z": 1 + 2j, "flags": frozenset([True, None])},
    ]
    path = tmp_path / "all.pkl"
    path.write_bytes(pickle.dumps(records, protocol=protocol))
    # Sets are compared by their sorted members: a set's iteration order can differ after a round trip (hash seed).
    assert canonical(restricted_load(path)) == canonical(records)
    assert texts(PickleSource(source_config({"type": "pickle", "path": str(path)}), split="train", validation=ALL_TRAIN)) == [
        story_lines[0], story_lines[1] + "[[0, 0, 0], [0, 0, 0]]", story_lines[2]
    ]


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, story_lines):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([story_lines[0], _SystemCall(f"touch {marker}")]))
    with pytest.raises(DataError) as err:
        list(pickle_source(path).documents())
    assert not marker.exists()
    refused = f"{os.system.__module__}.system"  # posix.system on Linux
    assert refused in str(err.value) and "refuses" in str(err.value) and "nothing was executed" in str(err.value)
    # A global reached by name is refused too, even a harmless-looking one.
    path.write_bytes(pickle.dumps([Path("x")]))
    with pytest.raises(DataError, match="pathlib"):
        list(pickle_source(path).documents())


def test_pickle_skips_bad_records_and_rejects_bad_files(tmp_path, story_lines):
    path = tmp_path / "mixed.pkl"
    path.write_bytes(pickle.dumps([story_lines[0], 42, {"other": "x"}, "", story_lines[1], {"text": story_lines[2]}]))
    src = PickleSource(source_config({"type": "pickle", "path": str(path)}), split="train", validation=ALL_TRAIN)
    with pytest.warns(UserWarning, match="2 records of the wrong shape skipped"):
        assert texts(src) == story_lines[:3]
    assert src.skipped == {"bad_record": 2, "empty_text": 1}
    path.write_bytes(pickle.dumps(story_lines[:10])[:-20])
    with pytest.raises(DataError, match="not a readable pickle"):
        list(pickle_source(path).documents())
    path.write_bytes(pickle.dumps({"rows": story_lines[:3]}))
    with pytest.raises(DataError, match="expected a list of records"):
        list(pickle_source(path).documents())
    with pytest.raises(ValidationError, match="unknown key"):
        source_config({"type": "pickle", "path": str(path), "text_key": "x"})
    with pytest.raises(DataError, match="cannot do validation.method 'tail'"):
        PickleSource(source_config({"type": "pickle", "path": str(path)}), split="train", validation=ValidationConfig(method="tail"))


# ---------------------------------------------------------------------------- json_samples


def json_source(path: Path, split="train", validation=HASH, **kw) -> JsonSamplesSource:
    return JsonSamplesSource(source_config({"type": "json_samples", "path": str(path), **kw}), split=split, validation=validation)


def test_json_samples_text_is_input_plus_target_and_target_is_kept(tmp_path, samples):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"samples": samples}))
    docs = [d for d, _ in json_source(path, validation=ALL_TRAIN).documents()]
    assert [d["text"] for d in docs] == [s["input"] + s["target"] for s in samples]
    assert [d["target"] for d in docs] == [s["target"] for s in samples]
    assert [d["quality"] for d in docs] == [s["metadata"]["quality"] for s in samples]
    assert all(d["eos"] and d["source"] == f"json_samples:{path}" for d in docs)
    qa = [d["text"] for d, _ in json_source(path, validation=ALL_TRAIN, template="Q: {input}\nA: {target}").documents()]
    assert qa[0] == f"Q: {samples[0]['input']}\nA: {samples[0]['target']}"


def test_json_samples_split_resume_and_labels(tmp_path, samples):
    path = tmp_path / "data.json"
    labelled = [{"input": s["input"], "target": i % 3, "metadata": s["metadata"]} for i, s in enumerate(samples)]
    path.write_text(json.dumps({"samples": labelled}))
    train = list(json_source(path).documents())
    val = texts(json_source(path, "val"))
    assert sorted([d["text"] for d, _ in train] + val) == sorted(s["input"] + str(i % 3) for i, s in enumerate(samples))
    assert 10 < len(val) < 80
    assert all(isinstance(d["target"], int) for d, _ in train)
    assert texts(json_source(path), train[20][1]) == [d["text"] for d, _ in train[21:]]


def test_json_samples_bad_input(tmp_path, samples):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"samples": [samples[0], {"input": "no target"}, [1, 2], samples[1]]}))
    src = json_source(path, validation=ALL_TRAIN)
    with pytest.warns(UserWarning, match="2 records of the wrong shape skipped"):
        assert texts(src) == [s["input"] + s["target"] for s in samples[:2]]
    path.write_text(json.dumps({"samples": samples[:5]})[:-30])
    with pytest.raises(DataError, match="not valid JSON"):
        list(json_source(path).documents())
    path.write_bytes(b'{"samples": ["caf\xe9"]}')
    with pytest.raises(DataError, match="not UTF-8"):
        list(json_source(path).documents())
    with pytest.raises(DataError, match="does not exist"):
        json_source(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DataError, match="every file is empty"):
        json_source(tmp_path / "empty.json")


# ---------------------------------------------------------------------------- binary


@pytest.fixture(scope="module")
def shakespeare_bin(tmp_path_factory, shared_data: Path) -> tuple[Path, np.ndarray]:
    """tinyshakespeare as char ids in a uint16 .bin with its sidecar, the way nanoGPT's shakespeare_char/prepare.py writes it."""
    data = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in data], dtype=np.uint16)
    path = tmp_path_factory.mktemp("bin") / "shakespeare.bin"
    ids.tofile(path)
    path.with_name("shakespeare.bin.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": len(chars), "tokenizer": "char"}))
    return path, ids


def binary_source(path: Path, split="train", validation=TAIL, **kw) -> BinarySource:
    return BinarySource(source_config({"type": "binary", "path": str(path), **kw}), split=split, validation=validation)


def packed_ids(source, seq_length=256) -> np.ndarray:
    """The packer's blocks joined back into one stream (blocks overlap by one id)."""
    def refuse(text):
        raise AssertionError("token documents must not be encoded")

    blocks = list(Packer(refuse, 0, seq_length, finite=True).blocks(source.documents))
    stream = np.concatenate([blocks[0]] + [b[1:] for b in blocks[1:]])
    return stream[stream != IGNORE_INDEX]


def test_binary_packed_stream_equals_the_file_ids(shakespeare_bin):
    path, ids = shakespeare_bin
    n = len(ids)
    train = binary_source(path, shuffle=False, chunk_tokens=1000)
    val = binary_source(path, "val", chunk_tokens=1000)
    np.testing.assert_array_equal(packed_ids(train), ids[: int(n * 0.9)])  # nanoGPT's train_ids = data[:int(n*0.9)]
    np.testing.assert_array_equal(packed_ids(val), ids[int(n * 0.9):])
    docs = list(train.documents())
    assert all(len(d["tokens"]) == 1000 and not d["eos"] for d, _ in docs[:-1])
    resumed = [d["tokens"] for d, _ in train.documents(docs[100][1])]
    assert resumed == [d["tokens"] for d, _ in docs[101:]]


def test_binary_shuffle_visits_every_window_once_per_epoch_and_resumes(shakespeare_bin):
    path, ids = shakespeare_bin
    src = binary_source(path, chunk_tokens=4096, validation=HASH)
    epoch0 = list(src.documents(None, 0))
    epoch1 = [d["tokens"] for d, _ in src.documents(None, 1)]
    ordered = [d["tokens"] for d, _ in binary_source(path, chunk_tokens=4096, validation=HASH, shuffle=False).documents()]
    assert sorted(map(tuple, (d["tokens"] for d, _ in epoch0))) == sorted(map(tuple, ordered)) == sorted(map(tuple, epoch1))
    assert [d["tokens"] for d, _ in epoch0] != ordered and [d["tokens"] for d, _ in epoch0] != epoch1
    assert [d["tokens"] for d, _ in src.documents(epoch0[30][1], 0)] == [d["tokens"] for d, _ in epoch0[31:]]
    val = [d["tokens"] for d, _ in binary_source(path, "val", chunk_tokens=4096, validation=HASH).documents()]
    assert 0 < len(val) < len(ordered) and not set(map(tuple, val)) & set(map(tuple, ordered))
    assert sum(map(len, val)) + sum(map(len, ordered)) == len(ids)


def test_binary_uint32_without_sidecar_and_bad_files(tmp_path, shakespeare_bin):
    _, ids = shakespeare_bin
    path = tmp_path / "big_vocab.bin"
    (ids[:5000].astype(np.uint32) + 70_000).tofile(path)
    with pytest.raises(DataError, match="no sidecar big_vocab.bin.json"):
        binary_source(path)
    np.testing.assert_array_equal(packed_ids(binary_source(path, shuffle=False, dtype="uint32")), ids[:4500].astype(np.int64) + 70_000)
    path.with_name("big_vocab.bin.json").write_text('{"dtype": "int8"}')
    with pytest.raises(DataError, match="must be an object with \"dtype\" one of uint16, uint32"):
        binary_source(path)
    path.with_name("big_vocab.bin.json").write_text('{"dtype": "uint32"}')
    with open(path, "ab") as f:
        f.write(b"\x01\x02")  # a truncated last id
    with pytest.raises(DataError, match="not a whole number of uint32 ids"):
        list(binary_source(path, shuffle=False).documents())
    with pytest.raises(ValidationError, match="chunk_tokens"):
        source_config({"type": "binary", "path": str(path), "chunk_tokens": 1})


# ---------------------------------------------------------------------------- hdf5


@pytest.fixture
def shakespeare_h5(tmp_path, shakespeare_bin) -> tuple[Path, np.ndarray]:
    """Seed 001's layout: 400 rows of 64 shakespeare char ids, targets = the id after each row, metadata as attributes."""
    h5py = pytest.importorskip("h5py")
    _, ids = shakespeare_bin
    rows = ids[: 400 * 64].reshape(400, 64).astype(np.int32)
    targets = ids[64 : 401 * 64 : 64].astype(np.int32)
    path = tmp_path / "shakespeare.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("dataset")
        group.create_dataset("inputs", data=rows, chunks=(1, 64))
        group.create_dataset("targets", data=targets)
        group.attrs.update({"quality": 0.9, "vocab_size": 65, "tokenizer": "char"})
    return path, rows


def hdf5_source(path: Path, split="train", validation=TAIL, **kw) -> Hdf5Source:
    return Hdf5Source(source_config({"type": "hdf5", "path": str(path), **kw}), split=split, validation=validation)


def test_hdf5_rows_are_token_documents_with_targets(shakespeare_h5, shakespeare_bin):
    path, rows = shakespeare_h5
    _, ids = shakespeare_bin
    docs = list(hdf5_source(path).documents())
    assert [d["tokens"] for d, _ in docs] == rows[:360].tolist()
    assert [d["target"] for d, _ in docs] == ids[64 : 361 * 64 : 64].tolist()
    assert all(d["eos"] and d["quality"] == 0.9 for d, _ in docs)
    assert [d["tokens"] for d, _ in hdf5_source(path, "val").documents()] == rows[360:].tolist()
    assert [d["tokens"] for d, _ in hdf5_source(path).documents(docs[99][1])] == rows[100:360].tolist()
    hashed = [d["tokens"] for d, _ in hdf5_source(path, validation=HASH).documents()]
    hashed_val = [d["tokens"] for d, _ in hdf5_source(path, "val", validation=HASH).documents()]
    assert sorted(hashed + hashed_val) == sorted(rows.tolist()) and 10 < len(hashed_val) < 80
    packed = packed_ids(hdf5_source(path, eos=False), seq_length=100)
    np.testing.assert_array_equal(packed, rows[:360].reshape(-1))


def test_hdf5_reads_one_row_at_a_time(shakespeare_h5, monkeypatch):
    path, rows = shakespeare_h5
    reads = []

    class Spy:
        def __init__(self, ds):
            self.ds, self.shape, self.ndim, self.dtype = ds, ds.shape, ds.ndim, ds.dtype

        def __getitem__(self, key):
            reads.append(key)
            return self.ds[key]

    original = Hdf5Source._datasets
    monkeypatch.setattr(Hdf5Source, "_datasets", lambda self, f, p: (Spy(original(self, f, p)[0]), *original(self, f, p)[1:]))
    assert len(list(hdf5_source(path).documents())) == 360
    assert reads == list(range(360))  # integer row indices only, never a slice of the whole dataset


def test_hdf5_padding_and_bad_files(tmp_path, shakespeare_h5):
    h5py = pytest.importorskip("h5py")
    _, rows = shakespeare_h5
    padded = rows[:20].copy()
    padded[3, 40:] = 0
    padded[5, :] = 0
    path = tmp_path / "padded.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset/inputs", data=padded)
    src = hdf5_source(path, validation=ALL_TRAIN, pad_id=0)
    with pytest.warns(UserWarning, match="1 empty texts skipped"):
        docs = [d for d, _ in src.documents()]
    assert len(docs) == 19 and docs[3]["tokens"] == rows[3, :40].tolist() and "target" not in docs[0]
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset/inputs", data=rows[:5].astype(np.float32))
    with pytest.raises(DataError, match="must be a 2-D integer array"):
        list(hdf5_source(path).documents())
    with h5py.File(path, "w") as f:
        f.create_dataset("data/inputs", data=rows[:5])
    with pytest.raises(DataError, match="has no dataset /dataset/inputs"):
        list(hdf5_source(path).documents())
    path.write_bytes(shakespeare_h5[0].read_bytes()[:3000])
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        list(hdf5_source(path).documents())


# ---------------------------------------------------------------------------- mixing modes


@pytest.fixture
def three_jsonl(tmp_path, story_lines) -> DataConfig:
    """Three JSONL sources of 40 story lines each, every line in the train split."""
    specs = []
    for k, name in enumerate("abc"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in story_lines[40 * k : 40 * (k + 1)]))
        specs.append({"type": "jsonl", "path": str(path)})
    return DataConfig.model_validate({"sources": specs, "validation": {"method": "hash", "fraction": 1e-9}})


def mixed(cfg: DataConfig, mix: str, loop=True, weights=None, state=None, seed=0):
    return build_mixer(build_sources(cfg, "train"), 0, 1, loop, mix, weights, seed).documents(state)


def test_sequential_mix_exhausts_sources_in_order_and_resumes(three_jsonl, story_lines):
    one_pass = [d["text"] for d, _ in mixed(three_jsonl, "sequential", loop=False)]
    assert one_pass == story_lines[:120]
    stream = mixed(three_jsonl, "sequential")
    got = [next(stream) for _ in range(300)]
    assert [d["text"] for d, _ in got] == (story_lines[:120] * 3)[:300]  # then the next round (epoch) of each
    assert got[130][1]["epoch"] == 1 and got[130][1]["current"] == 0
    for k in (39, 40, 119, 200):
        resumed = mixed(three_jsonl, "sequential", state=json.loads(json.dumps(got[k][1])))
        assert [d["text"] for d, _ in (next(resumed) for _ in range(60))] == [d["text"] for d, _ in got[k + 1 : k + 61]]


def test_weighted_mix_follows_the_weights_and_resumes_exactly(three_jsonl):
    weights = [1.0, 2.0, 7.0]
    stream = mixed(three_jsonl, "weighted", weights=weights, seed=3)
    got = [next(stream) for _ in range(6000)]
    names = [s.name for s in three_jsonl.sources]
    shares = [sum(d["source"] == n for d, _ in got) / len(got) for n in names]
    np.testing.assert_allclose(shares, [0.1, 0.2, 0.7], atol=0.02)
    again = [d["text"] for d, _ in islice(mixed(three_jsonl, "weighted", weights=weights, seed=3), 500)]
    assert again == [d["text"] for d, _ in got[:500]]  # deterministic for a seed
    other = [d["text"] for d, _ in islice(mixed(three_jsonl, "weighted", weights=weights, seed=4), 500)]
    assert other != again
    state = json.loads(json.dumps(got[1234][1]))
    resumed = mixed(three_jsonl, "weighted", weights=weights, state=state, seed=3)
    assert [d["text"] for d, _ in (next(resumed) for _ in range(700))] == [d["text"] for d, _ in got[1235:1935]]
    # A finite (val-like) pass reads every document once; ended sources leave the draws to the rest.
    assert sorted(d["text"] for d, _ in mixed(three_jsonl, "weighted", loop=False, weights=weights)) == sorted(
        d["text"] for d, _ in mixed(three_jsonl, "sequential", loop=False)
    )


@pytest.mark.parametrize("mix, workers", [("sequential", 0), ("weighted", 0), ("weighted", 2)])
def test_pipeline_resumes_exactly_with_each_mix(three_jsonl, tmp_path, mix, workers):
    update = {"mix": mix, "source_weights": [1.0, 1.0, 3.0] if mix == "weighted" else None, "shuffle_buffer": 8, "num_workers": workers}
    cfg = DataConfig.model_validate({**three_jsonl.model_dump(), **update})
    kw = dict(batch_size=4, seq_length=32)
    reference = DataPipeline(cfg, ByteTokenizer(), **kw)
    expected = [next(reference) for _ in range(40)]
    first = DataPipeline(cfg, ByteTokenizer(), **kw)
    for _ in range(17):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = DataPipeline(cfg, ByteTokenizer(), **kw)
    resumed.load_state_dict(state)
    for k in range(17, 40):
        assert torch.equal(next(resumed)["input_ids"], expected[k]["input_ids"]), f"batch {k} differs after resume"
    for pipe in (reference, first, resumed):
        pipe.close()


def test_mix_config_is_checked(three_jsonl):
    specs = [s.model_dump() for s in three_jsonl.sources]
    with pytest.raises(ValidationError, match="needs data.source_weights with one weight per source \\(3\\)"):
        DataConfig.model_validate({"sources": specs, "mix": "weighted", "source_weights": [1, 2]})
    with pytest.raises(ValidationError, match="must all be > 0"):
        DataConfig.model_validate({"sources": specs, "mix": "weighted", "source_weights": [1, 0, 2]})
    with pytest.raises(ValidationError, match="only used with data.mix 'weighted'"):
        DataConfig.model_validate({"sources": specs, "source_weights": [1, 1, 1]})
    with pytest.raises(ValidationError, match="mix"):
        DataConfig.model_validate({"sources": specs, "mix": "random"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DataConfig.model_validate({"sources": specs, "weights": [1, 1, 1]})


# ---------------------------------------------------------------------------- quality filter


def test_quality_threshold_and_min_text_length_drop_and_count(tmp_path, samples):
    path = tmp_path / "data.json"
    long_text = " ".join(s["input"] for s in samples[:5])
    path.write_text(json.dumps({"samples": samples + [{"text": "short"}, {"text": long_text}]}))
    spec = {"type": "json_samples", "path": str(path)}
    cfg = DataConfig.model_validate({"sources": [spec], "validation": {"fraction": 1e-9}, "quality_threshold": 0.8, "min_text_length": 40})
    (source,) = build_sources(cfg, "train")
    with pytest.warns(UserWarning) as caught:
        kept = [d for d, _ in source.documents()]
    long_enough = [s for s in samples if len(s["input"] + s["target"]) >= 40]
    expected = [s["input"] + s["target"] for s in long_enough if s["metadata"]["quality"] >= 0.8] + [long_text]
    assert [d["text"] for d in kept] == expected
    low = sum(s["metadata"]["quality"] < 0.8 for s in samples)
    short = sum(s["metadata"]["quality"] >= 0.8 and len(s["input"] + s["target"]) < 40 for s in samples) + 1  # + "short"
    assert source.skipped == {"low_quality": low, "too_short": short} and low > 0 and short > 1
    assert "documents below data.quality_threshold skipped" in str(caught[-1].message)
    unfiltered = DataConfig.model_validate({"sources": [spec], "validation": {"fraction": 1e-9}})
    assert len(list(build_sources(unfiltered, "train")[0].documents())) == len(samples) + 2


def test_filter_keeps_token_documents_and_resumes(shakespeare_h5):
    path, rows = shakespeare_h5
    spec = {"type": "hdf5", "path": str(path)}
    kw = {"sources": [spec], "validation": {"method": "tail", "fraction": 0.1}, "min_text_length": 10}
    (kept,) = build_sources(DataConfig.model_validate({**kw, "quality_threshold": 0.5}), "train")
    docs = list(kept.documents())
    assert [d["tokens"] for d, _ in docs] == rows[:360].tolist()  # quality 0.9 passes; no text, yet not too short
    assert [d["tokens"] for d, _ in kept.documents(docs[50][1])] == rows[51:360].tolist()
    (dropped,) = build_sources(DataConfig.model_validate({**kw, "quality_threshold": 0.95}), "train")
    with pytest.warns(UserWarning, match="360 documents below data.quality_threshold skipped"):
        assert list(dropped.documents()) == []
    with pytest.raises(ValidationError, match="min_text_length"):
        DataConfig.model_validate({**kw, "min_text_length": -1})


# ---------------------------------------------------------------------------- pdf


def pdf_escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(path, pages, image_only=False):
    """A minimal valid PDF: one Helvetica text stream per page (lines from `pages`), or one gray inline image per page."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", None, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        if image_only:
            content = b"q 100 0 0 100 50 600 cm BI /W 2 /H 2 /CS /G /BPC 8 ID \x00\x80\xff\x40 EI Q"
        else:
            body = " T* ".join(f"({pdf_escape(line)}) Tj" for line in lines)
            content = f"BT /F1 10 Tf 12 TL 50 760 Td {body} ET".encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % len(objects)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))


def story(stories: str, title: str, chars: int) -> str:
    """`chars` characters of the story titled `title`, cut at a line end."""
    start = stories.index(f"{title}\n\n")
    text = stories[start : start + chars]
    return text[: text.rfind("\n")]


def as_pages(text: str, lines_per_page: int = 55) -> list[list[str]]:
    lines = [line if line.strip() else " " for line in text.split("\n")]  # a blank line is drawn as a space, as PDF writers do
    return [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)]


def words(text: str) -> list[str]:
    return text.replace("\u2019", "'").split()  # Helvetica's standard encoding draws ' as a right quote


@pytest.fixture
def pdf_folder(tmp_path, shared_data) -> tuple[Path, str, str]:
    pypdf = pytest.importorskip("pypdf")
    stories = (shared_data / "stories.txt").read_text(encoding="utf-8")
    bird, hans = story(stories, "THE GOLDEN BIRD", 20_000), story(stories, "HANS IN LUCK", 9_000)
    root = tmp_path / "pdfs"
    (root / "sub").mkdir(parents=True)
    write_pdf(root / "a_bird.pdf", as_pages(bird))
    write_pdf(root / "sub" / "b_hans.pdf", as_pages(hans))
    write_pdf(root / "c_scan.pdf", as_pages(hans)[:2], image_only=True)
    writer = pypdf.PdfWriter(clone_from=root / "sub" / "b_hans.pdf")
    writer.encrypt("secret", algorithm="RC4-128")
    writer.write(root / "d_locked.pdf")
    (root / "e_broken.pdf").write_bytes((root / "a_bird.pdf").read_bytes()[:700])
    (root / "notes.txt").write_text(hans)  # not a PDF: ignored in a folder
    return root, bird, hans


def pdf_source(path: Path | list[str], split="train", validation=ALL_TRAIN, **kw) -> PdfSource:
    shown = path if isinstance(path, list) else str(path)
    return PdfSource(source_config({"type": "pdf", "path": shown, **kw}), split=split, validation=validation)


def test_pdf_folder_gives_chunked_text_and_counts_bad_files(pdf_folder):
    root, bird, hans = pdf_folder
    src = pdf_source(root)
    with pytest.warns(UserWarning, match="1 encrypted PDFs skipped"):
        docs = list(src.documents())
    assert src.skipped == {"encrypted_pdf": 1, "no_text_pdf": 1, "corrupt_pdf": 1}
    by_file: dict[int, list[dict]] = {}
    for doc, state in docs:
        by_file.setdefault(state["file"], []).append(doc)
    assert [src.files[i].name for i in by_file] == ["a_bird.pdf", "b_hans.pdf"]  # sorted, recursive
    (bird_docs, hans_docs) = by_file.values()
    assert words(" ".join(d["text"] for d in bird_docs)) == words(bird)
    assert words(" ".join(d["text"] for d in hans_docs)) == words(hans)
    for chunks in (bird_docs, hans_docs):
        assert [d["eos"] for d in chunks] == [False] * (len(chunks) - 1) + [True]
        assert all(3000 <= len(d["text"]) <= 5000 for d in chunks[:-1])
        assert all(d["text"].rstrip()[-1] in ".!?'\"\u2019" for d in chunks[:-1])  # ends at a paragraph or sentence
    assert len(bird_docs) >= 4
    with pytest.warns(UserWarning):
        assert [d["text"] for d, _ in src.documents(docs[2][1])] == [d["text"] for d, _ in docs[3:]]


def test_pdf_splits_and_a_source_with_no_readable_pdf(pdf_folder):
    root, bird, _ = pdf_folder
    train = texts(pdf_source(root / "a_bird.pdf", validation=TAIL))
    val = texts(pdf_source(root / "a_bird.pdf", "val", validation=TAIL))
    assert len(val) == 1 and words(" ".join(train + val)) == words(bird)
    bad = pdf_source([str(root / "c_scan.pdf"), str(root / "d_locked.pdf"), str(root / "e_broken.pdf")])
    with pytest.raises(DataError, match="no documents in the train split .*1 encrypted PDFs skipped.*image-only"), pytest.warns(UserWarning):
        next(ShardedDocuments(bad, 0, 1, loop=True).documents())


def test_chunk_text_prefers_paragraphs_then_sentences(story_lines):
    paragraphs = [" ".join(story_lines[i : i + 6]) for i in range(0, 300, 6)]  # ~400-char paragraphs
    chunks = chunk_text("\n\n".join(paragraphs), 1000)
    assert "\n\n".join(chunks) == "\n\n".join(paragraphs)  # cut only between paragraphs here
    # a chunk closes at 1000 chars, or earlier only when the next paragraph would take it past 1250
    longest = max(map(len, paragraphs))
    assert all(1250 - 2 - longest < len(c) <= 1250 for c in chunks[:-1]) and len(chunks) > 10
    one_paragraph = " ".join(paragraphs)  # no paragraph breaks: cut at sentence ends
    chunks = chunk_text(one_paragraph, 1000)
    assert " ".join(chunks) == one_paragraph and all(len(c) <= 1250 for c in chunks)
    assert all(c[-1] in ".!?" for c in chunks[:-1])
    assert chunk_text("x" * 3000, 1000) == ["x" * 1250, "x" * 1250, "x" * 500]  # one endless sentence: cut hard


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize("kind", ["pickle", "json_samples", "binary", "hdf5", "pdf"])
def test_new_source_configs_reject_unknown_keys_and_list_the_allowed_ones(kind):
    with pytest.raises(ValidationError) as err:
        source_config({"type": kind, "path": "x", "colour": "red"})
    assert err.value.errors()[0]["loc"] == ("sources", 0, "colour") and "allowed:" in str(err.value) and "path" in str(err.value)
    config_cls = type(source_config({"type": kind, "path": "x"}))
    undocumented = [f for f, info in config_cls.model_fields.items() if f not in ("type", "name", "path") and not info.description]
    assert undocumented == []
