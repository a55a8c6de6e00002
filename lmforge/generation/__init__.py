"""Generation: sampling filters, the autoregressive loop, and diffusion sampling for mask_diffusion runs."""
from lmforge.generation.diffusion import DiffusionSampling, diffusion_generate, token_entropy
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
    "DiffusionSampling",
    "SamplingConfig",
    "SpeculativeResult",
    "TextStreamer",
    "apply_repetition_penalty",
    "block_repeated_ngrams",
    "diffusion_generate",
    "find_stop",
    "generate",
    "min_p_filter",
    "sample_next",
    "speculative_generate",
    "token_entropy",
    "top_k_filter",
    "top_p_filter",
    "trim_at_stop",
    "verify",
]
