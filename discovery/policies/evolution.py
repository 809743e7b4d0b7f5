"""Regularized evolution (Real et al., "Regularized Evolution for Image Classifier
Architecture Search", 2019): an aging population of the most recent feasible candidates,
parents chosen by tournament, the oldest member removed as each new one arrives.

Aging (rather than removing the worst) keeps the search from over-exploiting one lucky
evaluation, which matters here because rung-0 measurements are noisy.
"""

from __future__ import annotations

import random
from collections import deque

from agents.types import ProposalContext
from discovery.policies.base import ArchiveView, EvaluatedCandidate, context


class EvolutionPolicy:
    name = "evolution"

    def __init__(
        self, seed: int = 0, population: int = 16, tournament: int = 4,
        crossover_rate: float = 0.25, fresh_rate: float = 0.1,
    ) -> None:
        self._rng = random.Random(seed)
        self._population: deque[EvaluatedCandidate] = deque(maxlen=population)
        self._tournament = tournament
        self._crossover_rate = crossover_rate
        self._fresh_rate = fresh_rate

    @property
    def population(self) -> list[EvaluatedCandidate]:
        return list(self._population)

    def observe(self, candidate: EvaluatedCandidate) -> None:
        if candidate.eligible_parent:
            self._population.append(candidate)  # deque(maxlen) drops the oldest: aging

    def _select(self) -> EvaluatedCandidate:
        members = list(self._population)
        k = min(self._tournament, len(members))
        contestants = self._rng.sample(members, k=k)
        return max(contestants, key=lambda c: (c.fitness or 0.0, -c.id))

    def suggest(self, archive: ArchiveView, n: int) -> list[ProposalContext]:
        out = []
        for _ in range(n):
            if not self._population or self._rng.random() < self._fresh_rate:
                out.append(context(archive, "fresh", [], self._rng))
                continue
            first = self._select()
            if len(self._population) >= 2 and self._rng.random() < self._crossover_rate:
                second = self._select()
                for _ in range(4):  # prefer a distinct second parent
                    if second.id != first.id:
                        break
                    second = self._select()
                if second.id != first.id:
                    out.append(context(archive, "crossover", [first, second], self._rng))
                    continue
            best = sorted(self._population, key=lambda c: -(c.fitness or 0.0))[:2]
            out.append(context(archive, "mutation", [first], self._rng, inspirations=best))
        return out
