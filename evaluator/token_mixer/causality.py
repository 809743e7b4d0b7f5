"""The causality stage: measured, never judged by reading the code.

Three tests, each run in float32 and again at the declared precision when that is lower:

- gradient: d y[:, :t+1] / d x[:, t+1:] must be exactly zero, at positions around the chunk
  boundaries of every usual chunk size (16, 32, 64) and next to the end of the sequence;
- perturbation: replacing x[:, t+1:] with other values must not move y[:, :t+1] beyond a
  relative tolerance (catches leaks that autograd cannot see, e.g. through ``.detach()``);
- prefix: the outputs for x[:, :t] must equal the first t outputs for x, so no position
  depends on the total sequence length (normalising by T, by a mean over the whole sequence,
  an FFT sized by T, ...).

ASI-Arch released a "linear" layer that leaked future tokens through a frequency-domain filter
and four whose outputs depended on the total length, all passed by its LLM code reviewer;
these tests catch both kinds (see tests/fixtures/mixers/).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from evaluator.token_mixer.checks import (
    MixerFactory, build_mixer, candidate_call, dtype_name, forward, rel_error, strict_float32,
    tolerance,
)
from evaluator.types import FailureKind, StageFailure

# last positions of chunks (and the first positions after them) for chunk sizes 16, 32, 64
_BOUNDARIES = (0, 1, 15, 16, 31, 32, 47, 63, 64, 65, 95, 127, 128)


class CausalityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(default=64, gt=0)
    num_heads: int = Field(default=4, gt=0)
    batch_size: int = Field(default=2, gt=0)
    seq_len: int = Field(default=144, gt=4)
    # (float32, low precision) relative tolerances
    perturb_tolerance: tuple[float, float] = (1e-5, 1e-2)
    prefix_tolerance: tuple[float, float] = (1e-4, 3e-2)
    prefix_lengths: tuple[int, ...] = (1, 2, 17, 64, 65, 100)
    # also run the tests in float32 when the declared precision is lower (tests turn it off
    # to show the low-precision pass catches leaks on its own)
    include_float32: bool = True


def _positions(seq_len: int) -> list[int]:
    tail = [seq_len - 3, seq_len - 2]  # the t = T-1 region (t = T-1 itself has no future)
    return sorted({t for t in (*_BOUNDARIES, *tail) if 0 <= t <= seq_len - 2})


def run_causality(make_mixer: MixerFactory, options: CausalityOptions, device: torch.device,
                  dtype: torch.dtype, seed: int) -> dict[str, float]:
    """All three tests in float32, then at ``dtype`` when it is not float32."""
    module = build_mixer(make_mixer, options.hidden_size, options.num_heads, device, seed)
    metrics: dict[str, float] = {}
    precisions = [dtype]
    if dtype != torch.float32 and options.include_float32:
        precisions.insert(0, torch.float32)
    with strict_float32():
        for precision in precisions:
            suffix = "" if precision == torch.float32 else f"_{dtype_name(precision)}"
            _check_one_precision(module, options, device, precision, seed, suffix, metrics)
    return metrics


def _check_one_precision(module: torch.nn.Module, o: CausalityOptions, device: torch.device,
                         dtype: torch.dtype, seed: int, suffix: str, metrics: dict[str, float]) -> None:
    where = f"at {dtype_name(dtype)}"
    gen = torch.Generator(device="cpu").manual_seed(seed + 11)
    x = torch.randn(o.batch_size, o.seq_len, o.hidden_size, generator=gen).to(device)

    # gradient test: one backward per position t, cotangent on every output up to t
    xg = x.clone().requires_grad_(True)
    y = forward(module, xg, dtype, seed, f"causality gradient test {where}")
    leak = 0.0
    for t in _positions(o.seq_len):
        cot = torch.randn(o.batch_size, t + 1, o.hidden_size, generator=gen).to(device=device, dtype=y.dtype)
        with candidate_call(f"backward in the causality gradient test (t={t}) {where}"):
            (grad,) = torch.autograd.grad((y[:, : t + 1] * cot).sum(), xg, retain_graph=True,
                                          allow_unused=True)
        if grad is None:
            continue
        future = grad[:, t + 1:].detach()
        nonzero = future != 0  # NaN counts as a leak too
        if nonzero.any():
            per_pos = nonzero.any(dim=(0, 2))
            first = t + 1 + int(torch.nonzero(per_pos)[0].item())
            size = future.float().abs().nan_to_num(nan=float("inf")).max().item()
            metrics[f"causality_grad_leak{suffix}"] = size
            raise StageFailure(FailureKind.CAUSALITY,
                               f"gradient test {where}: outputs at positions <= {t} depend on the "
                               f"input at position {first} (gradient {size:.3g}, must be exactly 0); "
                               f"T={o.seq_len}", metrics)
    metrics[f"causality_grad_leak{suffix}"] = leak
    del y, xg

    y = forward(module, x, dtype, seed, f"causality reference {where}").detach()

    # perturbation test
    tol = tolerance(dtype, *o.perturb_tolerance)
    worst = 0.0
    with torch.no_grad():
        for t in _positions(o.seq_len)[::2]:
            other = x.clone()
            other[:, t + 1:] = 3.0 * torch.randn(o.batch_size, o.seq_len - t - 1, o.hidden_size,
                                                 generator=gen).to(device)
            y_other = forward(module, other, dtype, seed, f"causality perturbation test {where}")
            err = rel_error(y_other[:, : t + 1], y[:, : t + 1])
            worst = max(worst, err)
            if not err <= tol:
                metrics[f"causality_perturb_rel{suffix}"] = err
                raise StageFailure(FailureKind.CAUSALITY,
                                   f"perturbation test {where}: changing the inputs after position "
                                   f"{t} changed the outputs at positions <= {t} by {err:.3g} "
                                   f"(relative, tolerance {tol:g}); T={o.seq_len}", metrics)
    metrics[f"causality_perturb_rel{suffix}"] = worst

    # prefix test
    tol = tolerance(dtype, *o.prefix_tolerance)
    worst = 0.0
    with torch.no_grad():
        for length in sorted({n for n in (*o.prefix_lengths, o.seq_len - 1) if 0 < n < o.seq_len}):
            y_prefix = forward(module, x[:, :length].contiguous(), dtype, seed,
                               f"causality prefix test {where}")
            err = rel_error(y_prefix, y[:, :length])
            worst = max(worst, err)
            if not err <= tol:
                metrics[f"causality_prefix_rel{suffix}"] = err
                raise StageFailure(FailureKind.CAUSALITY,
                                   f"prefix test {where}: the outputs for the first {length} inputs "
                                   f"alone differ from the first {length} outputs of the full "
                                   f"length-{o.seq_len} sequence by {err:.3g} (relative, tolerance "
                                   f"{tol:g}): outputs depend on the total sequence length", metrics)
    metrics[f"causality_prefix_rel{suffix}"] = worst
