"""Scalar fitness from measured objectives (DESIGN.md section 6).

Fitness is the weighted mean, over the task's objectives, of a saturating sigmoid of the
candidate's relative improvement over the campaign's reference seed. It is 0.5 for a
candidate equal to the reference on every objective, tends to 1 for large improvements and
to 0 for large regressions, so no single objective can dominate by an unbounded margin (the
same shape ASI-Arch uses, but every term here is measured, none judged by an LLM).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from evaluator.types import Objective

_EPS = 1e-9


def relative_improvement(value: float, reference: float, direction: str) -> float:
    """Signed relative improvement: positive means better than the reference."""
    denom = max(abs(reference), _EPS)
    delta = (value - reference) if direction == "max" else (reference - value)
    return delta / denom


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def fitness(
    objectives: Sequence[Objective],
    reference: Mapping[str, float],
    weights: Mapping[str, float],
    default_weight: float = 1.0,
    scale: float = 4.0,
) -> float | None:
    """Weighted mean of sigmoid(scale * relative improvement) over objectives the reference has.

    Returns None when no objective can be compared (e.g. the reference has not been measured).
    """
    total = 0.0
    weight_sum = 0.0
    for obj in objectives:
        if obj.name not in reference or not math.isfinite(obj.value):
            continue
        w = weights.get(obj.name, default_weight)
        if w <= 0:
            continue
        imp = relative_improvement(obj.value, reference[obj.name], obj.direction)
        total += w * sigmoid(scale * imp)
        weight_sum += w
    if weight_sum == 0:
        return None
    return total / weight_sum


def pareto_front(points: Sequence[tuple[int, Sequence[Objective]]]) -> list[int]:
    """Ids of the non-dominated points (all objectives compared in their own direction)."""

    def better_or_equal(a: Objective, b: Objective) -> bool:
        return a.value >= b.value if a.direction == "max" else a.value <= b.value

    front: list[int] = []
    for i, (pid, objs) in enumerate(points):
        by_name = {o.name: o for o in objs}
        dominated = False
        for j, (_, other) in enumerate(points):
            if i == j:
                continue
            other_by = {o.name: o for o in other}
            shared = [n for n in by_name if n in other_by]
            if not shared:
                continue
            if all(better_or_equal(other_by[n], by_name[n]) for n in shared) and any(
                other_by[n].value != by_name[n].value for n in shared
            ):
                dominated = True
                break
        if not dominated:
            front.append(pid)
    return front
