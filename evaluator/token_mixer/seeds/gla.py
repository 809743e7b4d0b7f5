"""GLA-style gated linear attention (Yang et al., 2023): data-dependent per-channel decay.

S_t = diag(alpha_t) S_{t-1} + k_t v_t^T, y_t = q_t S_t, with log alpha_t = logsigmoid(W x_t) / 16
from a low-rank projection (one forget rate per key channel), a per-head RMS norm and a swish
output gate.

Training form: chunked (GLA's chunkwise form in log space). Inside a chunk, with b the
cumulative log decay from the chunk start, the decayed scores q_i . (k_j * exp(b_i - b_j)) are
one matmul of q * exp(b) and k * exp(-b) (both causal: the reference point is the chunk start,
never a later position). To keep exp(-b) finite, log alpha is clamped at -60 / chunk_size per
token (alpha >= 0.024 at chunk 16; the gate reaches that only for logits below -60), in forward
and in step alike, so exp(-b) <= e^60. Across chunks the state is carried by a loop over
chunks. Decoding form: one (d_k x d_v) state per head.
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, chunk_size: int = 16, gate_rank: int = 16,
                 gate_temperature: float = 16.0, eps: float = 1e-6, **kw):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.chunk_size = chunk_size
        self.gate_temperature = gate_temperature
        self.eps = eps
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.gk_down = nn.Linear(hidden_size, gate_rank, bias=False)
        self.gk_up = nn.Linear(gate_rank, hidden_size, bias=True)
        self.g_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))

    def _heads(self, x: torch.Tensor):
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        log_alpha = F.logsigmoid(self.gk_up(self.gk_down(x)).float()) / self.gate_temperature
        log_alpha = log_alpha.clamp(min=-60.0 / self.chunk_size)
        log_alpha = log_alpha.view(b, t, h, d).transpose(1, 2)
        return q * d ** -0.5, k, v, log_alpha  # (B, H, T, d) each

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-head RMS norm, swish gate, output projection; y (B, T, H, d), x (B, T, D)."""
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.norm_weight
        return self.out(y.reshape(x.shape) * F.silu(self.g_proj(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c = self.chunk_size
        n = (t + c - 1) // c
        q, k, v, log_alpha = (F.pad(z, (0, 0, 0, n * c - t)).view(b, self.num_heads, n, c, -1)
                              for z in self._heads(x))
        cum = log_alpha.cumsum(dim=3)  # b_i inside each chunk, (B, H, n, C, d), float32
        q_in = q * cum.exp().to(q.dtype)  # decay from the chunk start to i
        causal = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        # masked with masked_fill, not a product: entries above the diagonal may overflow
        scores = (q_in @ (k * (-cum).exp().to(k.dtype)).transpose(-1, -2)).masked_fill(~causal, 0.0)
        intra = scores @ v
        last = cum[..., -1:, :]  # b_C of each chunk, (B, H, n, 1, d)
        k_out = k * (last - cum).exp().to(k.dtype)  # decay from j to the chunk end
        updates = k_out.transpose(-1, -2) @ v  # (B, H, n, d, d)
        chunk_decay = last[..., 0, :].exp().to(q.dtype)  # (B, H, n, d)
        state = q.new_zeros(b, self.num_heads, self.head_dim, self.head_dim)
        before = []
        for j in range(n):
            before.append(state)
            state = chunk_decay[:, :, j, :, None] * state + updates[:, :, j]
        inter = q_in @ torch.stack(before, dim=2)
        y = (intra + inter).reshape(b, self.num_heads, n * c, self.head_dim)[:, :, :t]
        return self._finish(y.transpose(1, 2), x)

    def step(self, x_t: torch.Tensor, state: Optional[torch.Tensor]):
        """One token: x_t (B, D) -> y_t (B, D); state S (B, H, dk, dv)."""
        b, _ = x_t.shape
        q, k, v, log_alpha = (z[:, :, 0] for z in self._heads(x_t[:, None, :]))
        if state is None:
            state = x_t.new_zeros(b, self.num_heads, self.head_dim, self.head_dim)
        alpha = log_alpha.float().exp().to(x_t.dtype)
        state = alpha[..., None] * state + k[..., :, None] * v[..., None, :]
        y = (q[..., None, :] @ state)[..., 0, :]
        return self._finish(y[:, None], x_t[:, None])[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim * self.head_dim
