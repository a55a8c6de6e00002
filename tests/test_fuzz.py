"""Fuzzing (hypothesis, bounded): random presets are a PresetError or a preset whose model builds, and through
`lmforge train` exit 2 with a one-line message or a run that finishes; random malformed records, for every file
source type, are skipped and counted (documents + skips = records), never a crash or a hang. A file that cannot be
read at all (a truncated pickle or HDF5, a token file of odd length) is a DataError naming the file: `lmforge train`
prints it and exits 2, as HF datasets refuses a corrupt file rather than training on part of a corpus."""
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

from conftest import SHARED_DATA, tiny_preset
from lmforge.assembly import build_run_model
from lmforge.cli import main as cli_main
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
near_valid = st.one_of(values, st.integers(-2, 40), st.floats(-1.0, 2.0), st.sampled_from(["none", "auto", "cosine", "adamw"]))


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
                node[path[-1]] = draw(near_valid)
            elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
                node[path[-1]] = draw(near_valid)
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


CLI_FUZZ = settings(FUZZ, max_examples=25)
TRAINABLE = dict(max_params=200_000, max_tokens=20_000)  # runs beyond this are only built on meta (bounded test time)


def _small_enough(preset) -> bool:
    """Whether the run a valid preset asks for is small enough to train here in a few seconds."""
    resolved = resolved_preset(preset, run_shape(preset, 1, 65))
    with torch.device("meta"):
        params = sum(p.numel() for p in build_run_model(resolved).parameters())
    tc, block = preset.train, preset.model.block_size
    tokens = tc.max_steps * tc.batch_size * tc.grad_accum_steps * block if tc.max_steps else None
    return params <= TRAINABLE["max_params"] and tokens is not None and tokens <= TRAINABLE["max_tokens"] and (
        tc.eval_batches * tc.batch_size * block <= TRAINABLE["max_tokens"])


@pytest.fixture(scope="module")
def head_text(tmp_path_factory) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared corpora not found at {SHARED_DATA}")
    text = (SHARED_DATA / "tinyshakespeare.txt").read_text()[:20000]
    path = tmp_path_factory.mktemp("fuzz_data") / "head.txt"
    path.write_text(text[: text.rfind("\n") + 1])
    return path


@CLI_FUZZ
@given(mutated_presets())
def test_random_presets_through_lmforge_train_exit_2_or_train(tmp_path_factory, capsys, head_text, raw):
    """The command users run: a broken preset is exit 2 with the field named, never a traceback; a valid one trains."""
    raw = json.loads(json.dumps(raw).replace('"stories.txt"', json.dumps(str(head_text))))
    tmp = tmp_path_factory.mktemp("cli")
    path = tmp / "fuzzed.json"
    try:
        path.write_text(json.dumps(raw, allow_nan=True))
    except ValueError:  # a float hypothesis made that JSON cannot hold
        return
    try:
        preset = validate_preset(raw)
    except PresetError:
        preset = None
    if preset is not None and not _small_enough(preset):
        return
    with time_limit(120):
        code = cli_main(["train", str(path), "--run-dir", str(tmp / "run")])
    err = capsys.readouterr().err
    if preset is None:
        assert code == 2 and err.startswith("lmforge: error: invalid preset") and "Traceback" not in err
    else:
        assert code in (0, 2), err  # 2: a data-dependent refusal (e.g. a vocabulary the tokenizer exceeds), one message
        if code == 0:
            assert (tmp / "run" / "metrics.jsonl").is_file()
        else:
            assert err.startswith("lmforge: error:") and "Traceback" not in err


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


def _read(spec: dict) -> tuple[int, int] | None:
    """Every document of the source: (documents, skipped records), or None for a DataError naming the file."""
    import lmforge.data.sources  # noqa: F401

    cfg = DataConfig.model_validate({"sources": [spec]}).sources[0]
    try:
        with time_limit(20):
            source = SOURCES.get(cfg.type)(cfg, split="train", validation=ALL_TRAIN)
            docs = [doc for doc, _ in source.documents()]
    except DataError as err:
        assert Path(spec["path"]).name in str(err) or "sidecar" in str(err)  # the message names the file
        return None
    assert all(isinstance(doc.get("text", ""), str) for doc in docs)
    return len(docs), sum(source.skipped.values())


def _nonblank_lines(data: bytes) -> int:
    """Records a line reader must account for: every line with something on it."""
    parts = data.split(b"\n")
    if parts[0].startswith(b"\xef\xbb\xbf"):
        parts[0] = parts[0][3:]
    return sum(1 for part in parts if part.strip())


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@FUZZ
@given(st.lists(lines, max_size=12))
def test_random_jsonl_and_text_lines(tmp_path_factory, records):
    tmp = tmp_path_factory.mktemp("lines")
    data = b"\n".join(records)
    got = _read({"type": "jsonl", "path": str(_write(tmp, "f.jsonl", data))})
    if not data:
        assert got is None  # a source of empty files only can never yield: a DataError at construction
    else:
        assert sum(got) == _nonblank_lines(data)  # each record arrives or is counted (a hash split of 1e-9 drops none)
    _read({"type": "text", "path": str(_write(tmp, "f.txt", data))})


@FUZZ
@given(st.one_of(values, st.fixed_dictionaries({"samples": st.lists(values, max_size=6)})), st.booleans())
def test_random_json_samples_and_pickles(tmp_path_factory, obj, corrupt):
    tmp = tmp_path_factory.mktemp("objects")
    text = json.dumps(obj).encode()
    blob = pickle.dumps(obj)
    if corrupt:
        text, blob = text[: len(text) // 2], blob[: len(blob) // 2]
    records = obj["samples"] if isinstance(obj, dict) and "samples" in obj else obj
    for spec in ({"type": "json_samples", "path": str(_write(tmp, "f.json", text))},
                 {"type": "pickle", "path": str(_write(tmp, "f.pkl", blob))}):
        got = _read(spec)
        if got is not None and not corrupt:
            assert isinstance(records, list) and sum(got) == len(records)  # a non-list is a DataError


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


@FUZZ
@given(st.integers(0, 10_000), st.integers(0, 255), st.booleans())
def test_corrupt_and_truncated_hdf5_files(tmp_path_factory, where, byte, truncate):
    """A valid HDF5 file cut short or with one byte flipped: a DataError naming the file or documents, never a crash."""
    h5py = pytest.importorskip("h5py")
    tmp = tmp_path_factory.mktemp("hdf5_corrupt")
    path = tmp / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("text", data=np.array([b"first document", b"second one", b""], dtype="S16"))
        f.create_dataset("input_ids", data=np.arange(48, dtype="int64").reshape(3, 16))
    data = bytearray(path.read_bytes())
    where %= len(data)
    if truncate:
        del data[where:]
    else:
        data[where] = byte
    path.write_bytes(bytes(data))
    _read({"type": "hdf5", "path": str(path)})


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(["uint16", "uint32"]))
def test_binary_token_files_of_any_length(tmp_path_factory, data, dtype):
    """A whole number of ids trains (every id arrives in some window); a ragged length is a DataError naming the file."""
    tmp = tmp_path_factory.mktemp("binary_len")
    got = _read({"type": "binary", "path": str(_write(tmp, "t.bin", data)), "dtype": dtype, "chunk_tokens": 16, "shuffle": False})
    width = np.dtype(dtype).itemsize
    if len(data) % width or not data:
        assert got is None
    else:
        assert got == (-(-len(data) // width // 16), 0)
