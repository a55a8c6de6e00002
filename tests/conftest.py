"""Test setup: never touch the network, and find the shared real-text corpora."""
import os
import tempfile
from pathlib import Path

import pytest

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["LMFORGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmforge-cache-")  # measured MFU peaks: never the user's cache

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared corpora not found at {SHARED_DATA}")
    return SHARED_DATA


def tiny_preset(data_file: Path, **train_overrides) -> dict:
    """A 2-layer char-level GPT on a slice of real text: trains in well under a second per 10 steps."""
    train = {
        "batch_size": 4, "max_steps": 12, "lr": 3e-3, "precision": "fp32", "log_interval": 1,
        "eval_interval": 4, "eval_batches": 2, "save_interval": 3, "progress_bar": False,
        "lr_schedule": {"name": "warmup_cosine", "warmup_steps": 2},
    }
    train.update(train_overrides)
    return {
        "name": "tiny",
        "model": {"arch": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.1},
        "data": {
            "sources": [{"type": "text", "path": str(data_file)}],
            "tokenizer": {"type": "char"},
            "validation": {"method": "tail", "fraction": 0.1},
            "shuffle_buffer": 16,
        },
        "train": train,
        "samples": {"prompts": ["ROMEO:"], "max_new_tokens": 8},
    }


@pytest.fixture
def small_text(tmp_path: Path, shared_data: Path) -> Path:
    """The first ~40k characters of tiny shakespeare, cut at a line end."""
    text = (shared_data / "tinyshakespeare.txt").read_text()[:40000]
    path = tmp_path / "shakespeare_head.txt"
    path.write_text(text[: text.rfind("\n") + 1])
    return path
