"""LLM side of a campaign: build the researcher / debugger / analyst from the `[llm]` config,
log every call into `llm_call` (with the dollars in the budget ledger), retrieve knowledge and
insights for prompts, and run the analyst and debugger as loop hooks (DESIGN.md section 9).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agents.bandit import FixedModel, ModelBandit, ModelSpec
from agents.knowledge_pack import load_builtin_pack
from agents.llm import (
    LLM, LiteLLM, LLMCallRecord, LLMFatalError, LLMRequest, call_scope, check_credentials,
)
from agents.types import (
    BudgetExhausted, FailureInfo, ParentInfo, Proposal, ProposalContext, ProposalError,
)
from discovery.config import CampaignConfig, LLMRoleConfig
from discovery.errors import UserError
from knowledge_base import repository as repo
from knowledge_base.db import Database

if TYPE_CHECKING:
    from discovery.loop import CampaignLoop
    from discovery.store import CampaignStore, CompletedEvaluation
    from evaluator.types import Task

ROLES = ("researcher", "debugger", "analyst", "extractor")


def override_model(cfg: CampaignConfig, model: str, api_base: str | None) -> CampaignConfig:
    """`--model`: one model for every role, and the LLM researcher even if the config says offline."""
    role = LLMRoleConfig(model=model, api_base=api_base)
    llm = cfg.llm.model_copy(update={r: [role] for r in ROLES})
    proposer = cfg.proposer.model_copy(update={"kind": "llm"})
    return cfg.model_copy(update={"llm": llm, "proposer": proposer})


def _specs(cfg: CampaignConfig, role: str) -> list[ModelSpec]:
    roles = getattr(cfg.llm, role) or cfg.llm.researcher  # a role without models uses the researcher's
    return [ModelSpec(model=r.model, api_base=r.api_base, temperature=r.temperature,
                      max_tokens=r.max_tokens, weight=r.weight) for r in roles]


def check_llm_config(cfg: CampaignConfig) -> None:
    """Fail before the campaign starts: no researcher model, or missing credentials."""
    if not cfg.llm.researcher:
        raise UserError("[proposer] kind = 'llm' needs an [llm.researcher] model (or pass --model MODEL)")
    for role in ROLES:
        for spec in _specs(cfg, role):
            problem = check_credentials(spec.model, spec.api_base)
            if problem:
                raise UserError(problem)


def chooser(cfg: CampaignConfig, role: str) -> FixedModel | ModelBandit:
    specs = _specs(cfg, role)
    if len(specs) == 1:
        return FixedModel(specs[0])
    return ModelBandit(specs, strategy="ucb" if cfg.llm.selection == "ucb" else "weights", seed=cfg.seed)


class CallLogger:
    """The LLM call sink: one `llm_call` row per attempt, dollars into the budget ledger, one
    transaction each. Also the `before_call` budget gate (checked against the ledger)."""

    def __init__(self, db: Database, campaign_id: str | None, max_dollars: float | None = None) -> None:
        self.db = db
        self.campaign_id = campaign_id
        self.max_dollars = max_dollars
        self._scoped: dict[str, list[int]] = {}  # row ids of calls made under a call_scope

    def take(self, scope: str) -> tuple[int, ...]:
        """The ids of the rows logged under ``scope`` (``agents.llm.call_scope``), once."""
        return tuple(self._scoped.pop(scope, ()))

    def __call__(self, record: LLMCallRecord) -> None:
        with self.db.session() as s:
            call = repo.add_llm_call(
                s, role=record.role, template_name=record.template_name,
                template_hash=record.template_hash, model=record.model,
                messages=record.messages_json(), response=record.response,
                tokens_in=record.tokens_in, tokens_out=record.tokens_out, dollars=record.dollars,
                latency_s=record.latency_s, cache_hit=record.cache_hit, error=record.error,
                campaign_id=self.campaign_id, candidate_id=record.candidate_id,
                sample_id=record.sample_id,
            )
            if self.campaign_id is not None and record.dollars:
                repo.add_ledger_entry(s, self.campaign_id, "llm_dollars", record.dollars,
                                      candidate_id=record.candidate_id,
                                      note=repo.llm_call_note(call.id))
            if record.scope is not None:
                self._scoped.setdefault(record.scope, []).append(call.id)

    def before_call(self, request: LLMRequest) -> None:
        if self.max_dollars is None or self.campaign_id is None:
            return
        with self.db.read_session() as s:
            spent = repo.ledger_sum(s, self.campaign_id, "llm_dollars")
        if spent >= self.max_dollars:
            raise BudgetExhausted(f"max_llm_dollars reached (${spent:.4f} of ${self.max_dollars:g})")


def attach_logger(llm: Any, logger: CallLogger) -> None:
    """Give an injected LLM (tests, embedding code) the campaign's call sink and budget gate,
    unless it already has its own: without them its calls would be neither logged nor bounded."""
    if hasattr(llm, "on_call") and llm.on_call is None:
        llm.on_call = logger
    if hasattr(llm, "before_call") and llm.before_call is None:
        llm.before_call = logger.before_call


def make_llm(cfg: CampaignConfig, logger: CallLogger) -> LiteLLM:
    return LiteLLM(on_call=logger, before_call=logger.before_call, max_retries=cfg.llm.max_retries,
                   timeout_s=cfg.llm.timeout_s, max_concurrency=cfg.llm.max_concurrency)


class CostTrackingProposer:
    """Wraps the researcher to remember what each proposal cost (for the model bandit) and
    which logged calls it came from: the researcher's calls are made before the candidate
    exists, so they are labelled with a ``call_scope`` and the proposal carries their row ids
    (``Proposal.llm_call_ids``), which the store links to the candidate it makes."""

    def __init__(self, researcher: Any, llm: Any, logger: CallLogger | None = None) -> None:
        self.name = "llm"
        self._researcher = researcher
        self._llm = llm
        self._logger = logger
        self._proposals = itertools.count(1)
        self.cost_by_code: dict[str, float] = {}

    async def propose(self, ctx: ProposalContext) -> Proposal:
        before = getattr(self._llm, "dollars_spent", 0.0)
        scope = f"proposal:{next(self._proposals)}"
        try:
            with call_scope(scope):
                proposal = await self._researcher.propose(ctx)
        except ProposalError as err:  # the store keeps the reply as a validator failure
            err.llm_call_ids = self._take(scope)
            raise
        except BaseException:
            self._take(scope)
            raise
        ids = self._take(scope)
        self.cost_by_code[proposal.code] = getattr(self._llm, "dollars_spent", 0.0) - before
        return replace(proposal, llm_call_ids=ids) if ids else proposal

    def _take(self, scope: str) -> tuple[int, ...]:
        return self._logger.take(scope) if self._logger is not None else ()


class LLMHooks:
    """Knowledge retrieval into prompts, analyst insights, debugger rounds, bandit updates."""

    def __init__(self, cfg: CampaignConfig, store: CampaignStore, proposer: CostTrackingProposer,
                 debugger: Any, analyst: Any, researcher_chooser: Any) -> None:
        self.cfg = cfg
        self.store = store
        self.proposer = proposer
        self.debugger = debugger
        self.analyst = analyst
        self.researcher_chooser = researcher_chooser

    # -- context -------------------------------------------------------------------------
    def enrich_context(self, loop: CampaignLoop, ctx: ProposalContext) -> ProposalContext:
        k = self.cfg.proposer.knowledge_top_k
        query = " ".join(
            [p.name + " " + p.motivation for p in ctx.parents]
            + [f.failure_kind + " " + f.message[:200] for f in ctx.recent_failures]
        ) or loop.task.description
        with self.store.db.read_session() as s:
            knowledge = tuple(_knowledge_text(e) for e in repo.search_knowledge(s, query, limit=k, task=loop.task.name)) if k else ()
            insights = tuple(i.text for i in repo.insights(s, self.store.campaign_id, limit=5))
        return replace(ctx, knowledge=knowledge, insights=insights)

    def extra_stop_reason(self, loop: CampaignLoop) -> str | None:
        return None

    # -- after an evaluation -------------------------------------------------------------
    def after_completion(self, loop: CampaignLoop, c: CompletedEvaluation) -> None:
        self._update_bandit(c)
        if c.status == "evaluated" and self.cfg.proposer.analyst and not c.is_seed:
            loop.spawn(self._analyse(loop, c))
        elif c.status == "failed" and c.failure_kind not in ("infra", "validator"):
            self._maybe_debug(loop, c.candidate_id, c.name, c.code, c.failure_stage or "",
                              c.failure_kind or "runtime", c.failure_message or "")

    def after_rejection(self, loop: CampaignLoop, candidate_id: int, proposal: Proposal, violation: Any,
                        debug_round: int) -> None:
        self._maybe_debug(loop, candidate_id, proposal.name, proposal.code, "load",
                          violation.kind.value, violation.message)

    def _maybe_debug(self, loop: CampaignLoop, cid: int, name: str, code: str, stage: str, kind: str,
                     message: str) -> None:
        round_ = self.store.debug_round(cid)
        if round_ >= self.cfg.proposer.debug_rounds or loop.evaluations_left() <= 0:
            return
        failed = FailureInfo(candidate_id=cid, name=name, stage=stage, failure_kind=kind,
                             message=message, log_tail=self.store.log_tail(cid), code=code)
        loop.spawn(self._debug(loop, failed, round_ + 1))

    async def _debug(self, loop: CampaignLoop, failed: FailureInfo, round_: int) -> None:
        ctx = ProposalContext(task=loop.task.name, interface=loop.task.interface(), operation="debug",
                              seed=failed.candidate_id * 1000 + round_)
        try:
            proposal = await self.debugger.fix(failed, ctx, round=round_)
        except BudgetExhausted as err:
            loop.note_exhausted(str(err))
            return
        except LLMFatalError:  # a setup bug (test guard, exhausted script): fail loudly
            raise
        except Exception as err:  # an unusable fix is recorded, not fatal
            self.store.record_event("debug_failed", f"#{failed.candidate_id}: {err}"[:2000])
            return
        loop.admit(replace(proposal, origin="debug"), debug_of=failed.candidate_id, debug_round=round_)

    async def _analyse(self, loop: CampaignLoop, c: CompletedEvaluation) -> None:
        parent = self.store.parent_info(c.parent_ids[0]) if c.parent_ids else None
        child = ParentInfo(candidate_id=c.candidate_id, name=c.name, code=c.code, genome=c.genome,
                           fitness=c.fitness, metrics=c.metrics, motivation=c.motivation)
        try:
            text = await self.analyst.analyse(child, parent, c.metrics)
        except BudgetExhausted as err:
            loop.note_exhausted(str(err))
            return
        except LLMFatalError:
            raise
        except Exception as err:
            self.store.record_event("analyst_failed", f"#{c.candidate_id}: {err}"[:2000])
            return
        self.store.add_insight(c.candidate_id, text, model=_model_of(self.analyst))

    def _update_bandit(self, c: CompletedEvaluation) -> None:
        update = getattr(self.researcher_chooser, "update", None)
        cost = self.proposer.cost_by_code.pop(c.code, None)
        if update is None or cost is None:
            return
        parent_fit = self.store.best_parent_fitness(c.parent_ids)
        gain = (c.fitness if c.fitness is not None else 0.0) - (parent_fit if parent_fit is not None else 0.5)
        model = c.origin_model
        if model:
            update(model, gain, cost)


def _model_of(agent: Any) -> str | None:
    chooser_ = getattr(agent, "models", None) or getattr(agent, "chooser", None)
    spec = getattr(chooser_, "spec", None)
    return getattr(spec, "model", None)


def _knowledge_text(entry: Any) -> str:
    if entry.kind == "principle":
        return (f"{entry.title} [{entry.source}]: when {entry.trigger}: {entry.principle} "
                f"(how: {entry.hint})")
    return f"{entry.title} [{entry.source}]: {entry.body[:600]}"


def load_builtin_knowledge(db: Database, task: str) -> tuple[int, int]:
    """Load the built-in design-principle pack for ``task``; returns (added, already present)."""
    added = skipped = 0
    with db.session() as s:
        for p in load_builtin_pack(task):
            _, created = repo.add_knowledge(s, kind="principle", task=task, title=p.title, source=p.source,
                                            trigger=p.trigger, principle=p.principle, hint=p.hint)
            added += int(created)
            skipped += int(not created)
    return added, skipped


def extract_principles(db: Database, docs: list[dict[str, str]], task: str, model: str,
                       api_base: str | None, llm: LLM | None = None) -> list[dict[str, Any]]:
    """Distil design principles from papers with the knowledge extractor (calls are logged)."""
    from agents.extractor import KnowledgeExtractor

    problem = check_credentials(model, api_base)
    if problem and llm is None:
        raise UserError(problem)
    the_llm = llm or LiteLLM(on_call=CallLogger(db, None))
    extractor = KnowledgeExtractor(the_llm, FixedModel(ModelSpec(model=model, api_base=api_base)), task=task)

    async def run() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for d in docs:
            text = "\n\n".join(x for x in (d["abstract"], d["body"]) if x)
            for p in await extractor.extract(d["title"], text):
                out.append({"kind": "principle", "title": p.title, "source": p.source or d["title"],
                            "trigger": p.trigger, "principle": p.principle, "hint": p.hint})
        return out

    return asyncio.run(run())


def build_llm_side(cfg: CampaignConfig, db: Database, store: CampaignStore, task: Task,
                   llm: LLM | None = None) -> tuple[Any, LLMHooks, list[Any]]:
    """The researcher proposer and the hooks of an LLM campaign. ``llm`` may be injected (tests)."""
    from agents.analyst import Analyst
    from agents.debugger import Debugger
    from agents.researcher import Researcher

    logger = CallLogger(db, cfg.name, cfg.budget.max_llm_dollars)
    if llm is None:
        check_llm_config(cfg)
        llm = make_llm(cfg, logger)
    else:
        attach_logger(llm, logger)
    if cfg.proposer.load_builtin_knowledge:
        load_builtin_knowledge(db, task.name)
    research_chooser = chooser(cfg, "researcher")
    researcher = Researcher(llm, research_chooser, max_attempts=1 + cfg.proposer.validator_retries)
    # (an injected LLM with a sink of its own logs elsewhere: nothing to link then)
    proposer = CostTrackingProposer(researcher, llm,
                                    logger if getattr(llm, "on_call", None) is logger else None)
    debugger = Debugger(llm, chooser(cfg, "debugger"), max_rounds=cfg.proposer.debug_rounds)
    analyst = Analyst(llm, chooser(cfg, "analyst"), task=task.name)
    hooks = LLMHooks(cfg, store, proposer, debugger, analyst, research_chooser)
    return proposer, hooks, []
