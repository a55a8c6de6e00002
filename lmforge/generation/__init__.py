"""Generation: sampling filters and the autoregressive loop."""
from lmforge.generation.generate import generate
from lmforge.generation.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    block_repeated_ngrams,
    min_p_filter,
    sample_next,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "SamplingConfig",
    "apply_repetition_penalty",
    "block_repeated_ngrams",
    "generate",
    "min_p_filter",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]
