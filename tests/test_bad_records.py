"""Bad input, source by source: good and bad records interleaved in one file; every good record must
arrive, in order, and the bad ones must be counted by reason, in the source and in metrics.jsonl.

Good records are real lines of ../shared/data/stories.txt; bad ones are the malformations users meet.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_preset
from lmforge.config import load_preset
from lmforge.data import DataConfig, ValidationConfig
from lmforge.registry import SOURCES
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import train

ALL_TRAIN = ValidationConfig(method="hash", fraction=1e-9)  # practically every document is train


@pytest.fixture(scope="module")
def good(shared_data: Path) -> list[str]:
    lines = [l.strip() for l in (shared_data / "stories.txt").read_text().splitlines() if len(l.strip()) > 20]
    return lines[:60]


def build(spec: dict):
    import lmforge.data.sources  # noqa: F401

    cfg = DataConfig.model_validate({"sources": [spec]}).sources[0]
    return SOURCES.get(cfg.type)(cfg, split="train", validation=ALL_TRAIN)


def interleave(good: list, bad: list) -> list:
    """Each bad record after every third good one: bad records sit between good ones, not at the ends."""
    out, pending = [], list(bad)
    for i, record in enumerate(good):
        out.append(record)
        if i % 3 == 2 and pending:
            out.append(pending.pop(0))
    assert not pending, "not enough good records to interleave every bad one"
    return out


def write_jsonl(tmp: Path, good: list[str]) -> tuple[dict, list[str], dict[str, int]]:
    bad = [b'{"text": "unterminated', b"[1, 2, 3]", b'{"title": "no text field"}', b'{"text": 7}',
           b'{"text": "caf\xe9 latin-1"}', b'{"text": ""}']
    lines = interleave([json.dumps({"text": g}).encode() for g in good], bad)
    (tmp / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return ({"type": "jsonl", "path": str(tmp / "mixed.jsonl")}, good,
            {"not_json": 2, "not_object": 1, "missing_field": 2, "empty_text": 1})


def write_json_samples(tmp: Path, good: list[str]) -> tuple[dict, list[str], dict[str, int]]:
    records = [{"input": g[:10], "target": g[10:], "metadata": {"quality": 0.9}} for g in good]
    bad = [{"input": "no target"}, 42, None, ["a", "list"], {"input": "", "target": ""}]
    (tmp / "mixed.json").write_text(json.dumps({"samples": interleave(records, bad)}))
    return {"type": "json_samples", "path": str(tmp / "mixed.json")}, good, {"bad_record": 4, "empty_text": 1}


def write_pickle(tmp: Path, good: list[str]) -> tuple[dict, list[str], dict[str, int]]:
    bad = [3.5, {"no": "text"}, b"raw bytes", ""]
    with open(tmp / "mixed.pkl", "wb") as f:
        pickle.dump(interleave(list(good), bad), f)
    return {"type": "pickle", "path": str(tmp / "mixed.pkl")}, good, {"bad_record": 3, "empty_text": 1}


def write_hf_local(tmp: Path, good: list[str]) -> tuple[dict, list[str], dict[str, int]]:
    pytest.importorskip("datasets")
    rows = interleave([{"text": g} for g in good], [{"text": None}, {"text": ""}, {"text": None}])
    (tmp / "mixed_hf.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"type": "hf", "dataset": "json", "data_files": str(tmp / "mixed_hf.jsonl")}, good, {"missing_field": 3}


WRITERS = {"jsonl": write_jsonl, "json_samples": write_json_samples, "pickle": write_pickle, "hf": write_hf_local}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_good_records_arrive_in_order_and_bad_ones_are_counted(tmp_path, good, kind):
    spec, expected, bad_counts = WRITERS[kind](tmp_path, good)
    source = build(spec)
    with pytest.warns(UserWarning, match="skipped"):
        texts = [doc["text"] for doc, _ in source.documents()]
    assert texts == expected
    assert dict(source.skipped) == bad_counts
    assert dict(source.running_skips) == bad_counts


def test_text_with_invalid_utf8_keeps_every_good_character(tmp_path, good):
    bad_bytes = [b"\xff", b"\xc3\x28", b"\xe9"]  # lone continuation-less bytes, a broken 2-byte sequence
    raw = b"".join(g.encode() + b"\n" + (bad_bytes[i % 3] if i % 7 == 3 else b"") for i, g in enumerate(good))
    (tmp_path / "mixed.txt").write_bytes(raw)
    with pytest.warns(UserWarning, match="invalid UTF-8"):  # counted once when the chunk table is built
        source = build({"type": "text", "path": str(tmp_path / "mixed.txt"), "chunk_chars": 512, "shuffle": False})
        text = "".join(doc["text"] for doc, _ in source.documents())
    assert text.replace("\ufffd", "") == raw.decode("utf-8", errors="replace").replace("\ufffd", "")
    lines = [line.strip("\ufffd(") for line in text.splitlines()]
    assert [line for line in lines if line] == good
    assert source.skipped["invalid_utf8"] == raw.decode("utf-8", errors="replace").count("\ufffd")


def test_hdf5_padding_only_rows_are_skipped_and_good_rows_keep_their_order(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    rows = rng.integers(1, 200, size=(12, 16)).astype(np.int32)
    rows[3] = 0
    rows[8] = 0
    rows[5, 10:] = 0  # trailing padding is trimmed, the row kept
    with h5py.File(tmp_path / "mixed.h5", "w") as f:
        f.create_dataset("dataset/inputs", data=rows)
        f.create_dataset("dataset/targets", data=np.arange(12))
    source = build({"type": "hdf5", "path": str(tmp_path / "mixed.h5"), "pad_id": 0})
    with pytest.warns(UserWarning, match="skipped"):
        docs = [doc for doc, _ in source.documents()]
    keep = [r for r in range(12) if r not in (3, 8)]
    assert [d["target"] for d in docs] == keep
    assert docs[keep.index(5)]["tokens"] == rows[5, :10].tolist()
    assert dict(source.skipped) == {"empty_text": 2}


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_counts_reach_metrics_and_survive_resume(tmp_path, good, small_text, workers):
    spec, _, bad_counts = write_jsonl(tmp_path, [g[:16] for g in good[:18]])  # every bad line in the first ~600 bytes
    with open(spec["path"], "a") as f:
        f.writelines(json.dumps({"text": g}) + "\n" for g in good[18:] * 4)
    preset = tiny_preset(small_text, max_steps=8, save_interval=4, eval_interval=8)
    preset["data"]["sources"] = [{**spec, "name": "stories"}]
    preset["data"]["validation"] = {"method": "hash", "fraction": 0.1}
    preset["data"]["shuffle_buffer"] = 0
    preset["data"]["num_workers"] = workers
    with pytest.warns(UserWarning):
        train(load_preset(preset), tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    skipped = {k.split("/")[-1]: v for k, v in rows[-1].items() if k.startswith("data_skipped/stories/")}
    assert skipped == bad_counts  # 8 steps of 128 tokens read well past the bad lines
    preset["train"]["max_steps"] = 10
    train(load_preset(preset), tmp_path / "run")  # resumes at step 8: counts restored, not reset or doubled
    resumed = [r for r in read_metrics(tmp_path / "run") if "loss" in r and r["step"] > 8]
    assert {k.split("/")[-1]: v for k, v in resumed[0].items() if k.startswith("data_skipped/stories/")} == bad_counts


def test_readme_source_examples_are_valid_presets():
    """The README's one-example-per-source block must stay valid as the schemas change."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("One preset example per source type"):]
    block = block[block.index("```json") + len("```json"): block.index("```", block.index("```json") + 7)]
    specs = [json.loads(line) for line in block.strip().splitlines()]
    assert {s["type"] for s in specs} == set(SOURCES.names())  # one example for every registered source type
    for spec in specs:
        labeled = spec["type"] in ("modular_arithmetic", "mqar", "needle")  # the task sources bring their own labels
        DataConfig.model_validate({"sources": [spec]} | ({"task": "labeled"} if labeled else {}))
