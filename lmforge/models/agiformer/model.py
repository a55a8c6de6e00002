"""Agiformer: the assembled byte-level model, its incremental cache, and accounting (FLOPs, optimizer groups)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.agiformer.config import AgiformerConfig
from lmforge.models.agiformer.decoders import AutoregressivePatchDecoder, ParallelPatchDecoder
from lmforge.models.agiformer.encoder import ByteLatentEncoder
from lmforge.models.agiformer.hybrid import HybridBlock, LayerState
from lmforge.models.agiformer.reasoning import RecurrentReasoningBlock
from lmforge.models.layers import RMSNorm, RotaryEmbedding
from lmforge.models.output import ModelOutput
from lmforge.registry import MODELS


class AgiformerCache:
    """Everything incremental decoding needs: O(1) memory states, the attention windows, the current patch.

    Duck-types `KVCache` for `lmforge.generation` (`length`, `max_len`, `reset()`, `advance(n)`).
    """

    def __init__(self, n_layer: int, batch_size: int, max_len: int, device: torch.device | str | None = None):
        self.n_layer, self.batch_size, self.max_len, self.device = n_layer, batch_size, max_len, device
        self.reset()

    def reset(self) -> None:
        self.length = 0  # bytes seen
        self.layers = [LayerState() for _ in range(self.n_layer)]
        self.recent = torch.zeros(self.batch_size, 0, dtype=torch.long, device=self.device)  # last bytes (window of the conv)
        self.latent: torch.Tensor | None = None  # (B, 1, C) latent of the current patch; None = the start latent

    def advance(self, n: int) -> None:
        self.length += n


@MODELS.register("agiformer", config=AgiformerConfig)
class Agiformer(nn.Module):
    """bytes -> ByteLatentEncoder -> HybridBlocks -> RecurrentReasoningBlock (ACT) -> shift -> local decoder -> lm_head.

    The backbone runs once per patch of `patch_size` bytes; patch p's output is the latent of patch p + 1
    (patch 0 gets a learned start latent), so every prediction sees only earlier bytes.
    `logits[:, t]` predicts byte t + 1, as the `clm` objective expects.
    """

    def __init__(self, config: AgiformerConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set: the trainer fills it from the tokenizer; set it when building by hand")
        self.config = c = config.model_copy(deep=True)
        C = c.n_embd
        self.encoder = ByteLatentEncoder(c.vocab_size, C, c.patch_size, c.patch_kernel)
        self.rotary = RotaryEmbedding(C // c.n_head, c.max_patches)
        self.blocks = nn.ModuleList(
            HybridBlock(C, c.n_head, c.attn_window, c.mlp_hidden_dim, c.per_key_decay, c.memory_chunk, c.norm_eps)
            for _ in range(c.n_layer)
        )
        self.reasoning = RecurrentReasoningBlock(C, c.mlp_hidden_dim, c.act_max_steps, c.act_eps, c.norm_eps)
        self.norm_latent = RMSNorm(C, c.norm_eps)
        self.start_latent = nn.Parameter(torch.zeros(C))
        if c.local_decoder == "parallel":
            self.decoder = ParallelPatchDecoder(C, c.mlp_hidden_dim, c.patch_size, c.norm_eps)
        else:
            self.decoder = AutoregressivePatchDecoder(C, c.mlp_hidden_dim, c.patch_size, self.encoder.embed, c.norm_eps)
        self.norm_out = RMSNorm(C, c.norm_eps)
        self.lm_head = nn.Linear(C, c.vocab_size, bias=False)
        self.register_buffer("plasticity", torch.tensor(float(c.plasticity)))  # persistent: saved in checkpoints
        self.memory_form = "chunked"  # "recurrent" / "parallel" give the same outputs (tests)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.init_std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            block.memory.reset_decay()
        self.reasoning.reset_halting()

    def set_plasticity(self, alpha: float) -> None:
        """Set plasticity alpha in (0, 1]: the memory's log-decay is divided by it (used in training and inference)."""
        if not 0 < alpha <= 1:
            raise ValueError(f"plasticity must be in (0, 1], got {alpha}")
        self.plasticity.fill_(float(alpha))

    def get_input_embeddings(self) -> nn.Embedding:
        """The byte embedding (shared by the encoder and the autoregressive decoder)."""
        return self.encoder.embed

    # ------------------------------------------------------------------ forward

    def _backbone(self, x: torch.Tensor, offset: int, states: list[LayerState] | None) -> tuple[torch.Tensor, ...]:
        """Patch encodings (B, N, C) -> latents (B, N, C), ACT steps and remainders (B, N)."""
        x = x.to(self.start_latent.dtype)  # the residual stream stays in the weights' dtype (fp32 under autocast)
        rope = self.rotary(offset, x.size(1))
        form = "recurrent" if states is not None and x.size(1) == 1 else self.memory_form
        for i, block in enumerate(self.blocks):
            x = block(x, rope, self.plasticity, states[i] if states is not None else None, form)
        x, steps, remainder = self.reasoning(x)
        return self.norm_latent(x), steps, remainder

    def forward(self, input_ids: torch.Tensor, cache: AgiformerCache | None = None) -> ModelOutput:
        """Logits (B, T, V) for input_ids (B, T): logits[:, t] predicts byte t + 1. With a cache: T new bytes."""
        if cache is not None and cache.length > 0:
            return self._step(input_ids, cache)
        B, T = input_ids.shape
        P = self.config.patch_size
        limit = cache.max_len if cache is not None else self.config.block_size
        if T > limit:
            raise ValueError(f"sequence of {T} bytes exceeds the window ({limit})")
        N = T // P  # complete patches: the trailing partial patch is never encoded (nothing needs it)
        start = self.start_latent.expand(B, 1, -1)
        aux, stats = {}, {}
        if N > 0:
            z, steps, remainder = self._backbone(self.encoder(input_ids[:, : N * P]), 0, cache.layers if cache else None)
            latents = torch.cat([start.to(z.dtype), z], dim=1)  # (B, N+1, C): latent q predicts patch q
            ponder = (steps.to(remainder.dtype) + remainder).mean()
            if self.config.ponder_tau > 0:
                aux["ponder_cost"] = self.config.ponder_tau * ponder
            stats["ponder_steps"] = steps.float().mean().detach()
        else:
            latents = start
        patch_bytes = F.pad(input_ids, (0, (N + 1) * P - T)).view(B, N + 1, P)  # padding only feeds bytes > T
        h = self.decoder(latents, patch_bytes).reshape(B, (N + 1) * P, -1)  # hidden state predicting byte i
        h = self.norm_out(h[:, 1 : T + 1])  # predicting bytes 1..T, i.e. the next byte of positions 0..T-1
        if cache is not None:  # a prefill: the block states are filled, the rest of the cache is set here
            ov = self.config.patch_kernel - P
            cache.length, cache.recent = T, input_ids[:, -(P + ov) :]
            cache.latent = z[:, -1:] if N > 0 else None
        return ModelOutput(logits=self.lm_head(h), hidden_states=h, cache=cache, aux_losses=aux, stats=stats)

    def _step(self, input_ids: torch.Tensor, cache: AgiformerCache) -> ModelOutput:
        """Feed new bytes after cached ones, one at a time: a backbone step each time a patch completes.

        (An empty cache is filled by one parallel forward instead: see `forward`.)
        """
        P, ov = self.config.patch_size, self.config.patch_kernel - self.config.patch_size
        if cache.length + input_ids.size(1) > cache.max_len:
            raise ValueError(f"cache window is full: {cache.length} + {input_ids.size(1)} bytes > max_len {cache.max_len}")
        B = input_ids.size(0)
        hidden = []
        for i in range(input_ids.size(1)):
            cache.recent = torch.cat([cache.recent, input_ids[:, i : i + 1]], dim=1)[:, -(P + ov) :]
            cache.length += 1
            if cache.length % P == 0:  # patch p complete: it becomes the latent of patch p + 1
                p = cache.length // P - 1
                left = cache.recent[:, :ov] if p > 0 and ov > 0 else None
                enc = self.encoder(cache.recent[:, -P:], left_context=left)  # (B, 1, C)
                cache.latent, _, _ = self._backbone(enc, p, cache.layers)
            j = cache.length % P  # the next byte's index in its patch; its earlier bytes are the last j seen
            latent = self.start_latent.expand(B, 1, -1) if cache.latent is None else cache.latent
            patch = torch.zeros(B, 1, P, dtype=torch.long, device=input_ids.device)
            if j:
                patch[:, 0, :j] = cache.recent[:, -j:]
            hidden.append(self.decoder(latent, patch)[:, 0, j])  # (B, C)
        h = self.norm_out(torch.stack(hidden, dim=1))  # (B, T, C)
        return ModelOutput(logits=self.lm_head(h), hidden_states=h, cache=cache)

    def step(self, input_ids: torch.Tensor, cache: AgiformerCache) -> ModelOutput:
        """Incremental decoding hook of lmforge.generation: T new bytes after the cached ones."""
        return self(input_ids, cache=cache)

    def new_cache(
        self, batch_size: int, max_len: int | None = None,
        dtype: torch.dtype | None = None, device: torch.device | str | None = None,
    ) -> AgiformerCache:
        """An empty cache for up to `max_len` bytes (default and cap: block_size, the window a full forward sees)."""
        max_len = min(max_len or self.config.block_size, self.config.block_size)
        return AgiformerCache(self.config.n_layer, batch_size, max_len,
                              device=device if device is not None else self.lm_head.weight.device)

    # ------------------------------------------------------------------ accounting

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.encoder.embed.weight.numel() if exclude_embeddings else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per byte at context `seq_len` bytes: 6 per weight use, as PaLM's 6N.

        Patch-level weights (conv, hybrid blocks, reasoning block) run once per patch, i.e. 1/patch_size
        per byte; the reasoning block counts act_max_steps times (an upper bound: ACT may stop earlier).
        Decoder and lm_head weights run once per byte. Attention adds 12 * n_embd * min(window, patches)
        per patch and layer (PaLM's term); the memory mixing its chunk and state products.
        """
        c = self.config
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        blocks = count(self.blocks)
        reasoning = count(self.reasoning)
        per_patch = 6 * (count(self.encoder.conv) + blocks + c.act_max_steps * reasoning)
        patches = max(seq_len // c.patch_size, 1)
        per_patch += c.n_layer * (12 * c.n_embd * min(c.attn_window, patches) + self.blocks[0].memory.flops_per_token())
        decoder = count(self.decoder) - (self.encoder.embed.weight.numel() if c.local_decoder == "autoregressive" else 0)
        per_byte = 6 * (decoder + count(self.lm_head) + count(self.norm_out))
        return float(per_patch / c.patch_size + per_byte)
