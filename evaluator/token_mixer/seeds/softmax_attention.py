"""Causal softmax attention with rotary position embeddings (the quality reference).

Training form: ``F.scaled_dot_product_attention(is_causal=True)``, quadratic in the sequence
length, so it violates a linear complexity bound on purpose. Decoding form: a KV cache that
grows by one key and one value per token.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (..., T, d) by angles position * base^(-2i/d)."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, **kw):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def _heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, T, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self._heads(x)
        pos = torch.arange(t, device=x.device)
        q, k = rotary(q, pos), rotary(k, pos)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def step(self, x_t: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        """One token: x_t (B, D) -> y_t (B, D); the state is the (keys, values) cache so far."""
        b, d = x_t.shape
        q, k, v = self._heads(x_t[:, None, :])
        pos = torch.full((1,), 0 if state is None else state[0].shape[2], device=x_t.device)
        q, k = rotary(q, pos), rotary(k, pos)
        if state is not None:
            k = torch.cat([state[0], k], dim=2)
            v = torch.cat([state[1], v], dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        y = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        return self.out(y.reshape(b, d)), (k, v)

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.num_heads * self.head_dim
