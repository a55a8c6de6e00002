"""Evaluation: validation loss, perplexity, bits per byte/char.

`run_eval`, `needle` and `lm_eval_adapter` are imported from their own modules, not here: the first and
last load runs through `lmforge.inference`, which imports the trainer, which imports this package.
"""
from lmforge.evaluation.lm import evaluate_lm

__all__ = ["evaluate_lm"]
