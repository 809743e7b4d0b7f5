"""DeltaNet (Schlag et al., 2021; chunked form of Yang et al., 2024): the delta rule.

S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, y_t = S_t^T q_t, with L2-normalised
silu features for q and k, a short causal convolution on q, k, v (kernel 4), beta from a
sigmoid, a per-head RMS norm on the output.

Training form: the chunked WY / UT-transform algorithm. Inside a chunk of C positions with
T = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta), the pseudo-values are
U' = T V - (T K) S, the outputs Q S + tril(Q K^T) U', and the state becomes S + K^T U'. The
triangular solve is done for all chunks at once; only the (d_k x d_v) state travels through a
loop over chunks. Exact (up to rounding) against the token-by-token recurrence in ``step``.
"""

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
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def _features(self, qkv: torch.Tensor, x: torch.Tensor):
        """q, k, v (B, H, T, d) and beta (B, H, T) from the convolved projections."""
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = F.silu(qkv).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        q = q / (q.norm(dim=-1, keepdim=True) + self.eps) * d ** -0.5
        k = k / (k.norm(dim=-1, keepdim=True) + self.eps)
        beta = torch.sigmoid(self.beta_proj(x)).transpose(1, 2)
        return q, k, v, beta

    def _finish(self, y: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        """Per-head RMS norm and output projection; y (B, T, H, d)."""
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.norm_weight
        return self.out(y.reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c, h, d = self.chunk_size, self.num_heads, self.head_dim
        n = (t + c - 1) // c
        q, k, v, beta = self._features(causal_conv(self.qkv(x), self.conv_weight), x)
        q, k, v = (F.pad(z, (0, 0, 0, n * c - t)).view(b, h, n, c, d) for z in (q, k, v))
        beta = F.pad(beta, (0, n * c - t)).view(b, h, n, c)
        strict = torch.ones(c, c, dtype=torch.bool, device=x.device).tril(-1)
        # the UT transform, in float32 (triangular solves have no bfloat16 kernels)
        kf, vf, bf = k.float(), v.float(), beta.float()[..., None]
        a = torch.eye(c, device=x.device) + ((bf * kf) @ kf.transpose(-1, -2)).masked_fill(~strict, 0.0)
        w = torch.linalg.solve_triangular(a, bf * kf, upper=False, unitriangular=True).to(q.dtype)
        u = torch.linalg.solve_triangular(a, bf * vf, upper=False, unitriangular=True).to(q.dtype)
        qk = (q @ k.transpose(-1, -2)).masked_fill(~(strict | torch.eye(c, dtype=torch.bool,
                                                                       device=x.device)), 0.0)
        state = q.new_zeros(b, h, d, d)
        outputs = []
        for j in range(n):
            pseudo = u[:, :, j] - w[:, :, j] @ state  # U' = U - W S
            outputs.append(q[:, :, j] @ state + qk[:, :, j] @ pseudo)
            state = state + k[:, :, j].transpose(-1, -2) @ pseudo
        y = torch.stack(outputs, dim=2).reshape(b, h, n * c, d)[:, :, :t]
        return self._finish(y.transpose(1, 2), x.shape)

    def step(self, x_t: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        """One token: x_t (B, D) -> y_t (B, D); state = (S (B, H, dk, dv), conv inputs (B, 3D, K-1))."""
        b, dim = x_t.shape
        proj = self.qkv(x_t)
        if state is None:
            s = x_t.new_zeros(b, self.num_heads, self.head_dim, self.head_dim)
            window = x_t.new_zeros(b, proj.shape[1], self.conv_size - 1)
        else:
            s, window = state
        window = torch.cat([window, proj[:, :, None]], dim=2)
        mixed = (window * self.conv_weight).sum(dim=2)
        q, k, v, beta = (z[:, :, 0] for z in self._features(mixed[:, None], x_t[:, None]))
        kv = (k[..., None, :] @ s)[..., 0, :]  # S^T k: (B, H, dv)
        s = s + k[..., :, None] * (beta[..., None] * (v - kv))[..., None, :]
        y = (q[..., None, :] @ s)[..., 0, :]
        return self._finish(y[:, None], (b, 1, dim))[:, 0], (s, window[:, :, 1:])

    def state_size(self, seq_len: int) -> int:
        conv = 3 * self.num_heads * self.head_dim * (self.conv_size - 1)
        return self.num_heads * self.head_dim * self.head_dim + conv
