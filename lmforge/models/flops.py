"""Training FLOPs per token, the numerator of MFU."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.models.gpt import GPTConfig


def flops_per_token(config: "GPTConfig", n_params_nonembedding: int, seq_len: int) -> float:
    """Forward + backward FLOPs to train on one token at context `seq_len`.

    The estimate of PaLM (Chowdhery et al. 2022, appendix B), nanoGPT's
    `estimate_mfu` and nanochat's `estimate_flops`:

    - `6 * N`: every weight does one multiply-add (2 FLOPs) per token in the
      forward pass and twice that in the backward pass (grads w.r.t. inputs and
      weights): 2 + 4 = 6. N excludes embeddings, whose lookup is not a matmul.
    - With tied embeddings the lm_head matmul (2 * n_embd * vocab_size forward,
      x3 with backward) is real compute that N no longer holds, since its
      weight *is* the embedding: add `6 * n_embd * vocab_size`. An untied head
      is a non-embedding weight and already sits in N.
    - `12 * n_layer * n_head * head_dim * seq_len`: attention scores q.k and the
      weighted sum of v, each 2 * n_head * head_dim * seq_len FLOPs per token
      forward, x3 with backward. Counted over the full context as PaLM does
      (no halving for the causal mask), and over query heads, so GQA doesn't
      change it. MLA's scores run over its qk size (nope + rope) and its sum
      over v_head_dim: `6 * n_layer * n_head * (qk + v) * seq_len`.
    """
    head = 6 * config.n_embd * config.vocab_size if config.tie_embeddings else 0
    qk = v = config.head_dim
    if config.attention == "mla":
        m = config.mla_sizes
        qk, v = m["qk_nope_head_dim"] + m["qk_rope_head_dim"], m["v_head_dim"]
    attention = 6 * config.n_layer * config.n_head * (qk + v) * seq_len
    return float(6 * n_params_nonembedding + head + attention)
