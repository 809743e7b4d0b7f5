"""Gated DeltaNet (Yang, Kautz and Hatamizadeh, 2024): the delta rule with a scalar decay.

S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T, y_t = S_t^T q_t, with
alpha_t = exp(-softplus(a x_t + dt_bias) * exp(A_log)) per head (Mamba2's parameterisation),
L2-normalised silu features, a short causal convolution (kernel 4), and a per-head RMS norm
with a swish output gate.

Training form: the chunked WY / UT transform with decay. With Gamma_i the cumulative decay
inside a chunk and D_ij = Gamma_i / Gamma_j (i >= j, <= 1),
T = (I + tril(diag(beta) (K K^T * D), -1))^{-1} diag(beta), U' = T V - T diag(Gamma) K S,
outputs diag(Gamma) Q S + tril(Q K^T * D) U', and the state becomes
Gamma_C S + (K * Gamma_C / Gamma)^T U'. Exact against the recurrence in ``step``.
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
    def __init__(self, hidden_size: int, num_heads: int, chunk_size: int = 64, conv_size: int = 4,
                 eps: float = 1e-6, **kw):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.chunk_size = chunk_size
        self.conv_size = conv_size
        self.eps = eps
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.conv_weight = nn.Parameter(torch.randn(3 * hidden_size, conv_size) / conv_size ** 0.5)
        self.beta_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        # decay rates spread over heads as in Mamba2: A in [1, 16], dt in [1e-3, 1e-1]
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, num_heads)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), num_heads))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.g_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def _features(self, qkv: torch.Tensor, x: torch.Tensor):
        """q, k, v (B, H, T, d), beta and log alpha (B, H, T) from the convolved projections."""
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = F.silu(qkv).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        q = q / (q.norm(dim=-1, keepdim=True) + self.eps) * d ** -0.5
        k = k / (k.norm(dim=-1, keepdim=True) + self.eps)
        beta = torch.sigmoid(self.beta_proj(x)).transpose(1, 2)
        log_alpha = -F.softplus(self.a_proj(x).float() + self.dt_bias.float()) * self.A_log.float().exp()
        return q, k, v, beta, log_alpha.transpose(1, 2)

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-head RMS norm, swish gate and output projection; y (B, T, H, d), x (B, T, D)."""
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.norm_weight
        return self.out(y.reshape(x.shape) * F.silu(self.g_proj(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c, h, d = self.chunk_size, self.num_heads, self.head_dim
        n = (t + c - 1) // c
        q, k, v, beta, log_alpha = self._features(causal_conv(self.qkv(x), self.conv_weight), x)
        q, k, v = (F.pad(z, (0, 0, 0, n * c - t)).view(b, h, n, c, d) for z in (q, k, v))
        beta = F.pad(beta, (0, n * c - t)).view(b, h, n, c)
        cum = F.pad(log_alpha, (0, n * c - t)).view(b, h, n, c).cumsum(dim=-1)  # log Gamma_i
        lower = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        strict = lower.tril(-1)
        decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~lower, float("-inf")).exp()
        gamma = cum.exp()[..., None]  # (B, H, n, C, 1)
        gamma_last = cum[..., -1:].exp()[..., None]  # (B, H, n, 1, 1)
        to_end = (cum[..., -1:] - cum).exp()[..., None]  # Gamma_C / Gamma_j
        # the UT transform, in float32 (triangular solves have no bfloat16 kernels)
        kf, vf, bf = k.float(), v.float(), beta.float()[..., None]
        kk = (bf * kf) @ kf.transpose(-1, -2) * decay  # beta_i (k_i . k_j) Gamma_i / Gamma_j
        a = torch.eye(c, device=x.device) + kk.masked_fill(~strict, 0.0)
        w = torch.linalg.solve_triangular(a, bf * gamma * kf, upper=False, unitriangular=True)
        u = torch.linalg.solve_triangular(a, bf * vf, upper=False, unitriangular=True)
        w, u = w.to(q.dtype), u.to(q.dtype)
        qk = (q @ k.transpose(-1, -2)) * decay.to(q.dtype)
        q_in = q * gamma.to(q.dtype)
        k_out = k * to_end.to(k.dtype)
        gamma_last = gamma_last.to(q.dtype)
        state = q.new_zeros(b, h, d, d)
        outputs = []
        for j in range(n):
            pseudo = u[:, :, j] - w[:, :, j] @ state
            outputs.append(q_in[:, :, j] @ state + qk[:, :, j] @ pseudo)
            state = gamma_last[:, :, j] * state + k_out[:, :, j].transpose(-1, -2) @ pseudo
        y = torch.stack(outputs, dim=2).reshape(b, h, n * c, d)[:, :, :t]
        return self._finish(y.transpose(1, 2), x)

    def step(self, x_t: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        """One token: x_t (B, D) -> y_t (B, D); state = (S (B, H, dk, dv), conv inputs (B, 3D, K-1))."""
        b, _ = x_t.shape
        proj = self.qkv(x_t)
        if state is None:
            s = x_t.new_zeros(b, self.num_heads, self.head_dim, self.head_dim)
            window = x_t.new_zeros(b, proj.shape[1], self.conv_size - 1)
        else:
            s, window = state
        window = torch.cat([window, proj[:, :, None]], dim=2)
        mixed = (window * self.conv_weight).sum(dim=2)
        q, k, v, beta, log_alpha = (z[:, :, 0] for z in self._features(mixed[:, None], x_t[:, None]))
        s = log_alpha.exp().to(s.dtype)[..., None, None] * s
        kv = (k[..., None, :] @ s)[..., 0, :]
        s = s + k[..., :, None] * (beta[..., None] * (v - kv))[..., None, :]
        y = (q[..., None, :] @ s)[..., 0, :]
        return self._finish(y[:, None], x_t[:, None])[:, 0], (s, window[:, :, 1:])

    def state_size(self, seq_len: int) -> int:
        conv = 3 * self.num_heads * self.head_dim * (self.conv_size - 1)
        return self.num_heads * self.head_dim * self.head_dim + conv
