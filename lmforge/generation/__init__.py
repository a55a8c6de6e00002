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
from lmforge.generation.speculative import SpeculativeResult, speculative_generate, verify
from lmforge.generation.stop import TextStreamer, find_stop, trim_at_stop

__all__ = [
    "SamplingConfig",
    "SpeculativeResult",
    "TextStreamer",
    "apply_repetition_penalty",
    "block_repeated_ngrams",
    "find_stop",
    "generate",
    "min_p_filter",
    "sample_next",
    "speculative_generate",
    "top_k_filter",
    "top_p_filter",
    "trim_at_stop",
    "verify",
]
