"""HebbianMemory: gated linear attention (a fast-weight memory) with input-dependent decay and plasticity.

Per head the memory is a matrix S (dk x dv) written with the outer product k_t v_t^T and read with q_t:

    S_t = diag(lambda_t) S_{t-1} + k_t^T v_t,        o_t = q_t S_t

(Gated Linear Attention, Yang et al. 2023). lambda_t = sigmoid(W_lambda x_t + b) is input-dependent,
one value per head (`per_key_decay=False`, the default) or per head and key dimension (GLA's diagonal
gate). Plasticity alpha in (0, 1] rescales the log-decay:

    log lambda_eff_t = logsigmoid(W_lambda x_t + b) / alpha,   i.e. lambda_eff = lambda ** (1 / alpha)

so alpha multiplies the memory's time constant (-1 / log lambda): alpha = 1 keeps the learned decay,
alpha = 0.1 forgets ten times faster (the seed's "childhood": only very recent bytes stay in memory).

Three forms compute exactly the same outputs (tests check them against each other in fp64):
- `gla_recurrent`: one step at a time, O(1) state per step (generation);
- `gla_chunked`: training. Inside a chunk, cumulative log-gates are chunk-local and every exponent
  is a *difference* b_t - b_s with s <= t, or b_t itself, or b_last - b_s, so all are <= 0: nothing
  can overflow however strong the decay. The state is carried across chunks by a short scan;
- `gla_parallel`: the full T x T decay matrix from pairwise differences of the cumulative log-gate
  (tests only: O(T^2) memory).
The sequence-long product exp(+cumsum) * exp(-cumsum) (which overflows after a few dozen strongly
decaying steps) is never formed. Gates, cumsums and the state are fp32 even under autocast.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Shapes used below: q, k (B, H, T, dk); v (B, H, T, dv); g (B, H, T, dk) log-decay <= 0, with dk
# possibly 1 (one decay per head, broadcast over the key dimension); state S (B, H, dk, dv).


def gla_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step GLA: returns outputs (B, H, T, dv) and the final state (B, H, dk, dv)."""
    B, H, T, dk = q.shape
    S = q.new_zeros(B, H, dk, v.size(-1)) if state is None else state
    outs = []
    for t in range(T):
        S = g[:, :, t, :, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, dk, dv)
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], S))
    return torch.stack(outs, dim=2), S


def gla_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fully parallel GLA (tests): o_t = sum_{s<=t} (q_t * exp(G_t - G_s)) . k_s v_s, G the cumulative log-gate."""
    T = q.size(2)
    G = g.cumsum(dim=2)  # (B, H, T, dk)
    diff = G[:, :, :, None, :] - G[:, :, None, :, :]  # (B, H, T, T, dk), <= 0 on and below the diagonal
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    decay = diff.masked_fill(~causal[:, :, None], float("-inf")).exp()
    scores = (q[:, :, :, None, :] * k[:, :, None, :, :] * decay).sum(-1)  # (B, H, T, T)
    out = scores @ v
    state = ((G[:, :, -1:, :] - G).exp() * k).transpose(-1, -2) @ v  # (B, H, dk, dv)
    return out, state


def gla_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
    chunk_size: int = 64, state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel GLA: outputs (B, H, T, dv) and the final state. T need not divide by chunk_size.

    Within chunk c with local cumulative log-gate b (b_t = sum of g over the chunk up to t):
      intra: o_t += sum_{s<=t in chunk} (q_t k_s exp(b_t - b_s)) v_s
      inter: o_t += (q_t * exp(b_t)) S_c
      carry: S_{c+1} = exp(b_last) * S_c + sum_s (k_s * exp(b_last - b_s))^T v_s
    """
    B, H, T, dk = q.shape
    dv = v.size(-1)
    C = chunk_size
    if T == 0:
        return v.new_zeros(B, H, 0, dv), q.new_zeros(B, H, dk, dv) if state is None else state
    pad = (-T) % C
    if pad:  # trailing zeros: k = v = 0 writes nothing and g = 0 keeps the state, so the final state is unchanged
        q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
    n = q.size(2) // C
    qc, kc, vc, gc = (x.reshape(B, H, n, C, x.size(-1)) for x in (q, k, v, g))  # (B, H, n, C, *)
    b = gc.cumsum(dim=3)  # (B, H, n, C, dk or 1) chunk-local, <= 0 and decreasing
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if g.size(-1) == 1:  # one decay per head: the decay matrix is (C, C)
        decay = (b[..., :, None, 0] - b[..., None, :, 0]).masked_fill(~causal, float("-inf")).exp()
        scores = (qc @ kc.transpose(-1, -2)) * decay  # (B, H, n, C, C)
    else:  # per key dimension: (C, C, dk) differences
        diff = b[..., :, None, :] - b[..., None, :, :]
        decay = diff.masked_fill(~causal[:, :, None], float("-inf")).exp()
        scores = (qc[..., :, None, :] * kc[..., None, :, :] * decay).sum(-1)
    out = scores @ vc  # (B, H, n, C, dv) intra-chunk part
    last = b[..., -1:, :]  # (B, H, n, 1, dk)
    writes = ((last - b).exp() * kc).transpose(-1, -2) @ vc  # (B, H, n, dk, dv) each chunk's own contribution
    chunk_decay = last.squeeze(-2).exp()[..., None]  # (B, H, n, dk, 1)
    S = q.new_zeros(B, H, dk, dv) if state is None else state
    starts = []
    for c in range(n):  # short scan over chunks: the only sequential part
        starts.append(S)
        S = chunk_decay[:, :, c] * S + writes[:, :, c]
    S_start = torch.stack(starts, dim=2)  # (B, H, n, dk, dv) state entering each chunk
    out = out + (qc * b.exp()) @ S_start
    return out.reshape(B, H, n * C, dv)[:, :, :T], S


class HebbianMemory(nn.Module):
    """Multi-head GLA layer: projections, input-dependent decay scaled by plasticity, per-head RMSNorm, output projection."""

    def __init__(self, dim: int, n_head: int, per_key_decay: bool = False, chunk_size: int = 64, norm_eps: float = 1e-5):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"memory width ({dim}) must be divisible by n_head ({n_head})")
        self.n_head, self.head_dim, self.chunk_size = n_head, dim // n_head, chunk_size
        self.per_key_decay = per_key_decay
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        n_gates = dim if per_key_decay else n_head
        self.decay = nn.Linear(dim, n_gates, bias=True)
        self.out_norm_eps = norm_eps
        self.out_norm = nn.Parameter(torch.ones(self.head_dim))
        self.proj = nn.Linear(dim, dim, bias=False)
        self.reset_decay()

    @torch.no_grad()
    def reset_decay(self) -> None:
        """Start with lambda spread over [0.9, 0.999] across gates (time constants ~10 to ~1000 steps), weights small."""
        nn.init.normal_(self.decay.weight, std=0.02)
        n = self.decay.bias.numel()
        lam = 1 - torch.logspace(-1, -3, n) if n > 1 else torch.tensor([0.99])
        self.decay.bias.copy_(torch.log(lam / (1 - lam)))

    def gates(self, x: torch.Tensor, alpha: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """q, k, v (B, H, T, d) and log-decay g (B, H, T, dk or 1): fp32, or fp64 for fp64 inputs (tests)."""
        B, T, _ = x.shape
        H, d = self.n_head, self.head_dim
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp32 state, fp64 kept for tests
        q, k, v = self.qkv(x).to(acc).view(B, T, 3, H, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
        q = q * d ** -0.5
        k = F.normalize(k, dim=-1)  # unit keys: each write adds a bounded amount to the memory
        logit = self.decay(x).to(acc)
        g = F.logsigmoid(logit).view(B, T, H, -1).transpose(1, 2)  # (B, H, T, d or 1)
        alpha = torch.as_tensor(alpha, dtype=acc, device=x.device)
        return q, k, v, g / alpha

    def forward(
        self, x: torch.Tensor, alpha: torch.Tensor | float = 1.0, state: torch.Tensor | None = None,
        form: str = "chunked",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (B, T, C) and the memory state after the last position (B, H, dk, dv), fp32."""
        B, T, C = x.shape
        q, k, v, g = self.gates(x, alpha)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if form == "chunked":
                o, S = gla_chunked(q, k, v, g, self.chunk_size, state)
            elif form == "recurrent":
                o, S = gla_recurrent(q, k, v, g, state)
            elif form == "parallel":
                if state is not None:
                    raise ValueError("the parallel form starts from an empty memory")
                o, S = gla_parallel(q, k, v, g)
            else:
                raise ValueError(f"unknown memory form {form!r}: chunked, recurrent or parallel")
            o = F.rms_norm(o, (self.head_dim,), self.out_norm.to(o.dtype), self.out_norm_eps)  # (B, H, T, d)
        o = o.transpose(1, 2).reshape(B, T, C).to(x.dtype)
        return self.proj(o), S

    def flops_per_token(self, chunk_size: int | None = None) -> float:
        """Forward+backward FLOPs of the memory mixing itself per position (not the projections): 3 x forward.

        Forward per head: intra-chunk scores and weighted sum ~ 2*C*(dk+dv)/2 (causal half), chunk write and
        state readout 2*dk*dv each.
        """
        C = chunk_size or self.chunk_size
        d = self.head_dim
        return 3.0 * self.n_head * (C * 2 * d + 4 * d * d)

