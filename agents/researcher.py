"""The researcher agent: an LLM ``Proposer`` that writes a new candidate module from context.

``Researcher.propose(ctx)`` renders ``researcher.j2`` from the policy's ``ProposalContext``
(parents with code and results, inspirations, recent failures, retrieved knowledge,
analyst insights, budget left), asks the model chosen for the role, and parses the reply
(``Name:``, ``Motivation:``, one python block or SEARCH/REPLACE edits against the parent).
An unusable reply is sent back once with the parse error (bounded by ``max_attempts``);
if it is still unusable, ``ProposalError`` carries the last reply to the loop, which
records a ``validator`` failure.

``ask_parsed`` is the request/parse/retry conversation shared by all agents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from agents.bandit import ModelChooser, ModelSpec
from agents.llm import LLM, ChatMessage, LLMRequest, LLMResponse
from agents.parsing import parse_proposal_reply
from agents.prompts import PROPOSAL_SHAPE, RenderedPrompt, render_format_error, render_researcher
from agents.types import Proposal, ProposalContext, ProposalError

T = TypeVar("T")


async def ask_parsed(
    llm: LLM,
    spec: ModelSpec,
    *,
    role: str,
    prompt: RenderedPrompt,
    parse: Callable[[str], T],
    expected: str,
    sample_id: int = 0,
    candidate_id: int | None = None,
    max_attempts: int = 2,
) -> tuple[T, LLMResponse]:
    """Ask, parse; on ``ProposalError`` show the model its error and ask again (bounded).

    Follow-up requests carry template name ``<prompt>+format_error.j2`` and a hash of both
    templates, so logged calls still say which prompt they continue.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    messages = [ChatMessage("user", prompt.text)]
    template_name, template_hash = prompt.template_name, prompt.template_hash
    last: ProposalError | None = None
    for _ in range(max_attempts):
        request = LLMRequest(
            role=role,
            template_name=template_name,
            template_hash=template_hash,
            model=spec.model,
            messages=tuple(messages),
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            api_base=spec.api_base,
            sample_id=sample_id,
            timeout=spec.timeout_s,
            candidate_id=candidate_id,
        )
        response = await llm.complete(request)
        try:
            return parse(response.text), response
        except ProposalError as exc:
            last = exc if exc.reply else ProposalError(str(exc), response.text)
            follow = render_format_error(str(exc), expected=expected)
            messages += [ChatMessage("assistant", response.text), ChatMessage("user", follow.text)]
            template_name = f"{prompt.template_name}+{follow.template_name}"
            template_hash = hashlib.sha256((prompt.template_hash + follow.template_hash).encode()).hexdigest()
    assert last is not None
    raise ProposalError(f"{role}: no usable reply after {max_attempts} attempt(s): {last}", last.reply)


class Researcher:
    """Implements the ``Proposer`` protocol with an LLM."""

    role = "researcher"

    def __init__(self, llm: LLM, models: ModelChooser, *, max_attempts: int = 2, name: str = "researcher") -> None:
        self.llm = llm
        self.models = models
        self.max_attempts = max_attempts
        self.name = name

    async def propose(self, ctx: ProposalContext) -> Proposal:
        spec = self.models.choose()
        prompt = render_researcher(ctx)
        # SEARCH/REPLACE edits are applied to the first parent (the template offers them
        # only when there is exactly one).
        parent_code = ctx.parents[0].code if ctx.parents else None
        parsed, response = await ask_parsed(
            self.llm,
            spec,
            role=self.role,
            prompt=prompt,
            parse=lambda text: parse_proposal_reply(text, parent_code),
            expected=PROPOSAL_SHAPE,
            sample_id=ctx.seed,
            max_attempts=self.max_attempts,
        )
        return Proposal(
            name=parsed.name,
            motivation=parsed.motivation,
            code=parsed.code,
            parent_ids=tuple(p.candidate_id for p in ctx.parents),
            genome=None,
            origin=f"llm:{response.model}",
        )
