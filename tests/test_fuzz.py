"""Fuzzing (hypothesis, bounded): random presets are a PresetError or a preset whose model builds; random malformed
records, for every file source type, are skipped and counted (or a DataError names the file), never a crash or a hang."""
from __future__ import annotations

import copy
import json
import pickle
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_preset
from lmforge.assembly import build_run_model
from lmforge.config import PresetError, validate_preset
from lmforge.data import DataConfig, DataError, ValidationConfig
from lmforge.registry import SOURCES
from lmforge.run_shape import resolved_preset, run_shape

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BASE = tiny_preset(Path("stories.txt"))  # validation does not open data files

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


PATHS = list(_paths(BASE)) + [("objective",), ("stages",), ("grad_filters",), ("layer_swaps",), ("train", "optimizer"),
                              ("train", "skip_spikes"), ("train", "lr_schedule")]


@st.composite
def mutated_presets(draw):
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        if draw(st.booleans()):  # an unknown key beside a known one
            path = path[:-1] + (draw(st.text(min_size=1, max_size=8)),)
        node = raw
        for key in path[:-1]:
            if isinstance(node, dict) and key in node and isinstance(node[key], (dict, list)):
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node) and isinstance(node[key], (dict, list)):
                node = node[key]
            else:
                break
        else:
            if isinstance(node, dict):
                node[path[-1]] = draw(values)
            elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
                node[path[-1]] = draw(values)
    return raw


@FUZZ
@given(mutated_presets())
def test_random_presets_are_a_preset_error_or_a_buildable_preset(raw):
    try:
        preset = validate_preset(raw)
    except PresetError as err:
        assert str(err)  # names the field
        return
    resolved = resolved_preset(preset, run_shape(preset, 1, 65))
    with torch.device("meta"):  # the model a valid preset names must build (on meta: no memory, bounded sizes)
        build_run_model(resolved)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), values, max_size=6))
def test_random_top_level_objects_are_a_preset_error(raw):
    with pytest.raises(PresetError):
        validate_preset(raw)


# ------------------------------------------------------------------ records

@contextmanager
def time_limit(seconds: int):
    """A hang is a failure: SIGALRM raises inside the read."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"reading took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


ALL_TRAIN = ValidationConfig(method="hash", fraction=1e-9)
lines = st.one_of(
    st.binary(max_size=200), st.text(max_size=200).map(str.encode),
    values.map(lambda v: json.dumps(v).encode()), st.just(b""), st.just(b"x" * 300_000),  # empty and huge lines
    st.just(b'{"text": "caf\xe9"}'), st.just(b'{"text": "ok line"}'),
)


def _read(spec: dict) -> int:
    """Every document of the source; returns how many arrived. A DataError (a message about the file) is allowed."""
    import lmforge.data.sources  # noqa: F401

    cfg = DataConfig.model_validate({"sources": [spec]}).sources[0]
    try:
        with time_limit(20):
            source = SOURCES.get(cfg.type)(cfg, split="train", validation=ALL_TRAIN)
            docs = [doc for doc, _ in source.documents()]
    except DataError as err:
        assert str(err)
        return 0
    assert all(isinstance(doc.get("text", ""), str) for doc in docs)
    return len(docs)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@FUZZ
@given(st.lists(lines, max_size=12))
def test_random_jsonl_and_text_lines(tmp_path_factory, records):
    tmp = tmp_path_factory.mktemp("lines")
    data = b"\n".join(records)
    _read({"type": "jsonl", "path": str(_write(tmp, "f.jsonl", data))})
    _read({"type": "text", "path": str(_write(tmp, "f.txt", data))})


@FUZZ
@given(st.one_of(values, st.fixed_dictionaries({"samples": st.lists(values, max_size=6)})), st.booleans())
def test_random_json_samples_and_pickles(tmp_path_factory, obj, corrupt):
    tmp = tmp_path_factory.mktemp("objects")
    text = json.dumps(obj).encode()
    blob = pickle.dumps(obj)
    if corrupt:
        text, blob = text[: len(text) // 2], blob[: len(blob) // 2]
    _read({"type": "json_samples", "path": str(_write(tmp, "f.json", text))})
    _read({"type": "pickle", "path": str(_write(tmp, "f.pkl", blob))})


@FUZZ
@given(st.binary(max_size=4000), st.sampled_from(["uint16", "uint32"]), st.one_of(st.none(), values))
def test_random_binary_token_files(tmp_path_factory, data, dtype, sidecar):
    tmp = tmp_path_factory.mktemp("binary")
    path = _write(tmp, "f.bin", data)
    if sidecar is not None:
        (tmp / "f.bin.json").write_text(json.dumps(sidecar))
    _read({"type": "binary", "path": str(path), "dtype": dtype, "chunk_tokens": 16})


@FUZZ
@given(st.binary(max_size=3000), st.booleans())
def test_random_pdf_bytes(tmp_path_factory, data, header):
    pytest.importorskip("pypdf")
    tmp = tmp_path_factory.mktemp("pdf")
    _read({"type": "pdf", "path": str(_write(tmp, "f.pdf", (b"%PDF-1.4\n" if header else b"") + data))})


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["text", "input_ids", "tokens", "other"]),
                          st.sampled_from(["int64", "int32", "uint8", "float32", "S8"]),
                          st.lists(st.integers(1, 6), min_size=1, max_size=2)), max_size=3))
def test_random_hdf5_files(tmp_path_factory, datasets):
    h5py = pytest.importorskip("h5py")
    tmp = tmp_path_factory.mktemp("hdf5")
    path = tmp / "f.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for name, dtype, shape in datasets:
            if name in f:
                continue
            data = rng.integers(-5, 300, size=shape)
            f.create_dataset(name, data=data.astype(dtype) if dtype != "S8" else data.astype(str).astype("S8"))
    _read({"type": "hdf5", "path": str(path)})
