"""Format detection (`auto`), exact-duplicate removal (`data.dedupe`), the decoded-sample cache, adaptive
source reweighting (`data.adaptive`) and `lmforge data prepare/inspect`, on real text from ../shared/data."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_preset
from lmforge.config import load_preset
from lmforge.data import DataConfig, DataError, DataPipeline, ValidationConfig
from lmforge.data.adaptive import AdaptiveConfig, AdaptiveWeights
from lmforge.cli import main
from lmforge.data.tokenizers import ByteTokenizer, load_tokenizer
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import train
from lmforge.data.cache import SampleCache
from lmforge.data.dedupe import DedupedSource
from lmforge.data.sharding import ShardedDocuments
from lmforge.data.stream import build_sources
from lmforge.data.sources.auto import detect_type
from lmforge.registry import SOURCES
from test_data import check_exact_resume
from test_sources_extra import write_pdf

HASH = ValidationConfig(method="hash", fraction=0.1)


def source_config(spec: dict):
    return DataConfig.model_validate({"sources": [spec]}).sources[0]


def build(spec: dict, split="train", validation=HASH):
    cfg = source_config(spec)
    return SOURCES.get(cfg.type)(cfg, split=split, validation=validation)


def docs_of(source, state=None) -> list[tuple]:
    """Comparable documents: (text, tokens, target)."""
    return [(d["text"], tuple(d.get("tokens", ())), json.dumps(d.get("target"))) for d, _ in source.documents(state)]


@pytest.fixture(scope="module")
def lines(shared_data: Path) -> list[str]:
    out = []
    with open(shared_data / "stories.txt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(line.strip())
            if len(out) == 300:
                break
    return out


@pytest.fixture
def formats(tmp_path: Path, lines: list[str]) -> dict[str, Path]:
    """One file per format, most under a name whose extension hides the format, so only content sniffing can tell."""
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "mixed"
    folder.mkdir()
    out = {}
    out["jsonl"] = folder / "a_records.data"
    out["jsonl"].write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[:100]))
    out["json_samples"] = folder / "b_samples.json"
    samples = [{"input": t[: len(t) // 2], "target": t[len(t) // 2:]} for t in lines[100:150]]
    out["json_samples"].write_text(json.dumps({"samples": samples}))
    out["pickle"] = folder / "c_pickled.dat"
    out["pickle"].write_bytes(pickle.dumps(lines[150:200], protocol=4))
    ids = np.frombuffer("\n".join(lines[200:260]).encode(), dtype=np.uint8).astype(np.uint16)
    out["hdf5"] = folder / "d_rows.store"
    with h5py.File(out["hdf5"], "w") as f:
        f.create_group("dataset").create_dataset("inputs", data=ids[: 40 * 64].reshape(40, 64).astype(np.int32))
    out["pdf"] = folder / "e_document"
    write_pdf(out["pdf"], [lines[260:275], lines[275:290]])
    out["binary"] = folder / "f_tokens"
    ids.tofile(out["binary"])
    out["binary"].with_name("f_tokens.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 256}))
    out["text"] = folder / "g_notes.log"
    out["text"].write_text("\n".join(lines[290:300]) + "\n")
    return out


def test_detect_type_by_content_when_the_extension_does_not_say(formats):
    for kind, path in formats.items():
        assert detect_type(path) == kind, path.name


def test_detect_type_by_extension_and_json_ambiguity(tmp_path, lines):
    jsonl_named_json = tmp_path / "records.json"  # a .json file holding one object per line is JSONL
    jsonl_named_json.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[:5]))
    assert detect_type(jsonl_named_json) == "jsonl"
    bare_list = tmp_path / "list.json"
    bare_list.write_text(json.dumps(lines[:5]))
    assert detect_type(bare_list) == "json_samples"
    one_line_samples = tmp_path / "one_line.data"  # a single-line {"samples": ...} document is not JSONL
    one_line_samples.write_text(json.dumps({"samples": lines[:5]}))
    assert detect_type(one_line_samples) == "json_samples"
    braces_text = tmp_path / "code.data"
    braces_text.write_text("{ not json at all }\nint main() {}\n")
    assert detect_type(braces_text) == "text"
    for name, kind in (("x.jsonl", "jsonl"), ("x.pkl", "pickle"), ("x.h5", "hdf5"), ("x.pdf", "pdf"), ("x.bin", "binary"), ("x.md", "text")):
        (tmp_path / name).write_bytes(b"")
        assert detect_type(tmp_path / name) == kind


@pytest.mark.parametrize("kind", ["jsonl", "json_samples", "pickle", "hdf5", "pdf", "binary", "text"])
def test_auto_gives_what_the_explicit_source_gives(formats, kind):
    path = formats[kind]
    extra = {"dtype": "uint16"} if kind == "binary" else {}
    explicit = build({"type": kind, "path": str(path), **extra})
    auto = build({"type": "auto", "path": str(path)})
    assert [type(d).__name__ for d in auto.delegates] == [type(explicit).__name__]
    expected = docs_of(explicit)
    assert expected and docs_of(auto) == expected


def test_auto_folder_reads_every_file_in_order_and_resumes(formats):
    folder = formats["text"].parent
    auto = build({"type": "auto", "path": str(folder)})
    assert auto.types == ["jsonl", "json_samples", "pickle", "hdf5", "pdf", "binary", "text"]  # the sidecar is not a file of its own
    full = list(auto.documents())
    assert {d["source"] for d, _ in full} == {"auto:" + str(folder)}
    expected = [doc for kind in auto.types for doc in docs_of(auto.delegates[auto.types.index(kind)])]
    assert docs_of(auto) == expected
    for cut in (5, len(full) // 2, len(full) - 2):
        resumed = [(d["text"], tuple(d.get("tokens", ()))) for d, _ in auto.documents(full[cut][1])]
        assert resumed == [(d["text"], tuple(d.get("tokens", ()))) for d, _ in full[cut + 1:]]


def test_auto_counts_delegate_skips_and_names_the_detected_type(tmp_path, lines):
    good = tmp_path / "good.data"
    good.write_text(json.dumps({"text": lines[0]}) + "\nnot json\n" + json.dumps({"text": lines[1]}) + "\n")
    auto = build({"type": "auto", "path": str(good)}, validation=ValidationConfig(method="hash", fraction=1e-6))
    with pytest.warns(Warning, match="1 lines that are not JSON skipped"):
        assert docs_of(auto) == [(lines[0], (), "null"), (lines[1], (), "null")]
    assert auto.skipped["not_json"] == 1
    tokens = tmp_path / "tokens.bin"
    np.arange(100, dtype=np.uint16).tofile(tokens)
    with pytest.raises(DataError, match="no sidecar tokens.bin.json.*detected as 'binary' by the auto source"):
        build({"type": "auto", "path": str(tokens)})
    with pytest.raises(DataError, match="does not exist"):
        build({"type": "auto", "path": str(tmp_path / "missing")})


# ---------------------------------------------------------------------------- dedupe


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def dedupe_config(path: Path, **kw) -> DataConfig:
    return DataConfig.model_validate(
        {"sources": [{"type": "jsonl", "path": str(path)}], "validation": {"method": "hash", "fraction": 0.1}, "dedupe": True, **kw}
    )


def test_dedupe_drops_repeated_lines_counts_them_and_resumes(tmp_path, lines):
    path = write_jsonl(tmp_path / "repeats.jsonl", lines[:50] + lines[:20] + lines[50:80] + lines[10:30] + lines[79:80])
    [source] = build_sources(dedupe_config(path), "train")
    assert isinstance(source, DedupedSource)
    kept = [t for t, _, _ in docs_of(build({"type": "jsonl", "path": str(path)}))]  # the train split, repeats and all
    expected = list(dict.fromkeys(kept))  # first occurrences (stories.txt repeats its contents' titles too)
    assert 60 < len(expected) < 80 and len(kept) > len(expected) + 30
    with pytest.warns(Warning, match=r"\d+ exact duplicate documents skipped"):
        full = list(source.documents())
    assert [d["text"] for d, _ in full] == expected  # first occurrences, in order
    dropped = source.skipped["duplicate"]
    assert dropped == len(kept) - len(expected)
    for cut in (3, 40, len(full) - 2):
        with pytest.warns(Warning):
            assert [d["text"] for d, _ in source.documents(full[cut][1])] == expected[cut + 1:]
    epochs = ShardedDocuments(source, 0, 1, loop=True).documents()
    with pytest.warns(Warning, match="exact duplicate"):  # a new epoch starts with an empty seen set: the same documents again
        two_epochs = [next(epochs)[0]["text"] for _ in range(2 * len(expected) + 1)]
    assert two_epochs == expected + expected + expected[:1]


def test_dedupe_token_documents_and_off_by_default(tmp_path, lines):
    ids = np.frombuffer("\n".join(lines).encode(), dtype=np.uint8).astype(np.uint16)
    assert len(ids) > 3072
    path = tmp_path / "twice.bin"
    np.concatenate([ids[:2048], ids[:2048], ids[2048:3072]]).tofile(path)
    path.with_name("twice.bin.json").write_text(json.dumps({"dtype": "uint16"}))
    spec = {"type": "binary", "path": str(path), "chunk_tokens": 1024, "shuffle": False}
    tail = {"method": "tail", "fraction": 0.01}
    [plain] = build_sources(DataConfig.model_validate({"sources": [spec], "validation": tail}), "train")
    assert not isinstance(plain, DedupedSource) and len(list(plain.documents())) == 5
    [source] = build_sources(DataConfig.model_validate({"sources": [spec], "validation": tail, "dedupe": True}), "train")
    with pytest.warns(Warning, match="2 exact duplicate"):
        windows = [d["tokens"] for d, _ in source.documents()]
    assert windows == [ids[:1024].tolist(), ids[1024:2048].tolist(), ids[2048:2048 + int(5120 * 0.99) - 4096].tolist()]  # the tail cut ends the last window


@pytest.mark.filterwarnings("ignore::lmforge.data.DataWarning")
def test_dedupe_pipeline_resumes_exactly_with_and_without_workers(tmp_path, lines):
    path = write_jsonl(tmp_path / "repeats.jsonl", (lines[:60] + lines[:30]) * 2)
    check_exact_resume(dedupe_config(path, shuffle_buffer=8), saved_after=7, then=12, tmp_path=tmp_path)
    check_exact_resume(dedupe_config(path, shuffle_buffer=8, num_workers=2), saved_after=5, then=6, tmp_path=tmp_path)


# ---------------------------------------------------------------------------- cache


def test_sample_cache_is_lru_and_counts():
    cache = SampleCache(2)
    calls = []
    decode = lambda key: (lambda: calls.append(key) or [key])  # noqa: E731
    assert cache.get("a", decode("a")) == ["a"] and cache.get("b", decode("b")) == ["b"]
    assert cache.get("a", decode("a")) == ["a"]  # hit: a becomes the most recent
    cache.get("c", decode("c"))  # evicts b, the least recently used
    assert cache.get("a", decode("a")) == ["a"] and cache.get("b", decode("b")) == ["b"]
    assert calls == ["a", "b", "c", "b"] and (cache.hits, cache.misses) == (2, 4) and len(cache) == 2
    off = SampleCache(0)
    off.get("a", decode("a")), off.get("a", decode("a"))
    assert (off.hits, len(off)) == (0, 0)


def cached_source(spec: dict, cache_size: int, validation: dict):
    cfg = DataConfig.model_validate({"sources": [spec], "validation": validation, "cache_size": cache_size})
    [source] = build_sources(cfg, "train")
    return source


def test_second_epoch_of_binary_and_hdf5_hits_the_cache(formats):
    tail = {"method": "tail", "fraction": 0.1}
    specs = [{"type": "binary", "path": str(formats["binary"]), "chunk_tokens": 64}, {"type": "auto", "path": str(formats["hdf5"])}]
    for spec in specs:
        reference = [d["tokens"] for d, _ in cached_source(spec, 0, tail).documents(None, 0)]
        source = cached_source(spec, 1000, tail)
        cache = source.cache if hasattr(source, "cache") else source.delegates[0].cache
        first = [d["tokens"] for d, _ in source.documents(None, 0)]
        assert first == reference and cache.hits == 0 and cache.misses == len(first) > 10
        second = [d["tokens"] for d, _ in source.documents(None, 1)]
        assert cache.hits == len(second) and cache.misses == len(first)
        assert sorted(second) == sorted(first)
        small = cached_source(spec, 4, tail)
        small_cache = small.cache if hasattr(small, "cache") else small.delegates[0].cache
        list(small.documents(None, 0)), list(small.documents(None, 1))
        assert len(small_cache) == 4 and small_cache.hits < 4


# ---------------------------------------------------------------------------- adaptive reweighting

KNOBS = {"adaptive_interval_tokens": 100, "adaptive_min_weight": 0.2, "adaptive_max_weight": 3.0, "adaptive_smoothing": 0.5}


def test_adaptive_weights_follow_loss_with_ema_and_clamp():
    aw = AdaptiveWeights(AdaptiveConfig(**KNOBS), ["easy", "hard"])
    aw.observe(torch.tensor([0, 1, 0]), torch.tensor([1.0, 3.0, 1.0]), tokens=60)
    assert aw.weights.tolist() == [1.0, 1.0] and aw.updates == 0  # interval not full yet
    aw.observe(torch.tensor([1]), torch.tensor([3.0]), tokens=60)
    # means 1 and 3 -> targets 0.5 and 1.5 (mean-normalised), EMA 0.5 from 1.0
    assert aw.weights.tolist() == pytest.approx([0.75, 1.25]) and aw.updates == 1
    assert aw.metrics() == pytest.approx({"weight/easy": 0.75, "weight/hard": 1.25, "loss/easy": 1.0, "loss/hard": 3.0})
    for _ in range(20):
        aw.observe(torch.tensor([0, 1]), torch.tensor([0.01, 9.0]), tokens=100)
    assert aw.weights.tolist() == pytest.approx([0.2, 1.998], abs=1e-3)  # targets 0.002 (clamped) and 1.998
    aw.observe(torch.tensor([1]), torch.tensor([float("nan")]), tokens=100)  # an all-pad row has no loss: ignored
    assert aw.weights.tolist() == pytest.approx([0.2, 1.998], abs=1e-3)
    capped = AdaptiveWeights(AdaptiveConfig(**{**KNOBS, "adaptive_max_weight": 1.5}), ["easy", "hard"])
    for _ in range(5):
        capped.observe(torch.tensor([0, 1]), torch.tensor([0.01, 9.0]), tokens=100)
    assert capped.weights.tolist() == [0.2, 1.5]


def two_source_config(tmp_path: Path, lines: list[str], **kw) -> DataConfig:
    easy = write_jsonl(tmp_path / "easy.jsonl", [lines[5]] * 200)
    hard = write_jsonl(tmp_path / "hard.jsonl", lines[:200])
    return DataConfig.model_validate({
        "sources": [{"type": "jsonl", "path": str(easy), "name": "easy"}, {"type": "jsonl", "path": str(hard), "name": "hard"}],
        "validation": {"method": "hash", "fraction": 0.1}, "shuffle_buffer": 0, "adaptive": KNOBS, **kw,
    })


@pytest.mark.parametrize("mix", ["round_robin", "sequential", "weighted"])
def test_every_mix_mode_draws_by_the_adaptive_weights(tmp_path, lines, mix):
    extra = {"source_weights": [1.0, 1.0]} if mix == "weighted" else {}
    pipe = DataPipeline(two_source_config(tmp_path, lines, mix=mix, **extra), ByteTokenizer(), batch_size=8, seq_length=32)
    first = next(pipe)
    assert first["source_ids"].shape == (8,) and set(first["source_ids"].tolist()) <= {0, 1}
    pipe.adaptive.weights.copy_(torch.tensor([0.2, 3.0]))
    ids = torch.cat([next(pipe)["source_ids"] for _ in range(30)])
    assert 0.85 < (ids == 1).float().mean() < 1.0  # 3 / 3.2 = 0.94 of blocks, from the live weights


def test_workers_see_updated_weights_and_resume_restores_them(tmp_path, lines):
    cfg = two_source_config(tmp_path, lines, num_workers=2)
    pipe = DataPipeline(cfg, ByteTokenizer(), batch_size=8, seq_length=32)
    early = torch.cat([next(pipe)["source_ids"] for _ in range(10)])
    assert 0.3 < (early == 1).float().mean() < 0.7  # equal weights at first
    for _ in range(5):  # the trainer's reports: source 1 is much harder
        pipe.observe_losses(torch.tensor([0, 1] * 4), torch.tensor([0.1, 8.0] * 4), tokens=256)
    assert pipe.adaptive.weights.tolist() == pytest.approx([0.2, 1.95], abs=0.03)
    later = torch.cat([next(pipe)["source_ids"] for _ in range(40)][8:])  # the first few were prefetched before the update
    assert (later == 1).float().mean() > 0.85  # the workers drew with the main process's new weights
    state = pipe.state_dict()
    pipe.close()
    json.dumps(state)
    resumed = DataPipeline(cfg, ByteTokenizer(), batch_size=8, seq_length=32)
    assert resumed.adaptive.weights.tolist() == [1.0, 1.0]
    resumed.load_state_dict(torch.load(_saved(tmp_path, state), weights_only=True))
    assert resumed.adaptive.weights.tolist() == pipe.adaptive.weights.tolist()
    assert resumed.adaptive_metrics() == pipe.adaptive_metrics()
    assert (torch.cat([next(resumed)["source_ids"] for _ in range(20)]) == 1).float().mean() > 0.85
    resumed.close()


def _saved(tmp_path: Path, state: dict) -> Path:
    torch.save(state, tmp_path / "data_state.pt")
    return tmp_path / "data_state.pt"


def test_training_raises_the_weight_of_the_harder_source(tmp_path, shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60000]
    easy = tmp_path / "easy.txt"
    easy.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 800)
    hard = tmp_path / "hard.txt"  # uniform random characters of the play's alphabet: no model beats ln(65) nats
    hard.write_text("".join(np.random.default_rng(0).choice(sorted(set(text)), 60000)))
    raw = tiny_preset(easy, max_steps=40, eval_interval=40, save_interval=40, lr=1e-2)
    raw["data"]["sources"] = [  # small documents, so both sources appear in every interval
        {"type": "text", "path": str(easy), "name": "easy", "chunk_chars": 128}, {"type": "text", "path": str(hard), "name": "hard", "chunk_chars": 128},
    ]
    raw["data"]["adaptive"] = {"adaptive_interval_tokens": 256, "adaptive_min_weight": 0.25, "adaptive_max_weight": 4.0, "adaptive_smoothing": 0.5}
    train(load_preset(raw), tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "weight/easy" in r]
    assert len(rows) == 40 and rows[0]["weight/easy"] == rows[0]["weight/hard"] == 1.0
    last = rows[-1]
    assert last["loss/hard"] > last["loss/easy"] + 0.5
    assert last["weight/hard"] > 1.1 > 0.9 > last["weight/easy"] >= 0.25
    assert rows[-1]["weight/hard"] > rows[20]["weight/hard"] > rows[5]["weight/hard"]  # still rising while the gap holds


# ---------------------------------------------------------------------------- data prepare / inspect


def test_prepare_writes_token_files_that_train_like_the_text(tmp_path, small_text, capsys):
    raw = tiny_preset(small_text)
    raw["data"].update(mix="sequential", shuffle_buffer=0)
    preset_file = tmp_path / "tiny.json"
    preset_file.write_text(json.dumps(raw))
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(preset_file), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    train_ids = np.fromfile(out / "train.bin", dtype=np.uint16)
    val_ids = np.fromfile(out / "val.bin", dtype=np.uint16)
    meta = json.loads((out / "train.bin.json").read_text())
    tokenizer = load_tokenizer(out)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tokenizer.vocab_size and meta["tokens"] == len(train_ids)
    text = small_text.read_text()
    assert len(text) * 0.8 < len(train_ids) < len(text) * 0.95 and len(text) * 0.05 < len(val_ids) < len(text) * 0.15  # tail split 0.1
    assert tokenizer.decode(val_ids[val_ids != tokenizer.eos_id].tolist()) in text  # val is the file's tail, in order
    name = f"text:{small_text}"
    row = next(line for line in table.splitlines() if line.startswith("train") and name in line)
    assert row.split()[2:] == [f"{meta['documents']:,}", f"{len(train_ids):,}", "-"] and meta["documents"] > 5

    # Training batches from the prepared train.bin equal those from the text, block for block.
    cfg = load_preset(raw).data
    binary = DataConfig.model_validate({
        **cfg.model_dump(exclude={"sources"}),
        "sources": [{"type": "binary", "path": str(out / "train.bin"), "shuffle": False}],
        "validation": {"method": "tail", "fraction": 0.01},
    })
    kw = dict(batch_size=4, seq_length=32)
    from_text, from_bin = DataPipeline(cfg, tokenizer, **kw), DataPipeline(binary, tokenizer, **kw)
    for _ in range(int(len(train_ids) * 0.95) // (4 * 32)):
        a, b = next(from_text), next(from_bin)
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_inspect_counts_documents_tokens_and_rejects(tmp_path, lines, capsys):
    good = write_jsonl(tmp_path / "stories.jsonl", lines[:100])
    with open(good, "a") as f:
        f.write("not json\n" + json.dumps({"text": lines[0]}) + "\n")
    raw = tiny_preset(good)
    raw["data"] = {"sources": [{"type": "jsonl", "path": str(good), "name": "stories"}], "tokenizer": {"type": "byte"}, "dedupe": True}
    preset_file = tmp_path / "inspect.json"
    preset_file.write_text(json.dumps(raw))
    with pytest.warns(Warning):
        assert main(["data", "inspect", str(preset_file)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    cfg = load_preset(raw).data
    [train_src], [val_src] = build_sources(cfg, "train"), build_sources(cfg, "val")
    with pytest.warns(Warning):
        train_docs, val_docs = [d["text"] for d, _ in train_src.documents()], [d["text"] for d, _ in val_src.documents()]
    assert len(train_docs) + len(val_docs) == len(set(lines[:100]))
    tokens = sum(len(t.encode()) for t in train_docs)  # the byte tokenizer has no eos id
    assert rows["train"].split()[2:4] == [f"{len(train_docs):,}", f"{tokens:,}"]
    assert "not_json 1" in rows["train"] + rows["val"] and "duplicate" in rows["train"] + rows["val"]
    assert not (tmp_path / "data").exists()  # inspect writes nothing
