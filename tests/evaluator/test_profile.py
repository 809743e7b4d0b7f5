"""Profile stage: throughput, latencies, state bytes, FLOPs and reference ratios are reported;
the timing-exponent fit recovers a known growth law and ignores unsaturated points."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluator.token_mixer.profile import ProfileOptions, run_profile, timing_exponent

CPU = torch.device("cpu")
SMALL = ProfileOptions(d_model=32, num_heads=2, train_tokens=512, train_seq_len=128,
                       prefill_lens=(32, 128), decode_contexts=(16, 64), decode_tokens=4,
                       warmup=1, repeats=3)


class Recurrent(nn.Module):
    """Exponential moving average with a recurrent step: state is one vector per sequence."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        idx = torch.arange(t, device=x.device, dtype=x.dtype)
        w = (0.5 ** (idx[:, None] - idx[None, :])).tril()
        return self.proj(w @ x)

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None):
        s = x_t if state is None else 0.5 * state + x_t
        return self.proj(s), s

    def state_size(self, seq_len: int) -> int:
        return self.proj.in_features


class Attention(nn.Module):
    """Causal softmax attention without a step method (decoded by recomputation)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.h = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)


class Sleeper(nn.Module):
    """Takes c * T^2 seconds: a known growth law for the exponent fit."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 13 / 52 / 210 ms at T = 256 / 512 / 1024: a loaded machine's millisecond or two of
        # overhead per call cannot bend the fitted exponent out of its tolerance
        time.sleep(2e-7 * x.shape[1] ** 2)
        return x * self.w


def test_profile_reports_costs_and_reference_ratios() -> None:
    m = run_profile(Recurrent, SMALL, CPU, torch.float32, seed=0, reference_make_mixer=Attention)
    assert m["params"] == 32 * 32 + 32 and m["ref_params"] == 3 * 32 * 32
    assert m["train_tokens_per_s"] > 0 and m["ref_train_tokens_per_s"] > 0
    assert m["train_tokens_per_s_ratio_vs_ref"] == pytest.approx(
        m["train_tokens_per_s"] / m["ref_train_tokens_per_s"])
    for t in (32, 128):
        assert m[f"prefill_ms_T{t}"] > 0 and f"prefill_ms_T{t}_ratio_vs_ref" in m
    for c in (16, 64):
        assert m[f"decode_ms_ctx{c}"] > 0
        assert m[f"decode_state_bytes_ctx{c}"] == 32 * 4  # one fp32 vector per sequence
        assert m[f"state_bytes_ctx{c}"] == 32 * 4
    assert m["decode_recompute"] == 0.0 and m["ref_decode_recompute"] == 1.0
    assert "ref_decode_state_bytes_ctx16" not in m  # no step, no state
    assert m["state_bytes"] == 32 * 4
    # forward FLOPs per token: the T x T weight matmul (2 T d per token) + the projection (2 d^2)
    assert m["flops_per_token"] == pytest.approx(2 * 128 * 32 + 2 * 32 * 32)
    assert m["train_tflops"] > 0 and "peak_mem_mb" not in m  # peak memory is CUDA-only
    assert m["profile_reduced"] == 0.0


def test_profile_in_bfloat16_scales_state_bytes() -> None:
    m = run_profile(Recurrent, SMALL, CPU, torch.bfloat16, seed=0)
    assert m["state_bytes"] == 32 * 2 and m["train_tokens_per_s"] > 0
    assert not any(k.endswith("_ratio_vs_ref") for k in m)


def test_timing_exponent_recovers_quadratic_growth() -> None:
    fit = timing_exponent(Sleeper, [256, 512, 1024], CPU, torch.float32, batch=1, d_model=8,
                          num_heads=1, warmup=1, repeats=3)
    assert fit.saturated and fit.used == (256, 512, 1024)
    assert 1.7 < fit.exponent < 2.2, fit
    # points under min_ms are left out of the fit (launch-bound region on a GPU)
    part = timing_exponent(Sleeper, [64, 512, 1024], CPU, torch.float32, batch=1, d_model=8,
                           num_heads=1, min_ms=40.0, warmup=0, repeats=3)
    assert part.used == (512, 1024) and part.saturated
    with pytest.raises(ValueError, match="two sequence lengths"):
        timing_exponent(Sleeper, [64], CPU, torch.float32, batch=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_on_cuda_reports_peak_memory() -> None:
    m = run_profile(Recurrent, SMALL, torch.device("cuda"), torch.bfloat16, seed=0,
                    reference_make_mixer=Attention)
    assert m["peak_mem_mb"] > 0 and m["ref_peak_mem_mb"] > 0 and m["train_tokens_per_s"] > 0


def test_timing_exponent_grows_the_batch_until_points_saturate() -> None:
    batches: set[int] = set()

    class BatchSleeper(Sleeper):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # c * B * T: saturates with B
            batches.add(x.shape[0])
            time.sleep(20e-6 * x.shape[0] * x.shape[1])
            return x * self.w

    # sleeps long enough that a loaded machine's overhead per call (a millisecond or two on
    # 2 busy cores) cannot move a point across min_ms: batch 4 sleeps 10.2 ms, batch 8 20.5 ms
    fit = timing_exponent(BatchSleeper, [128, 256], CPU, torch.float32, batch=1, d_model=8,
                          num_heads=1, min_ms=15.0, max_batch=64, warmup=0, repeats=3)
    assert fit.batch == 8 and fit.saturated  # 1 x 128 x 20us = 2.6 ms -> 8 x 128 -> 20.5 ms
    assert batches == {1, 8}  # straight from 1 to 8 (time proportional to the batch), no 2 or 4
    assert 0.8 < fit.exponent < 1.2
