"""The complexity stage: how the cost of one forward grows with the sequence length T.

The mixer runs on PyTorch's ``meta`` device (shapes only, no arithmetic, so T = 4096 costs
milliseconds) under ``FlopCounterMode`` (matmul-class FLOPs) and an element counter (elements
of every tensor an op materialises). Both are fitted as c * T^k on a log-log scale; the judged
exponent is the larger of the two fits over the longest lengths, where the asymptotic term
dominates. Counting elements as well catches quadratic work the FLOP counter does not see, such
as a (T x T) score matrix built by broadcasting instead of a matmul.

Mixers that cannot run on ``meta`` (data-dependent shapes, ``.item()``) are counted the same way
on the CPU at shorter lengths, reported by ``complexity_on_meta = 0``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from evaluator.token_mixer.checks import MixerFactory, build_mixer, candidate_call
from evaluator.types import FailureKind, StageFailure


class ComplexityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(default=64, gt=0)
    num_heads: int = Field(default=4, gt=0)
    seq_lens: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    cpu_seq_lens: tuple[int, ...] = (128, 256, 512, 1024, 2048)  # fallback when meta fails
    tail_points: int = Field(default=3, ge=2)  # the judged fit uses the longest lengths
    bound: float = Field(default=1.2, gt=0)


class ElementCounter(TorchDispatchMode):
    """Total elements of the tensors every op returns (materialised memory traffic)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.elements += leaf.numel()
        return out


def fit_exponent(lengths: list[int], costs: list[float]) -> float:
    """Least-squares slope of log(cost) against log(T)."""
    xs = [math.log(t) for t in lengths]
    ys = [math.log(max(c, 1.0)) for c in costs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def _count(module: torch.nn.Module, hidden: int, seq_lens: tuple[int, ...],
           device: torch.device) -> tuple[list[float], list[float]]:
    flops, elements = [], []
    for t in seq_lens:
        x = torch.empty(1, t, hidden, device=device) if device.type == "meta" else torch.randn(1, t, hidden)
        counter = ElementCounter()
        with torch.no_grad(), torch.device(device), FlopCounterMode(display=False) as fc, counter:
            module(x)
        flops.append(float(fc.get_total_flops()))
        elements.append(float(counter.elements))
    return flops, elements


def run_complexity(make_mixer: MixerFactory, options: ComplexityOptions, device: torch.device,
                   dtype: torch.dtype, seed: int) -> dict[str, float]:
    """Count FLOPs and materialised elements at several T; fail above ``options.bound``.

    ``device`` and ``dtype`` are ignored: counting is done on ``meta`` (or the CPU), float32.
    """
    o = options
    module = build_mixer(make_mixer, o.hidden_size, o.num_heads, torch.device("cpu"), seed)
    on_meta = True
    lengths = o.seq_lens
    try:
        flops, elements = _count(module.to("meta"), o.hidden_size, lengths, torch.device("meta"))
    except Exception:  # noqa: BLE001 - not runnable on meta: count real tensors on the CPU instead
        on_meta = False
        lengths = o.cpu_seq_lens
        module = build_mixer(make_mixer, o.hidden_size, o.num_heads, torch.device("cpu"), seed)
        with candidate_call("forward while counting FLOPs on the CPU"):
            flops, elements = _count(module, o.hidden_size, lengths, torch.device("cpu"))
    tail = slice(len(lengths) - o.tail_points, None)
    ls = list(lengths)
    metrics: dict[str, float] = {
        "complexity_on_meta": float(on_meta),
        "complexity_bound": o.bound,
        "flops_exponent": fit_exponent(ls, flops),
        "elements_exponent": fit_exponent(ls, elements),
        "flops_exponent_tail": fit_exponent(ls[tail], flops[tail]),
        "elements_exponent_tail": fit_exponent(ls[tail], elements[tail]),
    }
    for t, f, e in zip(ls, flops, elements):
        metrics[f"flops_T{t}"] = f
        metrics[f"elements_T{t}"] = e
    judged = max(metrics["flops_exponent_tail"], metrics["elements_exponent_tail"])
    metrics["complexity_exponent"] = judged
    if judged > o.bound:
        raise StageFailure(FailureKind.COMPLEXITY,
                           f"cost grows as T^{judged:.2f} between T={ls[tail][0]} and T={ls[-1]} "
                           f"(FLOPs as T^{metrics['flops_exponent_tail']:.2f}, materialised "
                           f"elements as T^{metrics['elements_exponent_tail']:.2f}); the campaign "
                           f"allows at most T^{o.bound:g}", metrics)
    return metrics
