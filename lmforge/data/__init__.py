"""The data pipeline: sources -> mix -> tokenizer -> packer -> shuffle buffer -> batches.

Every stage's position is part of `DataPipeline.state_dict()`, so a resumed run continues on the exact
batch an uninterrupted run would have produced next.
"""
from lmforge.data.config import DataConfig, TokenizerConfig, ValidationConfig
from lmforge.data.errors import DataError, DataWarning
import lmforge.data.sources  # noqa: E402,F401  registers the source types
from lmforge.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer  # noqa: E402
from lmforge.data.loader import DataPipeline, TokenBatches, build_val_batches, iter_texts  # noqa: E402

__all__ = [
    "DataConfig", "DataError", "DataPipeline", "DataWarning", "TokenBatches", "Tokenizer", "TokenizerConfig",
    "ValidationConfig", "build_tokenizer", "build_val_batches", "iter_texts", "load_tokenizer",
]
