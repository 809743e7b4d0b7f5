"""What search policies read and produce.

A policy is shaped like Ray Tune's Searcher: ``suggest`` turns the archive into proposal
contexts, ``observe`` receives each finished candidate. Policy state is never persisted on
its own: on resume the loop replays ``observe`` over the database in completion order, so the
database is the single source of truth.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.types import ParentInfo, ProposalContext


@dataclass(frozen=True)
class EvaluatedCandidate:
    """A finished candidate as policies see it (evaluated or failed)."""

    id: int
    name: str
    code: str
    genome: Mapping[str, Any] | None
    status: str  # evaluated | failed
    fitness: float | None
    feasible: bool  # passed every constraint stage: may be chosen as a parent
    is_seed: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict)
    motivation: str = ""

    @property
    def eligible_parent(self) -> bool:
        return self.status == "evaluated" and self.feasible and self.fitness is not None

    def as_parent(self) -> ParentInfo:
        return ParentInfo(
            candidate_id=self.id, name=self.name, code=self.code, genome=self.genome,
            fitness=self.fitness, metrics=dict(self.metrics), motivation=self.motivation,
        )


@dataclass(frozen=True)
class ArchiveView:
    """Read-only snapshot of the campaign archive handed to ``Policy.suggest``."""

    task: str
    interface: str
    candidates: Sequence[EvaluatedCandidate]  # completion order
    evaluations_left: int | None = None

    def eligible(self) -> list[EvaluatedCandidate]:
        return [c for c in self.candidates if c.eligible_parent]


class Policy(Protocol):
    name: str

    def suggest(self, archive: ArchiveView, n: int) -> list[ProposalContext]: ...
    def observe(self, candidate: EvaluatedCandidate) -> None: ...


def context(
    archive: ArchiveView, operation: str, parents: Sequence[EvaluatedCandidate], rng: random.Random,
    inspirations: Sequence[EvaluatedCandidate] = (),
) -> ProposalContext:
    return ProposalContext(
        task=archive.task,
        interface=archive.interface,
        parents=tuple(p.as_parent() for p in parents),
        inspirations=tuple(p.as_parent() for p in inspirations),
        operation=operation,
        evaluations_left=archive.evaluations_left,
        seed=rng.getrandbits(32),
    )
