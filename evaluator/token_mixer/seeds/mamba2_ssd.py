"""Mamba2-style SSD (Dao and Gu, 2024): a selective state space with a scalar decay per head.

h_t = exp(dt_t * A) h_{t-1} + B_t (dt_t x_t)^T, y_t = C_t^T h_t + D x_t, where x is the
(2x expanded) input split into heads, B and C are shared by all heads (one group), dt is a
softplus of a per-head projection, and x, B, C pass through a short causal convolution and
silu. The output is gated (y * silu(z)), RMS-normalised and projected back.

Training form: the SSD chunked algorithm. Inside a chunk, (C B^T * L) X with
L_ij = exp(b_i - b_j) for i >= j (b the cumulative log decay); across chunks the (N x P) state
per head is carried by a loop over chunks. Decoding form: the state plus the convolution window.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def causal_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise causal convolution over time, x (B, T, C), weight (C, K): the sum of K shifted
    copies (for K <= 4 faster than conv1d's depthwise kernels, forward and backward)."""
    kernel, t = weight.shape[1], x.shape[1]
    padded = F.pad(x, (0, 0, kernel - 1, 0))
    out = padded[:, :t] * weight[:, 0]
    for i in range(1, kernel):
        out = out + padded[:, i:i + t] * weight[:, i]
    return out


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, chunk_size: int = 64, expand: int = 2,
                 state_dim: Optional[int] = None, conv_size: int = 4, eps: float = 1e-6, **kw):
        super().__init__()
        inner = expand * hidden_size
        if inner % num_heads:
            raise ValueError(f"{expand} * hidden_size {hidden_size} is not divisible by "
                             f"num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = inner // num_heads  # P
        self.state_dim = state_dim or max(hidden_size // num_heads, 1)  # N
        self.inner = inner
        self.chunk_size = chunk_size
        self.conv_size = conv_size
        self.eps = eps
        conv_channels = inner + 2 * self.state_dim
        self.in_proj = nn.Linear(hidden_size, inner + conv_channels + num_heads, bias=False)
        self.conv_weight = nn.Parameter(torch.randn(conv_channels, conv_size) / conv_size ** 0.5)
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, num_heads)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), num_heads))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.D = nn.Parameter(torch.ones(num_heads))
        self.norm_weight = nn.Parameter(torch.ones(inner))
        self.out = nn.Linear(inner, hidden_size, bias=False)

    def _split(self, proj: torch.Tensor):
        conv_channels = self.inner + 2 * self.state_dim
        return proj[..., :self.inner], proj[..., self.inner:self.inner + conv_channels], \
            proj[..., self.inner + conv_channels:]

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        """Heads of x (B, H, T, P), shared B and C (B, 1, T, N), dt and log decay (B, H, T)."""
        b, t, _ = xbc.shape
        xbc = F.silu(xbc)
        xs = xbc[..., :self.inner].view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        bm = xbc[..., self.inner:self.inner + self.state_dim][:, None]
        cm = xbc[..., self.inner + self.state_dim:][:, None]
        dt = F.softplus(dt.float() + self.dt_bias.float()).transpose(1, 2)
        log_decay = -dt * self.A_log.float().exp()[:, None]
        return xs, bm, cm, dt, log_decay

    def _finish(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gate, RMS norm and project; y and z (B, T, inner)."""
        y = y * F.silu(z)
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.norm_weight
        return self.out(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c, h, p, nst = self.chunk_size, self.num_heads, self.head_dim, self.state_dim
        n = (t + c - 1) // c
        z, xbc, dt = self._split(self.in_proj(x))
        xs, bm, cm, dt, log_decay = self._ssm_inputs(causal_conv(xbc, self.conv_weight), dt)
        pad = n * c - t
        u = (xs * dt[..., None].to(xs.dtype))  # dt-scaled input, (B, H, T, P)
        u = F.pad(u, (0, 0, 0, pad)).view(b, h, n, c, p)
        bm = F.pad(bm, (0, 0, 0, pad)).view(b, 1, n, c, nst)
        cm = F.pad(cm, (0, 0, 0, pad)).view(b, 1, n, c, nst)
        cum = F.pad(log_decay, (0, pad)).view(b, h, n, c).cumsum(dim=-1)
        lower = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~lower, float("-inf")).exp()
        intra = ((cm @ bm.transpose(-1, -2)) * decay.to(u.dtype)) @ u  # (B, H, n, C, P)
        c_in = cm * cum.exp()[..., None].to(u.dtype)  # (B, H, n, C, N)
        b_out = bm * (cum[..., -1:] - cum).exp()[..., None].to(u.dtype)
        updates = b_out.transpose(-1, -2) @ u  # (B, H, n, N, P)
        chunk_decay = cum[..., -1].exp().to(u.dtype)  # (B, H, n)
        state = u.new_zeros(b, h, nst, p)
        before = []
        for j in range(n):
            before.append(state)
            state = chunk_decay[:, :, j, None, None] * state + updates[:, :, j]
        y = intra + c_in @ torch.stack(before, dim=2)
        y = y.reshape(b, h, n * c, p)[:, :, :t] + self.D[:, None, None].to(xs.dtype) * xs
        return self._finish(y.transpose(1, 2).reshape(b, t, self.inner), z)

    def step(self, x_t: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        """One token: x_t (B, D) -> y_t (B, D); state = (h (B, H, N, P), conv inputs (B, C, K-1))."""
        b, _ = x_t.shape
        z, xbc, dt = self._split(self.in_proj(x_t))
        if state is None:
            s = x_t.new_zeros(b, self.num_heads, self.state_dim, self.head_dim)
            window = x_t.new_zeros(b, xbc.shape[1], self.conv_size - 1)
        else:
            s, window = state
        window = torch.cat([window, xbc[:, :, None]], dim=2)
        mixed = (window * self.conv_weight).sum(dim=2)
        xs, bm, cm, dt, log_decay = self._ssm_inputs(mixed[:, None], dt[:, None])
        xs, bm, cm, dt, log_decay = xs[:, :, 0], bm[:, :, 0], cm[:, :, 0], dt[:, :, 0], log_decay[:, :, 0]
        u = xs * dt[..., None].to(xs.dtype)  # (B, H, P)
        s = log_decay.exp().to(s.dtype)[..., None, None] * s + bm[..., :, None] * u[..., None, :]
        y = (cm[..., None, :] @ s)[..., 0, :] + self.D[:, None].to(xs.dtype) * xs
        return self._finish(y.reshape(b, self.inner), z), (s, window[:, :, 1:])

    def state_size(self, seq_len: int) -> int:
        conv = (self.inner + 2 * self.state_dim) * (self.conv_size - 1)
        return self.num_heads * self.state_dim * self.head_dim + conv
