"""Choosing which model serves a role: fixed weights or a UCB bandit on improvement per dollar.

A campaign may list several models for one role (``[llm]`` config). ``ModelSpec`` says how
to call one; a chooser picks one per call. ``FixedModel`` always returns the same spec;
``ModelBandit`` either samples by configured weight or runs UCB1 where an arm's reward is
the fitness improvement its proposal brought divided by the dollars it cost. Both are
deterministic given their seed and the sequence of ``update`` calls, so a resumed
campaign can rebuild the bandit by replaying its history from the database.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ModelSpec:
    """How to call one model for one role."""

    model: str  # litellm model string
    api_base: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = None
    weight: float = 1.0  # used by the "weights" strategy
    timeout_s: float | None = None


class ModelChooser(Protocol):
    def choose(self) -> ModelSpec: ...


@dataclass(frozen=True)
class FixedModel:
    """A chooser with a single model."""

    spec: ModelSpec

    def choose(self) -> ModelSpec:
        return self.spec

    def update(self, model: str, improvement: float, dollars: float) -> bool:
        return model == self.spec.model


@dataclass
class ArmStats:
    chosen: int = 0
    updates: int = 0
    reward_sum: float = 0.0
    improvement_sum: float = 0.0
    dollars_sum: float = 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.updates if self.updates else 0.0


class ModelBandit:
    """Pick among several models for one role.

    strategy "weights": sample proportionally to ``ModelSpec.weight``.
    strategy "ucb": try every arm once (in the given order), then pick the arm maximising
    ``mean(r) / scale + c * sqrt(ln N / n)`` where r = max(improvement, 0) / (dollars +
    dollar_floor), ``scale`` is the largest mean reward seen (so rewards live in [0, 1] as
    UCB1 assumes), N the total and n the arm's number of updates. ``dollar_floor`` keeps
    free local models from getting an infinite reward. Ties are broken by the seeded RNG.
    """

    def __init__(
        self,
        arms: Sequence[ModelSpec],
        *,
        strategy: str = "ucb",
        seed: int = 0,
        exploration: float = math.sqrt(2.0),
        dollar_floor: float = 1e-3,
    ) -> None:
        if not arms:
            raise ValueError("ModelBandit needs at least one model")
        names = [a.model for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"ModelBandit models must be distinct, got {names}")
        if strategy not in {"ucb", "weights"}:
            raise ValueError(f"strategy must be 'ucb' or 'weights', got {strategy!r}")
        if strategy == "weights" and (any(a.weight < 0 for a in arms) or sum(a.weight for a in arms) <= 0):
            raise ValueError("weights must be >= 0 and not all zero")
        self.arms = tuple(arms)
        self.strategy = strategy
        self.exploration = exploration
        self.dollar_floor = dollar_floor
        self._rng = random.Random(seed)
        self.stats: dict[str, ArmStats] = {a.model: ArmStats() for a in arms}

    def choose(self) -> ModelSpec:
        if self.strategy == "weights":
            spec = self._rng.choices(self.arms, weights=[a.weight for a in self.arms], k=1)[0]
        else:
            spec = self._choose_ucb()
        self.stats[spec.model].chosen += 1
        return spec

    def _choose_ucb(self) -> ModelSpec:
        for arm in self.arms:
            if self.stats[arm.model].chosen == 0:
                return arm
        total = sum(s.updates for s in self.stats.values())
        scale = max((s.mean_reward for s in self.stats.values()), default=0.0) or 1.0
        scores = []
        for arm in self.arms:
            stats = self.stats[arm.model]
            n = max(stats.updates, 1)
            bonus = self.exploration * math.sqrt(math.log(max(total, 1) + 1) / n)
            scores.append(stats.mean_reward / scale + bonus)
        best = max(scores)
        tied = [arm for arm, score in zip(self.arms, scores) if math.isclose(score, best, rel_tol=1e-12, abs_tol=1e-12)]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)

    def reward(self, improvement: float, dollars: float) -> float:
        return max(improvement, 0.0) / (max(dollars, 0.0) + self.dollar_floor)

    def update(self, model: str, improvement: float, dollars: float) -> bool:
        """Credit ``model`` with a result; False (and no change) for a model not in the arms."""
        stats = self.stats.get(model)
        if stats is None:
            return False
        stats.updates += 1
        stats.reward_sum += self.reward(improvement, dollars)
        stats.improvement_sum += improvement
        stats.dollars_sum += dollars
        return True
