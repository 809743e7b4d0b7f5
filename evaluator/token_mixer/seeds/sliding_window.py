"""Sliding-window causal attention with rotary position embeddings.

Each position attends to itself and the previous ``window - 1`` positions. The training form
is blocked: queries in block c (of ``window`` positions) see keys of blocks c-1 and c, so the
cost is O(T * window) instead of O(T^2). Decoding keeps a cache of the last ``window`` keys and
values plus the position counter.
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
    def __init__(self, hidden_size: int, num_heads: int, window: int = 64, **kw):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.window = window
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def _heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, T, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        w = self.window
        q, k, v = self._heads(x)
        pos = torch.arange(t, device=x.device)
        q, k = rotary(q, pos), rotary(k, pos)
        n = (t + w - 1) // w
        pad = n * w - t
        # one block of zeros in front (keys "before" position 0), padding at the end
        q = F.pad(q, (0, 0, 0, pad)).view(b, self.num_heads, n, w, self.head_dim)
        k = F.pad(k, (0, 0, w, pad)).view(b, self.num_heads, n + 1, w, self.head_dim)
        v = F.pad(v, (0, 0, w, pad)).view(b, self.num_heads, n + 1, w, self.head_dim)
        keys = torch.cat([k[:, :, :-1], k[:, :, 1:]], dim=3)  # (B, H, n, 2w, d)
        values = torch.cat([v[:, :, :-1], v[:, :, 1:]], dim=3)
        qi = torch.arange(w, device=x.device)[:, None] + w  # query index inside [prev | own]
        kj = torch.arange(2 * w, device=x.device)[None, :]
        allowed = (kj <= qi) & (kj > qi - w)  # (w, 2w)
        first = allowed & (kj >= w)  # block 0 has no previous block
        mask = torch.stack([first] + [allowed] * (n - 1)) if n > 1 else first[None]
        scores = (q @ keys.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores.float().masked_fill(~mask, float("-inf"))
        y = torch.softmax(scores, dim=-1).to(v.dtype) @ values
        y = y.reshape(b, self.num_heads, n * w, self.head_dim)[:, :, :t]
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def step(self, x_t: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor, int]]):
        """One token: x_t (B, D) -> y_t (B, D); state = (last keys, last values, position)."""
        b, d = x_t.shape
        q, k, v = self._heads(x_t[:, None, :])
        position = 0 if state is None else state[2]
        pos = torch.full((1,), position, device=x_t.device)
        q, k = rotary(q, pos), rotary(k, pos)
        if state is not None:
            k = torch.cat([state[0], k], dim=2)[:, :, -self.window:]
            v = torch.cat([state[1], v], dim=2)[:, :, -self.window:]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        y = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        return self.out(y.reshape(b, d)), (k, v, position + 1)

    def state_size(self, seq_len: int) -> int:
        return 2 * min(seq_len, self.window) * self.num_heads * self.head_dim
