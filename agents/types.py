"""Types proposers consume and produce (DESIGN.md sections 2 and 4).

A search policy turns the archive into ``ProposalContext`` values; a ``Proposer`` (the
offline genome proposer or an LLM researcher) turns one context into one ``Proposal``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ParentInfo:
    """A candidate from the archive shown to a proposer (parent or inspiration)."""

    candidate_id: int
    name: str
    code: str
    genome: Mapping[str, Any] | None
    fitness: float | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    motivation: str = ""


@dataclass(frozen=True)
class FailureInfo:
    """A recent failure, fed back so proposers learn what breaks."""

    candidate_id: int
    name: str
    stage: str
    failure_kind: str
    message: str
    log_tail: str = ""
    code: str = ""


@dataclass(frozen=True)
class ProposalContext:
    task: str
    interface: str
    parents: tuple[ParentInfo, ...] = ()
    inspirations: tuple[ParentInfo, ...] = ()
    recent_failures: tuple[FailureInfo, ...] = ()
    insights: tuple[str, ...] = ()
    knowledge: tuple[str, ...] = ()
    # "mutation" (one parent), "crossover" (two), "fresh" (no parent: sample the space)
    operation: str = "mutation"
    evaluations_left: int | None = None
    seed: int = 0  # a per-proposal RNG seed, derived by the policy (reproducible campaigns)


@dataclass(frozen=True)
class Proposal:
    name: str
    motivation: str
    code: str
    parent_ids: tuple[int, ...] = ()
    genome: Mapping[str, Any] | None = None
    origin: str = "mutation"  # seed | llm:<model> | mutation | crossover | debug
    # ``llm_call`` rows the proposal came from: the store links them to the candidate it makes
    llm_call_ids: tuple[int, ...] = ()


class ProposalError(Exception):
    """A proposer could not produce a usable proposal (recorded as a ``validator`` failure)."""

    def __init__(self, message: str, reply: str = "") -> None:
        super().__init__(message)
        self.reply = reply
        self.llm_call_ids: tuple[int, ...] = ()  # the logged calls that gave the reply


@runtime_checkable
class Proposer(Protocol):
    name: str

    async def propose(self, ctx: ProposalContext) -> Proposal: ...


class BudgetExhausted(Exception):
    """Raised (e.g. before an LLM call) when a campaign budget is spent: the loop stops cleanly."""
