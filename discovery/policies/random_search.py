"""Random search: every proposal is a fresh sample of the design space (for an LLM
researcher: a new design, shown two random archive members as inspiration). The baseline
every other policy must beat."""

from __future__ import annotations

import random

from agents.types import ProposalContext
from discovery.policies.base import ArchiveView, EvaluatedCandidate, context


class RandomPolicy:
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def suggest(self, archive: ArchiveView, n: int) -> list[ProposalContext]:
        pool = archive.eligible()
        out = []
        for _ in range(n):
            inspirations = self._rng.sample(pool, k=min(2, len(pool)))
            out.append(context(archive, "fresh", [], self._rng, inspirations))
        return out

    def observe(self, candidate: EvaluatedCandidate) -> None:
        pass  # stateless beyond the RNG
