"""Profile stage of the token-mixer task: what a mixer costs on the target device.

Everything here measures the candidate mixer on its own (one layer of width ``d_model``, no
embedding / MLP / head), so the numbers are the mixer's and nothing else's:

- ``params``: parameters of the mixer.
- ``train_tokens_per_s``: forward + backward of one mixer layer at a fixed number of tokens
  per batch (``train_tokens`` = batch x ``train_seq_len``); ``train_step_ms`` and its relative
  inter-quartile range ``train_step_ms_rel_iqr``.
- ``prefill_ms_T{T}``: inference forward latency at batch ``prefill_batch`` for each T.
- ``decode_ms_ctx{C}``: per-token latency of ``step(x_t, state)`` after a context of C tokens
  (the state is built by stepping through the context, untimed). A mixer without ``step`` is
  decoded by recomputing the forward over C + 1 tokens, and ``decode_recompute`` is 1.
- ``decode_state_bytes_ctx{C}``: bytes of the tensors in the state ``step`` returned, per
  sequence; ``state_bytes`` / ``state_bytes_ctx{C}``: the mixer's declared ``state_size(T)``
  times the element size of the campaign precision.
- ``peak_mem_mb`` (CUDA only): peak memory allocated by one training step above what was
  allocated before it (``torch.cuda.max_memory_allocated``). Not reported on CPU: the process
  RSS high-water mark cannot isolate one step, and tracemalloc does not see torch's allocator.
- ``flops_per_token``: forward FLOPs per token at ``train_seq_len`` counted by
  ``torch.utils.flop_counter`` on the meta device (matmul-class ops; elementwise ops are not
  counted), and ``train_tflops`` = 3 x that x ``train_tokens_per_s`` / 1e12.

Timing follows STYLE.md: warm-up calls, CUDA events with synchronisation on GPU
(``time.perf_counter`` on CPU), medians over repeats. With ``reference_make_mixer`` the same
measurements are taken for a reference mixer in the same run, interleaved with the
candidate's, and reported as ``ref_*`` plus ``*_ratio_vs_ref`` (candidate / reference).

``timing_exponent`` fits the log-log slope of forward(+backward) time against T on the points
that saturate the device (complexity on GPU).

Precision: as everywhere in this package, parameters stay float32 and reduced precision is
applied with ``torch.autocast``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from evaluator.token_mixer.model import (
    MixerFactory, autocast_context, seeded, synchronize, use_sdpa_order, wait_for_compilers,
)


class ProfileOptions(BaseModel):
    """Sizes of the profile. The defaults are the rung-0 CPU setting (about a second)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = Field(default=64, gt=0)
    num_heads: int = Field(default=2, gt=0)
    train_tokens: int = Field(default=2048, gt=0)  # tokens per forward+backward batch
    train_seq_len: int = Field(default=256, gt=0)
    prefill_lens: tuple[int, ...] = (64, 256)
    prefill_batch: int = Field(default=1, gt=0)
    decode_contexts: tuple[int, ...] = (64, 256)
    decode_batch: int = Field(default=1, gt=0)
    decode_tokens: int = Field(default=8, gt=0)  # timed steps per repeat
    state_seq_len: int = Field(default=1024, gt=0)  # T at which ``state_bytes`` is reported
    timing_seq_lens: tuple[int, ...] = ()  # when set: ``timing_exponent`` at these T
    timing_batch: int = Field(default=8, gt=0)  # starting batch; doubled until saturated
    # width of the layer timed for the exponent (None: d_model). A narrow layer at long T lets
    # the T^2 term of attention dominate the T-linear projections, as the exponent must show.
    timing_d_model: int | None = Field(default=None, gt=0)
    timing_num_heads: int | None = Field(default=None, gt=0)
    timing_warmup: int = Field(default=2, ge=0)  # per T of the exponent fit
    timing_repeats: int = Field(default=5, gt=0)
    count_flops: bool = True
    warmup: int = Field(default=2, ge=0)
    repeats: int = Field(default=5, gt=0)
    reduced: bool = False

    @property
    def train_batch(self) -> int:
        return max(1, self.train_tokens // self.train_seq_len)

    @classmethod
    def rung1(cls, **overrides: Any) -> ProfileOptions:
        """GPU setting: a 1024-wide layer, 64k tokens per training batch, prefill up to 8k,
        decode after 512 and 2048 tokens (the state is built one ``step`` at a time, ~1 ms a
        token for the chunked seeds on an H100, so longer contexts cost seconds), and the
        timing exponent of a 256-wide layer over T = 2k..16k at batch 4.

        Measured on one H100 (bf16) with this setting (batch grown until saturated): softmax
        attention 1.46 (flash attention; its T-linear projections still weigh at T <= 16k), a
        masked-quadratic "linear" attention 1.82 (out of memory at 16k, fitted on 2k-8k),
        linear attention 0.98, DeltaNet 0.98, Mamba2-SSD 0.92, sliding window 0.97, Gated
        DeltaNet 0.75. With the 1024-wide layer over T = 1k..8k and no batch growth, softmax
        attention gave 0.78-0.83 (launch-bound, projection-dominated points)."""
        base: dict[str, Any] = dict(
            d_model=1024, num_heads=8, train_tokens=65_536, train_seq_len=2048,
            prefill_lens=(512, 2048, 8192), decode_contexts=(512, 2048), decode_batch=8,
            decode_tokens=32, state_seq_len=8192, timing_seq_lens=(2048, 4096, 8192, 16384),
            timing_batch=4, timing_d_model=256, timing_num_heads=2, warmup=2, repeats=5,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def cpu_fallback(cls, **overrides: Any) -> ProfileOptions:
        """Rung 1 reduced for a CPU (reported as ``profile_reduced=1``)."""
        base: dict[str, Any] = dict(
            d_model=128, num_heads=2, train_tokens=4096, train_seq_len=512,
            prefill_lens=(128, 512, 1024), decode_contexts=(128, 512), decode_tokens=8,
            state_seq_len=1024, repeats=5, reduced=True,
        )
        return cls(**{**base, **overrides})


# ----------------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall time of ``fn`` in milliseconds, ``repeats`` times after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000.0 * (time.perf_counter() - t0))
    return times


def _rel_iqr(times: list[float]) -> float:
    if len(times) < 4:
        return (max(times) - min(times)) / statistics.median(times)
    q = statistics.quantiles(times, n=4)
    return (q[2] - q[0]) / statistics.median(times)


def _build(make_mixer: MixerFactory, d_model: int, num_heads: int, device: torch.device,
           seed: int) -> nn.Module:
    with seeded(seed, device):
        return make_mixer(d_model, num_heads).to(device)


def _train_step_fn(
    mixer: nn.Module, batch: int, seq_len: int, d_model: int, device: torch.device,
    dtype: torch.dtype, backward: bool = True,
) -> Callable[[], None]:
    x = _randn(0, device, batch, seq_len, d_model).requires_grad_(backward)
    g = _randn(1, device, batch, seq_len, d_model)

    def step() -> None:
        if not backward:
            with torch.no_grad(), autocast_context(device, dtype):
                mixer(x)
            return
        for p in mixer.parameters():
            p.grad = None
        x.grad = None
        with autocast_context(device, dtype):
            y = mixer(x)
        y.backward(g.to(y.dtype))

    return step


def _randn(seed: int, device: torch.device, *shape: int) -> torch.Tensor:
    """Standard normal inputs drawn on ``device`` itself: drawn on the CPU and copied, the
    timing exponent's largest batch (64 x 16k x 256) took seconds of host time per point while
    the GPU idled (rung-1 profile of softmax attention on an H200: 8.8 of its 21 s,
    ``gpu_rung1.py cost --where``)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=gen, device=device)


def _state_nbytes(state: object) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(_state_nbytes(s) for s in state)
    if isinstance(state, dict):
        return sum(_state_nbytes(s) for s in state.values())
    return 0


class _Decoder:
    """Decode latency of one mixer after growing contexts. The state is built once, one
    ``step`` at a time through a shared random input, and each context continues from the
    previous one's state instead of starting over (the build is launch-bound on a GPU: ~1 ms
    a token for the chunked seeds, most of the profile stage's decode time)."""

    def __init__(self, mixer: nn.Module, options: ProfileOptions, device: torch.device,
                 dtype: torch.dtype):
        self.mixer, self.options, self.device, self.dtype = mixer, options, device, dtype
        longest = max(options.decode_contexts) + options.decode_tokens
        self.x = _randn(2, device, options.decode_batch, longest, options.d_model)
        self.state: object = None
        self.built_to = 0

    def measure(self, context: int) -> tuple[float, float | None]:
        """(median per-token decode latency in ms after ``context`` tokens, state bytes per
        sequence or None); contexts must come in increasing order."""
        o, x, mixer = self.options, self.x, self.mixer
        step = getattr(mixer, "step", None)
        with torch.no_grad(), autocast_context(self.device, self.dtype):
            if not callable(step):
                def recompute() -> None:
                    mixer(x[:, : context + 1])
                times = time_ms(recompute, self.device, o.warmup, o.repeats)
                return statistics.median(times), None
            if context < self.built_to:
                raise ValueError(f"decode contexts must increase: {context} after {self.built_to}")
            for i in range(self.built_to, context):
                _, self.state = step(x[:, i], self.state)
            self.built_to = context
            built = self.state

            def decode() -> None:
                s = built
                for i in range(o.decode_tokens):
                    _, s = step(x[:, context + i], s)

            times = time_ms(decode, self.device, o.warmup, o.repeats)
        return statistics.median(times) / o.decode_tokens, _state_nbytes(built) / o.decode_batch


def _flops_per_token(make_mixer: MixerFactory, options: ProfileOptions, seed: int) -> float:
    """Forward FLOPs per token on the meta device (no memory, no time); 1 sequence."""
    t = options.train_seq_len
    with seeded(seed, torch.device("cpu")), torch.device("meta"):
        mixer = make_mixer(options.d_model, options.num_heads)
    x = torch.empty(1, t, options.d_model, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        mixer(x)
    return counter.get_total_flops() / t


@dataclass(frozen=True)
class _Timings:
    train_ms: list[float]
    prefill_ms: dict[int, float]
    decode_ms: dict[int, float]
    decode_state_bytes: dict[int, float]
    recompute: bool
    peak_mem_mb: float | None


def _peak_train_mb(train: Callable[[], None], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    train()  # warm allocator caches first, then measure one clean step
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    train()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _measure(
    mixers: list[nn.Module], options: ProfileOptions, device: torch.device, dtype: torch.dtype,
    phase_s: dict[str, float],
) -> list[_Timings]:
    """Every measurement for every mixer; the mixers alternate measurement by measurement so
    that drifting clocks or a busy neighbour affect candidate and reference alike. Adds the
    wall time of each phase to ``phase_s``."""
    d, w, r = options.d_model, options.warmup, options.repeats
    t0 = time.perf_counter()
    train_ms, peak = [], []
    for m in mixers:
        m.train()
        train = _train_step_fn(m, options.train_batch, options.train_seq_len, d, device, dtype)
        peak.append(_peak_train_mb(train, device))
        train_ms.append(time_ms(train, device, w, r))
    prefill: list[dict[int, float]] = [{} for _ in mixers]
    decode: list[dict[int, float]] = [{} for _ in mixers]
    state_bytes: list[dict[int, float]] = [{} for _ in mixers]
    for m in mixers:
        m.eval()
    t1 = time.perf_counter()
    for t in options.prefill_lens:
        for i, m in enumerate(mixers):
            fwd = _train_step_fn(m, options.prefill_batch, t, d, device, dtype, backward=False)
            prefill[i][t] = statistics.median(time_ms(fwd, device, w, r))
    t2 = time.perf_counter()
    decoders = [_Decoder(m, options, device, dtype) for m in mixers]
    for c in sorted(options.decode_contexts):
        for i, decoder in enumerate(decoders):
            decode[i][c], nbytes = decoder.measure(c)
            if nbytes is not None:
                state_bytes[i][c] = nbytes
    for m in mixers:
        m.train()
    t3 = time.perf_counter()
    phase_s.update(profile_train_s=t1 - t0, profile_prefill_s=t2 - t1, profile_decode_s=t3 - t2)
    return [
        _Timings(train_ms[i], prefill[i], decode[i], state_bytes[i],
                 not callable(getattr(m, "step", None)), peak[i])
        for i, m in enumerate(mixers)
    ]


def run_profile(
    make_mixer: MixerFactory, options: ProfileOptions, device: torch.device, dtype: torch.dtype,
    seed: int, reference_make_mixer: MixerFactory | None = None,
) -> dict[str, float]:
    """Measure the mixer (and the reference mixer, when given, in the same run)."""
    wait_for_compilers()  # a compile still at work on another thread would skew the timings
    use_sdpa_order(False, device)  # SDPA timed as torch runs it (after a training stage's order)
    t0 = time.perf_counter()
    mixer = _build(make_mixer, options.d_model, options.num_heads, device, seed)
    metrics: dict[str, float] = {
        "params": float(sum(p.numel() for p in mixer.parameters())),
        "profile_reduced": float(options.reduced),
    }
    ref = None
    if reference_make_mixer is not None:
        ref = _build(reference_make_mixer, options.d_model, options.num_heads, device, seed)
        metrics["ref_params"] = float(sum(p.numel() for p in ref.parameters()))
    phase_s: dict[str, float] = {}
    timings = _measure([mixer] if ref is None else [mixer, ref], options, device, dtype, phase_s)
    cand, ref_t = timings[0], (timings[1] if ref is not None else None)

    tokens = options.train_batch * options.train_seq_len
    metrics.update(_report(cand, tokens, ""))
    if ref_t is not None:
        ref_metrics = _report(ref_t, tokens, "ref_")
        metrics.update(ref_metrics)
        for key, value in list(metrics.items()):
            if key.startswith("ref_") or key == "params":
                continue
            ref_value = ref_metrics.get("ref_" + key)
            timed = key.startswith(("train_tokens_per_s", "prefill_ms_T", "decode_ms_ctx"))
            if timed and ref_value:
                metrics[f"{key}_ratio_vs_ref"] = value / ref_value

    elem = torch.empty((), dtype=dtype).element_size()
    state_size = getattr(mixer, "state_size", None)
    if callable(state_size):
        metrics["state_bytes"] = float(state_size(options.state_seq_len)) * elem
        for c in options.decode_contexts:
            metrics[f"state_bytes_ctx{c}"] = float(state_size(c)) * elem
    if options.count_flops:
        try:
            flops = _flops_per_token(make_mixer, options, seed)
        except Exception:  # a mixer that cannot run on meta: count on the real device instead
            flops = _flops_real(mixer, options, device)
        metrics["flops_per_token"] = flops
        metrics["train_tflops"] = 3.0 * flops * metrics["train_tokens_per_s"] / 1e12
    if options.timing_seq_lens:
        t_fit = time.perf_counter()
        fit = timing_exponent(make_mixer, options.timing_seq_lens, device, dtype,
                              options.timing_batch, d_model=options.timing_d_model or options.d_model,
                              num_heads=options.timing_num_heads or options.num_heads,
                              warmup=options.timing_warmup, repeats=options.timing_repeats, seed=seed)
        metrics["timing_exponent"] = fit.exponent
        metrics["timing_saturated"] = float(fit.saturated)
        metrics["timing_batch"] = float(fit.batch)
        phase_s["profile_exponent_s"] = time.perf_counter() - t_fit
    metrics.update(phase_s)  # where the stage's time went (candidate and reference together)
    metrics["profile_s"] = time.perf_counter() - t0
    return metrics


def _flops_real(mixer: nn.Module, options: ProfileOptions, device: torch.device) -> float:
    t = options.train_seq_len
    x = torch.randn(1, t, options.d_model, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        mixer(x)
    return counter.get_total_flops() / t


def _report(t: _Timings, tokens: int, prefix: str) -> dict[str, float]:
    train_ms = statistics.median(t.train_ms)
    out = {
        f"{prefix}train_tokens_per_s": tokens / (train_ms / 1000.0),
        f"{prefix}train_step_ms": train_ms,
        f"{prefix}train_step_ms_rel_iqr": _rel_iqr(t.train_ms),
        f"{prefix}decode_recompute": float(t.recompute),
    }
    out.update({f"{prefix}prefill_ms_T{k}": v for k, v in t.prefill_ms.items()})
    out.update({f"{prefix}decode_ms_ctx{k}": v for k, v in t.decode_ms.items()})
    out.update({f"{prefix}decode_state_bytes_ctx{k}": v for k, v in t.decode_state_bytes.items()})
    if t.peak_mem_mb is not None:
        out[f"{prefix}peak_mem_mb"] = t.peak_mem_mb
    return out


# ----------------------------------------------------------------------------------- exponent


@dataclass(frozen=True)
class TimingFit:
    exponent: float  # slope of log(time) against log(T) on the points used
    seq_lens: tuple[int, ...]  # the T measured (a T that ran out of memory ends the list)
    times_ms: tuple[float, ...]  # median time at every T measured
    used: tuple[int, ...]  # the T whose points entered the fit
    saturated: bool  # False: fewer than two points reached ``min_ms``; the two largest were used
    batch: int  # the batch the points were measured at


def _median_ms(make_step: Callable[[int, int], Callable[[], None]], batch: int, t: int,
               device: torch.device, warmup: int, repeats: int) -> float:
    return statistics.median(time_ms(make_step(batch, t), device, warmup, repeats))


def timing_exponent(
    make_mixer: MixerFactory, seq_lens: tuple[int, ...] | list[int], device: torch.device,
    dtype: torch.dtype, batch: int, *, d_model: int = 1024, num_heads: int = 8,
    backward: bool = True, min_ms: float | None = None, max_batch: int | None = None,
    warmup: int = 3, repeats: int = 7, seed: int = 0,
) -> TimingFit:
    """Fit time ~ T^k for forward(+backward) of one mixer layer at a batch that saturates the
    device.

    ``batch`` is the starting batch; it grows by powers of two (up to ``max_batch``, default
    16x the start; straight to the factor that would reach ``min_ms`` if time were proportional
    to the batch) until the shortest T takes at least ``min_ms`` (default 10 ms on CUDA: below
    a few ms a small layer is launch-bound and its time does not grow with the work, measured
    on an H100; 0 on CPU). Only points of at least ``min_ms`` enter the fit; with fewer than
    two, the two largest T are used and the fit is marked unsaturated. A T that runs out of GPU
    memory ends the measurement at the T before it.
    """
    lens = tuple(sorted(set(int(t) for t in seq_lens)))
    if len(lens) < 2:
        raise ValueError(f"timing_exponent needs at least two sequence lengths, got {lens}")
    if min_ms is None:
        min_ms = 10.0 if device.type == "cuda" else 0.0
    max_batch = max_batch or 16 * batch
    mixer = _build(make_mixer, d_model, num_heads, device, seed)
    mixer.train(backward)

    def make_step(b: int, t: int) -> Callable[[], None]:
        return _train_step_fn(mixer, b, t, d_model, device, dtype, backward=backward)

    first = _median_ms(make_step, batch, lens[0], device, warmup, repeats)
    while first < min_ms and 2 * batch <= max_batch:
        # straight to the power-of-two multiple that reaches min_ms if the time grew in
        # proportion to the batch; below saturation it grows slower, so this lands on the batch
        # repeated doubling would reach, or beyond it (each batch measured is a new shape, whose
        # first calls the GPU idles through)
        grow = 2 ** max(1, math.ceil(math.log2(min_ms / max(first, 1e-6))))
        while batch * grow > max_batch:
            grow //= 2
        try:
            first = _median_ms(make_step, grow * batch, lens[0], device, warmup, repeats)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        batch *= grow
    measured: list[tuple[int, float]] = [(lens[0], first)]
    for t in lens[1:]:
        try:
            measured.append((t, _median_ms(make_step, batch, t, device, warmup, repeats)))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
    if len(measured) < 2:
        raise RuntimeError(f"timing_exponent: out of memory beyond T={lens[0]} at batch {batch}")
    used = [(t, ms) for t, ms in measured if ms >= min_ms]
    saturated = len(used) >= 2
    if not saturated:
        used = measured[-2:]
    xs = [math.log(t) for t, _ in used]
    ys = [math.log(ms) for _, ms in used]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return TimingFit(slope, tuple(t for t, _ in measured), tuple(ms for _, ms in measured),
                     tuple(t for t, _ in used), saturated, batch)
