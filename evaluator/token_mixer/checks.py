"""Measured correctness checks of a candidate token mixer: conformance and recurrent agreement,
plus the helpers every check module of the task shares (building the mixer, calling it safely,
relative errors, the dtype scan).

Each ``run_*`` function takes a mixer factory (``make_mixer(hidden_size, num_heads)``, i.e. the
candidate's ``Mixer`` class), its options, the device and the declared precision, and returns
flat metrics or raises ``StageFailure``. Causality and complexity live in ``causality.py`` and
``complexity.py``.

Precision rule (shared with the training stages, see ``model.py``): parameters stay float32
and a reduced precision is applied with ``torch.autocast``. A mixer declared to run at float32
must compute in float32: a mixer that hard-casts to bfloat16 inside is reported, not passed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from evaluator.token_mixer.model import autocast_context
from evaluator.types import FailureKind, StageFailure, is_allocation_failure

MixerFactory = Callable[[int, int], nn.Module]
LOW_PRECISION = (torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- helpers


def tolerance(dtype: torch.dtype, fp32: float, low: float) -> float:
    return fp32 if dtype == torch.float32 else low


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (in float64); inf when a is not finite where b is."""
    a, b = a.detach().double(), b.detach().double()
    diff = (a - b).abs()
    if not torch.isfinite(diff).all():
        return math.inf
    scale = b.abs().max().item()
    return diff.max().item() / max(scale, 1e-30) if diff.numel() else 0.0


def _reraise_resource(exc: BaseException) -> None:
    """Resource exhaustion and our own failures keep their kind; everything else is wrapped."""
    if isinstance(exc, (StageFailure, KeyboardInterrupt)) or is_allocation_failure(exc):
        raise exc


@contextlib.contextmanager
def candidate_call(what: str) -> Iterator[None]:
    """Turn an exception raised by candidate code into a RUNTIME failure that says what ran."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - candidate code can raise anything
        _reraise_resource(exc)
        raise StageFailure(FailureKind.RUNTIME, f"{what} raised {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Float32 means float32 during the checks: no TF32 tensor-core matmuls or convolutions on
    CUDA (the harness, not the candidate, owns these global switches)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def build_mixer(make_mixer: MixerFactory, hidden_size: int, num_heads: int,
                device: torch.device, seed: int) -> nn.Module:
    """Instantiate the candidate with a fixed seed, float32 parameters, on ``device``, train mode."""
    torch.manual_seed(seed)
    with candidate_call(f"Mixer({hidden_size}, {num_heads})"):
        module = make_mixer(hidden_size, num_heads)
    if not isinstance(module, nn.Module):
        raise StageFailure(FailureKind.INTERFACE, f"Mixer({hidden_size}, {num_heads}) returned "
                           f"{type(module).__name__}, not an nn.Module")
    with candidate_call("moving the mixer to the device"):
        module = module.to(device=device, dtype=torch.float32)
    return module.train()


def forward(module: nn.Module, x: torch.Tensor, dtype: torch.dtype, seed: int, what: str) -> torch.Tensor:
    """One forward at the declared precision; the RNG is reseeded so calls are repeatable."""
    torch.manual_seed(seed)
    b, t, d = x.shape
    with candidate_call(f"forward at {what} (B={b}, T={t})"), autocast_context(x.device, dtype):
        y = module(x)
    if not isinstance(y, torch.Tensor):
        raise StageFailure(FailureKind.CONFORMANCE, f"forward returned {type(y).__name__} for "
                           f"B={b}, T={t}; expected a tensor (B, T, D)")
    if tuple(y.shape) != (b, t, d):
        raise StageFailure(FailureKind.CONFORMANCE, f"forward returned shape {tuple(y.shape)} for "
                           f"input (B={b}, T={t}, D={d}); expected the input shape")
    if not y.is_floating_point():
        raise StageFailure(FailureKind.CONFORMANCE,
                           f"forward returned dtype {y.dtype}; expected floating point")
    return y


def require_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise StageFailure(FailureKind.NAN, f"{what}: {bad} of {t.numel()} values are not finite")


class DtypeScan(TorchDispatchMode):
    """Counts the floating-point dtypes of every op output (what precision the mixer computes in)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[torch.dtype] = Counter()
        self.low_ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                self.counts[leaf.dtype] += 1
                if leaf.dtype in LOW_PRECISION:
                    self.low_ops[str(func.overloadpacket.__name__)] += 1
        return out


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- conformance


class ConformanceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(default=64, gt=0)
    num_heads: int = Field(default=4, gt=0)
    max_params: int = Field(default=65536, gt=0)
    # (B, T) pairs: T=1, T below / not a multiple of / above the usual chunk sizes
    shapes: tuple[tuple[int, int], ...] = ((1, 1), (2, 17), (3, 64), (2, 100))
    batch_check_len: int = Field(default=48, gt=1)
    fp32_vs_fp64_max: float = Field(default=1e-2, gt=0)  # a float32 run must track float64
    batch_tolerance_fp32: float = Field(default=1e-4, gt=0)
    batch_tolerance_low: float = Field(default=3e-2, gt=0)


def run_conformance(make_mixer: MixerFactory, options: ConformanceOptions, device: torch.device,
                    dtype: torch.dtype, seed: int) -> dict[str, float]:
    """Shapes, gradients, finiteness, batch independence, parameter budget and precision."""
    with strict_float32():
        return _conformance(make_mixer, options, device, dtype, seed)


def _conformance(make_mixer: MixerFactory, options: ConformanceOptions, device: torch.device,
                 dtype: torch.dtype, seed: int) -> dict[str, float]:
    o = options
    module = build_mixer(make_mixer, o.hidden_size, o.num_heads, device, seed)
    params = sum(p.numel() for p in module.parameters())
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    metrics: dict[str, float] = {"params": float(params), "max_params": float(o.max_params)}
    if params > o.max_params:
        raise StageFailure(FailureKind.BUDGET,
                           f"the mixer has {params} parameters at hidden_size={o.hidden_size}, "
                           f"num_heads={o.num_heads}; the budget is {o.max_params}", metrics)
    if not trainable:
        raise StageFailure(FailureKind.CONFORMANCE, "the mixer has no trainable parameters", metrics)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    scan = DtypeScan()
    t0 = time.perf_counter()
    for b, t in o.shapes:
        module.zero_grad(set_to_none=True)
        x = torch.randn(b, t, o.hidden_size, generator=gen).to(device).requires_grad_(True)
        with scan:
            y = forward(module, x, dtype, seed, "conformance")
        if dtype == torch.float32 and y.dtype != torch.float32:
            raise StageFailure(FailureKind.CONFORMANCE, "declared precision float32, but forward "
                               f"returned {dtype_name(y.dtype)}", metrics)
        require_finite(y, f"forward output (B={b}, T={t})")
        cotangent = torch.randn(y.shape, generator=gen).to(device=device, dtype=y.dtype)
        with candidate_call(f"backward (B={b}, T={t})"), scan:
            (y * cotangent).sum().backward()
        if x.grad is None:
            raise StageFailure(FailureKind.CONFORMANCE,
                               "the output does not depend on the input (no input gradient)")
        require_finite(x.grad, f"input gradient (B={b}, T={t})")
        for name, p in trainable:
            if p.grad is None:
                raise StageFailure(FailureKind.CONFORMANCE,
                                   f"parameter {name!r} received no gradient (B={b}, T={t}): "
                                   "unused parameters count against the budget; remove it or "
                                   "set requires_grad=False", metrics)
            require_finite(p.grad, f"gradient of parameter {name!r} (B={b}, T={t})")
    metrics["conformance_fwd_bwd_ms"] = 1000.0 * (time.perf_counter() - t0) / len(o.shapes)
    metrics["shapes_checked"] = float(len(o.shapes))

    floats = sum(scan.counts.values())
    low = sum(scan.counts[d] for d in LOW_PRECISION)
    metrics["low_precision_op_fraction"] = low / max(floats, 1)
    if dtype == torch.float32 and low:
        ops = ", ".join(f"{name} x{n}" for name, n in scan.low_ops.most_common(5))
        raise StageFailure(FailureKind.CONFORMANCE,
                           f"declared precision float32, but {low} of {floats} floating-point op "
                           f"results were bfloat16/float16 (the mixer casts down internally: {ops}); "
                           "compute in the input's dtype", metrics)

    _batch_independence(module, o, device, dtype, seed, metrics)
    if dtype == torch.float32:
        _against_float64(module, o, device, seed, metrics)
    return metrics


def _batch_independence(module: nn.Module, o: ConformanceOptions, device: torch.device,
                        dtype: torch.dtype, seed: int, metrics: dict[str, float]) -> None:
    """Sample 0's output must not change when the other samples change or are absent."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    x = torch.randn(3, o.batch_check_len, o.hidden_size, generator=gen).to(device)
    other = x.clone()
    other[1:] = 3.0 * torch.randn(2, o.batch_check_len, o.hidden_size, generator=gen).to(device)
    with torch.no_grad():
        y = forward(module, x, dtype, seed, "batch independence")
        y_other = forward(module, other, dtype, seed, "batch independence")
        y_alone = forward(module, x[:1], dtype, seed, "batch independence")
    leak = max(rel_error(y_other[0], y[0]), rel_error(y_alone[0], y[0]))
    metrics["batch_leak_rel"] = leak
    tol = tolerance(dtype, o.batch_tolerance_fp32, o.batch_tolerance_low)
    if not leak <= tol:
        raise StageFailure(FailureKind.CONFORMANCE,
                           f"batch independence: the output of sample 0 changed by {leak:.3g} "
                           f"(relative, tolerance {tol:g}) when the other samples of the batch "
                           "changed or were removed; samples must not mix (no batch statistics)", metrics)


def _against_float64(module: nn.Module, o: ConformanceOptions, device: torch.device, seed: int,
                     metrics: dict[str, float]) -> None:
    """A float32 mixer must agree with a float64 copy of itself (a precision check)."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 2)
    x = torch.randn(2, 64, o.hidden_size, generator=gen).to(device)
    try:
        wide = copy.deepcopy(module).to(torch.float64)
        torch.manual_seed(seed)
        with torch.no_grad():
            reference = wide(x.double())
    except Exception:  # noqa: BLE001 - some mixers cannot run in float64; the dtype scan still ran
        return
    with torch.no_grad():
        y = forward(module, x, torch.float32, seed, "float64 comparison")
    if not isinstance(reference, torch.Tensor) or reference.shape != y.shape:
        return
    err = rel_error(y, reference)
    metrics["fp64_rel_error"] = err
    if not err <= o.fp32_vs_fp64_max:
        raise StageFailure(FailureKind.CONFORMANCE,
                           f"declared precision float32, but the output differs from a float64 run "
                           f"of the same weights by {err:.3g} (relative; float32 arithmetic gives "
                           f"< {o.fp32_vs_fp64_max:g}): the mixer does not compute at float32", metrics)


# ----------------------------------------------------------------------------- recurrent form


class RecurrentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(default=64, gt=0)
    num_heads: int = Field(default=4, gt=0)
    batch_size: int = Field(default=2, gt=0)
    seq_len: int = Field(default=80, gt=1)  # crosses a 64-token chunk boundary
    tolerance: float = Field(default=1e-3, gt=0)  # relative, float32 (the bound)
    state_size_slack: float = Field(default=0.9, gt=0, le=1)


def state_elements(state: Any) -> int:
    """Elements of every tensor inside a (nested) decoding state."""
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(state_elements(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_elements(v) for v in state)
    return 0


def run_recurrent(make_mixer: MixerFactory, options: RecurrentOptions, device: torch.device,
                  dtype: torch.dtype, seed: int) -> dict[str, float]:
    """``step`` token by token must reproduce ``forward`` (float32), and ``state_size`` must not
    under-declare the state the decoder really keeps. Mixers without ``step`` pass with
    ``has_step = 0``."""
    with strict_float32():
        return _recurrent(make_mixer, options, device, seed)


def _recurrent(make_mixer: MixerFactory, options: RecurrentOptions, device: torch.device,
               seed: int) -> dict[str, float]:
    o = options
    module = build_mixer(make_mixer, o.hidden_size, o.num_heads, device, seed)
    metrics: dict[str, float] = {"has_step": 0.0}
    declared = getattr(module, "state_size", None)
    if callable(declared):
        with candidate_call(f"state_size({o.seq_len})"):
            size = declared(o.seq_len)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise StageFailure(FailureKind.CONFORMANCE,
                               f"state_size({o.seq_len}) returned {size!r}; expected a non-negative int")
        metrics["state_elems_declared"] = float(size)
    if not callable(getattr(module, "step", None)):
        return metrics
    metrics["has_step"] = 1.0
    gen = torch.Generator(device="cpu").manual_seed(seed + 3)
    x = torch.randn(o.batch_size, o.seq_len, o.hidden_size, generator=gen).to(device)
    with torch.no_grad():
        y = forward(module, x, torch.float32, seed, "recurrent comparison")
        state: Any = None
        outputs = []
        t0 = time.perf_counter()
        for t in range(o.seq_len):
            torch.manual_seed(seed)
            with candidate_call(f"step at position {t}"):
                y_t, state = module.step(x[:, t], state)
            if not isinstance(y_t, torch.Tensor) or tuple(y_t.shape) != (o.batch_size, o.hidden_size):
                got = tuple(y_t.shape) if isinstance(y_t, torch.Tensor) else type(y_t).__name__
                raise StageFailure(FailureKind.CONFORMANCE,
                                   f"step returned {got} at position {t}; expected (B, D) = "
                                   f"({o.batch_size}, {o.hidden_size}) and a new state")
            outputs.append(y_t)
        metrics["step_ms_per_token"] = 1000.0 * (time.perf_counter() - t0) / o.seq_len
    y_steps = torch.stack(outputs, dim=1)
    err = rel_error(y_steps, y)
    metrics["step_rel_error"] = err
    measured = state_elements(state) / o.batch_size
    metrics["state_elems_measured"] = measured
    if not err <= o.tolerance:
        per_pos = (y_steps - y).abs().amax(dim=(0, 2)) / y.abs().max().clamp_min(1e-30)
        first = int(torch.nonzero(~(per_pos <= o.tolerance))[0].item())
        raise StageFailure(FailureKind.CONFORMANCE,
                           f"step disagrees with forward: relative error {err:.3g} (tolerance "
                           f"{o.tolerance:g}, float32), first at position {first} of {o.seq_len}", metrics)
    if "state_elems_declared" in metrics and metrics["state_elems_declared"] < o.state_size_slack * measured:
        raise StageFailure(FailureKind.CONFORMANCE,
                           f"state_size({o.seq_len}) declares {int(metrics['state_elems_declared'])} "
                           f"elements per sequence, but the decoding state after {o.seq_len} steps "
                           f"holds {measured:.0f}", metrics)
    return metrics
