"""RetNet-style retention (Sun et al., 2023): linear attention with a fixed per-head decay.

S_t = gamma_h S_{t-1} + k_t v_t^T, y_t = q_t S_t, with gamma_h = 1 - 2^(-5 - h') spread over
the heads as in RetNet, values expanded 2x, a per-head RMS norm and a swish output gate.
Training form: chunked; inside a chunk a (C x C) product masked by the decay matrix
gamma^(i-j), across chunks the decayed state carried by a loop over chunks. Decoding form:
one (d_k x d_v) state per head.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, chunk_size: int = 64, expand_v: int = 2,
                 eps: float = 1e-6, **kw):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.key_dim = hidden_size // num_heads
        self.value_dim = expand_v * hidden_size // num_heads
        self.chunk_size = chunk_size
        self.eps = eps
        inner = self.value_dim * num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.g_proj = nn.Linear(hidden_size, inner, bias=False)
        self.out = nn.Linear(inner, hidden_size, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.value_dim))
        # log(gamma_h), gamma_h = 1 - exp(linspace(log 1/32, log 1/512)) as in RetNet
        gamma = 1.0 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), num_heads))
        self.register_buffer("log_gamma", torch.log(gamma), persistent=False)

    def _heads(self, x: torch.Tensor):
        b, t, _ = x.shape
        h = self.num_heads
        q = self.q_proj(x).view(b, t, h, self.key_dim).transpose(1, 2) * self.key_dim ** -0.5
        k = self.k_proj(x).view(b, t, h, self.key_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, h, self.value_dim).transpose(1, 2)
        return q, k, v  # (B, H, T, d)

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-head RMS norm, swish gate, output projection; y (B, T, H, dv), x (B, T, D)."""
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.norm_weight
        y = y.reshape(*x.shape[:-1], -1) * F.silu(self.g_proj(x))
        return self.out(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c = self.chunk_size
        n = (t + c - 1) // c
        q, k, v = (F.pad(z, (0, 0, 0, n * c - t)).view(b, self.num_heads, n, c, -1)
                   for z in self._heads(x))
        idx = torch.arange(c, device=x.device, dtype=torch.float32)
        lg = self.log_gamma.float()[:, None, None]  # (H, 1, 1)
        rel = idx[:, None] - idx[None, :]  # i - j
        decay = torch.exp((lg * rel).masked_fill(rel < 0, float("-inf"))).to(q.dtype)  # (H, C, C)
        q_decay = torch.exp(lg * (idx[None, :, None] + 1)).to(q.dtype)  # gamma^(i+1): (H, C, 1)
        k_decay = torch.exp(lg * (c - 1 - idx[None, :, None])).to(q.dtype)  # gamma^(C-1-j)
        chunk_decay = torch.exp(lg * c).to(q.dtype)[None]  # gamma^C: (1, H, 1, 1)
        intra = ((q @ k.transpose(-1, -2)) * decay[None, :, None]) @ v
        updates = (k * k_decay[None, :, None]).transpose(-1, -2) @ v  # (B, H, n, dk, dv)
        state = q.new_zeros(b, self.num_heads, self.key_dim, self.value_dim)
        before = []
        for j in range(n):
            before.append(state)
            state = chunk_decay * state + updates[:, :, j]
        inter = (q * q_decay[None, :, None]) @ torch.stack(before, dim=2)
        y = (intra + inter).reshape(b, self.num_heads, n * c, self.value_dim)[:, :, :t]
        return self._finish(y.transpose(1, 2), x)

    def step(self, x_t: torch.Tensor, state: Optional[torch.Tensor]):
        """One token: x_t (B, D) -> y_t (B, D); state S (B, H, dk, dv)."""
        b, _ = x_t.shape
        q, k, v = (z[:, :, 0] for z in self._heads(x_t[:, None, :]))
        if state is None:
            state = x_t.new_zeros(b, self.num_heads, self.key_dim, self.value_dim)
        gamma = torch.exp(self.log_gamma.float()).to(x_t.dtype)[None, :, None, None]
        state = gamma * state + k[..., :, None] * v[..., None, :]
        y = (q[..., None, :] @ state)[..., 0, :]  # (B, H, dv)
        return self._finish(y[:, None], x_t[:, None])[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.key_dim * self.value_dim
