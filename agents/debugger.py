"""The debugger agent: repairs a failed candidate from its failing stage's message and log.

``Debugger.fix(failed, ctx, round=k)`` renders ``debugger.j2`` (stage, failure kind,
message, log tail, the failing code, the task interface) and returns a new ``Proposal``
with origin ``debug`` whose only parent is the failed candidate. The campaign loop owns
the bound on rounds (``max_rounds``, default 2, shown to the model) and links each fix to
the failed candidate; this class only turns one failure into one repaired module.
"""

from __future__ import annotations

from agents.bandit import ModelChooser
from agents.llm import LLM
from agents.parsing import parse_proposal_reply
from agents.prompts import PROPOSAL_SHAPE, render_debugger
from agents.researcher import ask_parsed
from agents.types import FailureInfo, Proposal, ProposalContext, ProposalError


class Debugger:
    role = "debugger"

    def __init__(self, llm: LLM, models: ModelChooser, *, max_rounds: int = 2, max_attempts: int = 2) -> None:
        self.llm = llm
        self.models = models
        self.max_rounds = max_rounds
        self.max_attempts = max_attempts

    async def fix(self, failed: FailureInfo, ctx: ProposalContext, *, round: int = 1) -> Proposal:
        if not failed.code.strip():
            raise ProposalError(f"candidate {failed.candidate_id} has no code to debug")
        spec = self.models.choose()
        prompt = render_debugger(
            failed, task=ctx.task, interface=ctx.interface, round=round, max_rounds=self.max_rounds
        )
        fixed_name = f"{failed.name}-fix{round}"
        parsed, _ = await ask_parsed(
            self.llm,
            spec,
            role=self.role,
            prompt=prompt,
            parse=lambda text: parse_proposal_reply(text, failed.code, default_name=fixed_name),
            expected=PROPOSAL_SHAPE,
            sample_id=ctx.seed,
            candidate_id=failed.candidate_id,
            max_attempts=self.max_attempts,
        )
        name = fixed_name if parsed.name == failed.name else parsed.name
        motivation = parsed.motivation or f"repair of {failed.name} ({failed.failure_kind} at stage {failed.stage})"
        return Proposal(
            name=name,
            motivation=motivation,
            code=parsed.code,
            parent_ids=(failed.candidate_id,),
            genome=None,
            origin="debug",
        )
