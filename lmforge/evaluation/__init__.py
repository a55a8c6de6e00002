"""Evaluation: validation loss, perplexity, bits per byte/char."""
from lmforge.evaluation.lm import evaluate_lm

__all__ = ["evaluate_lm"]
