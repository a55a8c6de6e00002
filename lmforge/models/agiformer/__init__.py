"""AGIFORMER (seed 003): a byte-level language model with a Hebbian (gated linear attention) memory,
plasticity, Adaptive Computation Time and a local byte decoder. Registered as `arch: agiformer`.

Data flow (B batch, T bytes, P = patch_size, N = T // P complete patches)::

    bytes (B, T) -> ByteLatentEncoder (causal Conv1d, kernel 6 / stride 4, left overlap only) -> (B, N, C)
      -> n_layer x HybridBlock (sliding-window attention || HebbianMemory, sigmoid-gated, SwiGLU, RMSNorm)
      -> RecurrentReasoningBlock (Graves ACT) -> latents z_0..z_{N-1}
      -> shift: patch q is predicted from [start, z_0, ..., z_{N-1}][q], which saw only bytes < P*q
      -> local decoder ("parallel" MLP head or "autoregressive" GRU over the patch) -> lm_head
    logits (B, T, 256): logits[:, t] predicts byte t + 1 (the standard `clm` objective's labels).

Config (`AgiformerConfig`, the preset's `model` section):
    vocab_size (256 with the byte tokenizer), n_embd, n_layer, n_head, block_size (bytes),
    patch_size (4), patch_kernel (6), attn_window (patches), memory_chunk (patches per chunk of the
    chunkwise memory form), per_key_decay, plasticity (initial alpha), act_max_steps, act_eps,
    ponder_tau, local_decoder ("parallel" | "autoregressive"), mlp_ratio, multiple_of, norm_eps, init_std.

Plasticity:
    `model.plasticity` is a 0-d float buffer (saved in checkpoints and used at inference), initialised
    from `config.plasticity`; `model.set_plasticity(alpha)` sets it, alpha in (0, 1]. Every memory layer
    uses log lambda_eff = logsigmoid(W x + b) / alpha, i.e. lambda_eff = lambda ** (1 / alpha): alpha
    multiplies the memory's time constant; alpha = 0.1 forgets ten times faster than alpha = 1.

Model API: `forward(input_ids, cache=None) -> ModelOutput` (aux_losses["ponder_cost"] = tau * mean(N + R),
stats["ponder_steps"] = mean ACT steps), `step(input_ids, cache)`, `new_cache(batch_size)`,
`get_input_embeddings()`, `flops_per_token(seq_len)`, `set_plasticity(alpha)`.
See docs/agiformer.md.
"""
from lmforge.models.agiformer.config import AgiformerConfig
from lmforge.models.agiformer.decoders import AutoregressivePatchDecoder, ParallelPatchDecoder
from lmforge.models.agiformer.encoder import ByteLatentEncoder
from lmforge.models.agiformer.hybrid import HybridBlock, LayerState, SlidingWindowAttention
from lmforge.models.agiformer.memory import HebbianMemory, gla_chunked, gla_parallel, gla_recurrent
from lmforge.models.agiformer.model import Agiformer, AgiformerCache
from lmforge.models.agiformer.reasoning import RecurrentReasoningBlock

__all__ = [
    "Agiformer", "AgiformerCache", "AgiformerConfig", "AutoregressivePatchDecoder", "ByteLatentEncoder",
    "HebbianMemory", "HybridBlock", "LayerState", "ParallelPatchDecoder", "RecurrentReasoningBlock",
    "SlidingWindowAttention", "gla_chunked", "gla_parallel", "gla_recurrent",
]
