"""Fidelity ladder bookkeeping: successive-halving promotion and how far a cheap rung's
ranking can be trusted (Spearman rank correlation between rungs, DESIGN.md section 6)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# Metrics whose cross-rung agreement is reported (the task's headline quality measures).
DEFAULT_METRICS = ("mqar_acc", "mqar_loss", "lm_bpb", "lm_val_loss")


def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean rank), 1-based."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None if undefined."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / (vx * vy) ** 0.5


def rung_correlations(
    evaluations: Iterable[Any], metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
    """For each metric and each pair of rungs (r, r') seen on >= 3 common candidates, the
    Spearman correlation of the metric's values. ``evaluations`` are rows with candidate_id,
    rung, ok and metrics attributes (the evaluation table)."""
    by_rung: dict[int, dict[str, dict[int, float]]] = {}
    for ev in evaluations:
        if not ev.ok:
            continue
        for m in metrics:
            if m in (ev.metrics or {}):
                by_rung.setdefault(ev.rung, {}).setdefault(m, {})[ev.candidate_id] = float(ev.metrics[m])
    out: dict[str, dict[str, float]] = {}
    rungs = sorted(by_rung)
    for i, lo in enumerate(rungs):
        for hi in rungs[i + 1:]:
            for m in metrics:
                a, b = by_rung[lo].get(m, {}), by_rung[hi].get(m, {})
                common = sorted(set(a) & set(b))
                rho = spearman([a[c] for c in common], [b[c] for c in common])
                if rho is not None:
                    out[f"rung{lo}->rung{hi}:{m}"] = {"spearman": rho, "n": float(len(common))}
    return out


def promotable(scores: dict[int, float], promoted: set[int], fraction: float, min_size: int) -> list[int]:
    """Successive halving: ids in the top ``fraction`` of a rung (by score, higher is better)
    that are not promoted yet; nothing until the rung has ``min_size`` members."""
    if len(scores) < min_size:
        return []
    k = max(1, int(len(scores) * fraction))
    best = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
    return [cid for cid in best if cid not in promoted]
