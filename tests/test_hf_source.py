"""The `hf` source: local data files through `datasets` offline; an unreachable hub is skipped with a warning."""
import pytest

pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from conftest import tiny_preset  # noqa: E402
from lmforge.config import load_preset  # noqa: E402
from lmforge.data.config import DataConfig, ValidationConfig  # noqa: E402
from lmforge.data.errors import DataError  # noqa: E402
from lmforge.data.sources.hf import HFSource  # noqa: E402
from lmforge.training.trainer import train  # noqa: E402


@pytest.fixture
def wiki_parquet(tmp_path, shared_data):
    lines = [line.strip() for line in (shared_data / "wikitext-2" / "valid.txt").read_text().splitlines() if len(line.strip()) > 80]
    rows = lines[:300]
    path = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"text": rows, "title": [r[:20] for r in rows]}), path)
    return path, rows


def _source(spec: dict, split="train") -> HFSource:
    cfg = DataConfig.model_validate({"sources": [spec]})
    return HFSource(cfg.sources[0], split=split, validation=ValidationConfig(fraction=0.1))


def test_local_parquet_streams_splits_and_resumes(wiki_parquet):
    path, rows = wiki_parquet
    spec = {"type": "hf", "dataset": "parquet", "data_files": str(path)}
    train_docs = [d["text"] for d, _ in _source(spec).documents()]
    val_docs = [d["text"] for d, _ in _source(spec, "val").documents()]
    assert sorted(train_docs + val_docs) == sorted(rows) and not set(train_docs) & set(val_docs)
    stream = _source(spec).documents()
    for _ in range(10):
        _, state = next(stream)
    assert [d["text"] for d, _ in _source(spec).documents(state)] == train_docs[10:]


def test_multi_field_format(wiki_parquet):
    path, rows = wiki_parquet
    spec = {"type": "hf", "dataset": "parquet", "data_files": str(path), "fields": ["title", "text"], "format": "T: {title}\n{text}"}
    first = next(_source(spec).documents())[0]["text"]
    assert first.startswith("T: ") and first.split("\n", 1)[1] in rows


def test_unreachable_hub_is_dropped_with_one_warning_and_training_goes_on(tmp_path, small_text, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as tests run: the hub is never contacted
    preset = tiny_preset(small_text, max_steps=3, eval_interval=3)
    preset["data"]["sources"][0]["chunk_chars"] = 1024
    preset["data"]["validation"] = {"method": "hash", "fraction": 0.2}  # hub datasets have no file tail
    preset["data"]["sources"].append({"type": "hf", "dataset": "lmforge-tests/does-not-exist"})
    with pytest.warns(UserWarning, match="does-not-exist") as caught:
        result = train(load_preset(preset), tmp_path / "run")
    assert result.steps == 3
    assert len({str(w.message) for w in caught if "does-not-exist" in str(w.message)}) == 1


def test_only_source_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot open 'lmforge-tests/does-not-exist'"):
        next(_source({"type": "hf", "dataset": "lmforge-tests/does-not-exist"}).documents())


def test_builtin_names_map_to_script_free_hub_datasets():
    from lmforge.data.sources.hf import HF_ALIASES

    assert set(HF_ALIASES) == {"wikipedia", "openwebtext", "c4", "bookcorpus", "pile_subset", "common_crawl"}
    cfg = DataConfig.model_validate({"sources": [{"type": "hf", "dataset": "openwebtext"}]}).sources[0]
    assert (cfg.dataset, cfg.subset, cfg.revision, cfg.name) == ("Skylion007/openwebtext", "plain_text", "refs/convert/parquet", "openwebtext")
    own = DataConfig.model_validate({"sources": [{"type": "hf", "dataset": "wikipedia", "subset": "20231101.fr", "name": "wiki_fr"}]}).sources[0]
    assert (own.dataset, own.subset, own.name) == ("wikimedia/wikipedia", "20231101.fr", "wiki_fr")  # the preset's own fields win


def test_builtin_name_without_network_fails_fast_with_the_dataset_named(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="allenai/c4"):
        next(_source({"type": "hf", "dataset": "c4"}).documents())
    assert time.perf_counter() - t0 < 30


def test_resume_uses_the_datasets_own_state(wiki_parquet, monkeypatch):
    import datasets

    path, rows = wiki_parquet
    spec = {"type": "hf", "dataset": "parquet", "data_files": str(path)}
    train_docs = [d["text"] for d, _ in _source(spec).documents()]
    stream = _source(spec).documents()
    for _ in range(25):
        _, state = next(stream)
    assert state["dataset"] is not None and state["read"] >= 25

    def no_skip(self, n):
        raise AssertionError("resume must seek with the dataset's state, not re-read with skip()")

    monkeypatch.setattr(datasets.IterableDataset, "skip", no_skip)
    assert [d["text"] for d, _ in _source(spec).documents(state)] == train_docs[25:]
    legacy = {"read": state["read"]}  # a state saved before the dataset's own state was recorded
    monkeypatch.undo()
    assert [d["text"] for d, _ in _source(spec).documents(legacy)] == train_docs[25:]
