"""Extension hooks of the campaign loop: where LLM agents (analyst, debugger, knowledge
retrieval, spend limits) plug in without the reference loop knowing about them.

``NullHooks`` is what an offline campaign uses. ``discovery.llm_setup.LLMHooks`` implements the
same methods for LLM campaigns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from agents.types import Proposal, ProposalContext

if TYPE_CHECKING:  # imported for type names only; no runtime cycle
    from discovery.loop import CampaignLoop
    from discovery.store import CompletedEvaluation


class CampaignHooks(Protocol):
    def enrich_context(self, loop: CampaignLoop, ctx: ProposalContext) -> ProposalContext: ...
    def after_completion(self, loop: CampaignLoop, completed: CompletedEvaluation) -> None: ...
    def after_rejection(
        self, loop: CampaignLoop, candidate_id: int, proposal: Proposal, violation, debug_round: int
    ) -> None: ...
    def extra_stop_reason(self, loop: CampaignLoop) -> str | None: ...


class NullHooks:
    def enrich_context(self, loop: CampaignLoop, ctx: ProposalContext) -> ProposalContext:
        return ctx

    def after_completion(self, loop: CampaignLoop, completed: CompletedEvaluation) -> None:
        return None

    def after_rejection(self, loop, candidate_id, proposal, violation, debug_round) -> None:
        return None

    def extra_stop_reason(self, loop: CampaignLoop) -> str | None:
        return None
