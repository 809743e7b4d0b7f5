"""Linear attention with the elu+1 feature map (Katharopoulos et al., 2020), chunked.

y_t = phi(q_t) S_t / (phi(q_t) . z_t) with S_t = sum_{i<=t} phi(k_i) v_i^T and
z_t = sum_{i<=t} phi(k_i). Training form: inside a chunk a masked (C x C) product, across
chunks the running state (an exclusive prefix sum of per-chunk k^T v), so the cost is
O(T * C * d + T * d^2). Decoding form: the (d_k x d_v) state and the normaliser per head.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, chunk_size: int = 64, eps: float = 1e-6,
                 **kw):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.chunk_size = chunk_size
        self.eps = eps
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def _heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return F.elu(q) + 1.0, F.elu(k) + 1.0, v  # each (B, H, T, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        c = self.chunk_size
        n = (t + c - 1) // c
        q, k, v = self._heads(x)
        # zero padding after the feature map, so padded keys carry no mass
        q, k, v = (F.pad(z, (0, 0, 0, n * c - t)).view(b, self.num_heads, n, c, -1)
                   for z in (q, k, v))
        causal = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B, H, n, C, C)
        kv = k.transpose(-1, -2) @ v  # (B, H, n, d, d) per chunk
        ksum = k.sum(dim=3)  # (B, H, n, d)
        # state entering chunk j = sum over chunks < j (exclusive prefix sum)
        kv_before = F.pad(kv.cumsum(dim=2), (0, 0, 0, 0, 1, 0))[:, :, :n]
        ksum_before = F.pad(ksum.cumsum(dim=2), (0, 0, 1, 0))[:, :, :n]
        num = scores @ v + q @ kv_before
        den = scores.sum(dim=-1) + (q * ksum_before[:, :, :, None, :]).sum(dim=-1)
        y = num / (den[..., None] + self.eps)
        y = y.reshape(b, self.num_heads, n * c, self.head_dim)[:, :, :t]
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def step(self, x_t: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        """One token: x_t (B, D) -> y_t (B, D); state = (S (B, H, d, d), z (B, H, d))."""
        b, d = x_t.shape
        q, k, v = (z[:, :, 0] for z in self._heads(x_t[:, None, :]))  # (B, H, d)
        if state is None:
            s = x_t.new_zeros(b, self.num_heads, self.head_dim, self.head_dim)
            z = x_t.new_zeros(b, self.num_heads, self.head_dim)
        else:
            s, z = state
        s = s + k[..., :, None] * v[..., None, :]
        z = z + k
        num = (q[..., None, :] @ s)[..., 0, :]
        den = (q * z).sum(dim=-1, keepdim=True)
        y = num / (den + self.eps)
        return self.out(y.reshape(b, d)), (s, z)

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * (self.head_dim * self.head_dim + self.head_dim)
