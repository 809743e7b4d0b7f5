"""The campaign loop (DESIGN.md section 2), one reference implementation read top to bottom.

    policy.suggest -> proposer.propose -> static policy -> novelty -> runner.submit
    -> (sandbox child runs the task's stages) -> driver writes results -> policy.observe

``max_in_flight`` evaluations run while new proposals are prepared (LLM calls are async).
Every state change is committed before the next step: a candidate is ``running`` in the
database before its job is submitted, and its evaluation rows, status and fitness are written
in one transaction when the result arrives. A ``kill -9`` therefore loses at most the
evaluations in flight, which resume re-queues; nothing is evaluated twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agents.llm import LLMFatalError
from agents.types import BudgetExhausted, FailureInfo, Proposal, ProposalError, Proposer
from discovery.config import CampaignConfig
from discovery.fidelity import promotable
from discovery.hooks import CampaignHooks, NullHooks
from discovery.policies import ArchiveView, EvaluatedCandidate, Policy
from discovery.progress import NullReporter, Reporter
from discovery.runners import EvalJob, JobOutcome, Runner
from discovery.store import CampaignStore, CompletedEvaluation, QueuedCandidate, merged_metrics
from evaluator.types import StageResult, Task, TargetSpec
from sandbox.api import EvalRequest, SandboxLimits

# Stop asking a proposer that keeps producing rejected or duplicate programs.
MAX_CONSECUTIVE_REJECTIONS = 64


@dataclass
class CampaignSummary:
    campaign_id: str
    stop_reason: str
    evaluated: int
    failed: int
    rejected: int
    duplicates: int
    wall_s: float
    counts: dict[str, int] = field(default_factory=dict)


class CampaignLoop:
    """Runs one campaign to its budget. Collaborators are injected, never built here."""

    def __init__(
        self, cfg: CampaignConfig, store: CampaignStore, task: Task, proposer: Proposer,
        make_policy: Callable[[], Policy], runner: Runner, limits: SandboxLimits,
        reporter: Reporter | None = None, hooks: CampaignHooks | None = None,
        check_code=None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.task = task
        self.proposer = proposer
        self._make_policy = make_policy
        self.policy = make_policy()
        self.runner = runner
        self.limits = limits
        self.reporter = reporter or NullReporter()
        self.hooks = hooks or NullHooks()
        self._check_code = check_code  # sandbox.check: static policy before anything runs
        self._rng = random.Random(cfg.seed)
        self._archive: list[EvaluatedCandidate] = []
        self._queue: list[QueuedCandidate] = []
        self._constraint_stages = {
            s.name for r in range(task.rungs()) for s in task.stages(r) if s.constraint
        }
        self._consecutive_rejections = 0
        self._t0 = time.monotonic()
        self._stop_reason: str | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._exhausted: str | None = None  # a budget an agent found spent (BudgetExhausted)
        # Fidelity ladder: (candidate id, rung) waiting for a slot, and those in flight.
        self._promotions: list[tuple[int, int]] = []
        self._promoting: set[tuple[int, int]] = set()

    # ------------------------------------------------------------------ set-up / resume
    def _start(self) -> None:
        resumed = self.store.open_campaign(self.cfg, self.task)
        self._queue = self.store.queued()
        done = self.store.finished_candidates()
        for cand in done:
            self._observe(cand)
        self.reporter.start(self.cfg, resumed=resumed, done=len(done), queued=len(self._queue))

    def _observe(self, cand: EvaluatedCandidate) -> None:
        self._archive.append(cand)
        self.policy.observe(cand)

    def _rebuild_after_reference(self) -> None:
        """The reference seed just finished: fitness of earlier candidates can now be computed."""
        updated = self.store.recompute_fitness()
        if not updated:
            return
        done = self.store.finished_candidates()
        self._archive.clear()
        self.policy = self._make_policy()
        for cand in done:
            self._observe(cand)

    # ------------------------------------------------------------------ budgets
    def _hard_stop(self) -> str | None:
        """Reasons to stop starting any new evaluation (queued ones wait for a resume)."""
        b = self.cfg.budget
        if self._exhausted is not None:
            return self._exhausted
        if time.monotonic() - self._t0 > b.max_wall_minutes * 60:
            return f"max_wall_minutes reached ({b.max_wall_minutes:g})"
        if b.max_llm_dollars is not None and self.store.llm_dollars() >= b.max_llm_dollars:
            return f"max_llm_dollars reached (${b.max_llm_dollars:g})"
        if self._consecutive_rejections >= MAX_CONSECUTIVE_REJECTIONS:
            return f"proposer produced {MAX_CONSECUTIVE_REJECTIONS} rejected or duplicate programs in a row"
        return self.hooks.extra_stop_reason(self)

    def evaluations_left(self, pending: int = 0) -> int:
        started = self.store.evaluations_started()
        return self.cfg.budget.max_evaluations - started - len(self._queue) - pending

    def _slots_for_new_proposals(self, pending: int) -> int:
        free = self.cfg.runner.max_in_flight - self.runner.in_flight - len(self._queue) - pending
        return max(0, min(self.evaluations_left(pending), free))

    def note_exhausted(self, reason: str) -> None:
        """An agent found a budget spent (e.g. LLM dollars): stop starting new work."""
        self._exhausted = self._exhausted or reason

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run background work (analyst, debugger) that the loop waits for before finishing."""
        self._background.add(asyncio.ensure_future(coro))

    # ------------------------------------------------------------------ proposing
    def _archive_view(self) -> ArchiveView:
        return ArchiveView(
            task=self.task.name, interface=self.task.interface(),
            candidates=tuple(self._archive), evaluations_left=max(0, self.evaluations_left()),
        )

    def _recent_failures(self, n: int = 3) -> tuple[FailureInfo, ...]:
        return tuple(self.store.recent_failures(n))

    async def _propose_one(self) -> None:
        ctx = self.policy.suggest(self._archive_view(), 1)[0]
        ctx = replace(ctx, recent_failures=self._recent_failures())
        ctx = self.hooks.enrich_context(self, ctx)
        try:
            proposal = await self.proposer.propose(ctx)
        except BudgetExhausted as err:
            self._exhausted = str(err)
            return
        except LLMFatalError:  # a setup bug (test guard, exhausted script): fail loudly
            raise
        except ProposalError as err:
            self.store.record_validator_failure(ctx, str(err), err.reply, err.llm_call_ids)
            self._consecutive_rejections += 1
            self.reporter.note(f"proposer reply unusable: {err}")
            return
        except Exception as err:  # e.g. an LLM provider down after all retries: not a candidate
            self.store.record_event("proposer_error", f"{type(err).__name__}: {err}"[:2000])
            self._consecutive_rejections += 1
            self.reporter.note(f"proposer failed: {type(err).__name__}: {str(err)[:200]}")
            return
        self.admit(proposal)

    def admit(self, proposal: Proposal, debug_of: int | None = None, debug_round: int = 0) -> None:
        """Static policy, then novelty, then queue. Rejections are recorded, never silent."""
        violation = self._check_code(proposal.code, self.task) if self._check_code else None
        if violation is not None:
            cid = self.store.add_rejected(proposal, violation.kind, violation.message, debug_of)
            self._consecutive_rejections += 1
            self.reporter.rejected(cid, proposal.name, violation.kind.value, violation.message)
            self.hooks.after_rejection(self, cid, proposal, violation, debug_round)
            return
        dup_of, why = self.store.duplicate_of(proposal.code), "duplicate"
        if dup_of is None and proposal.genome is None:  # free-form code: near-duplicates too
            dup_of, sim = self.store.most_similar(proposal.code)
            if dup_of is not None and sim < self.cfg.proposer.max_similarity:
                dup_of = None
            why = f"near-duplicate (similarity {sim:.3f})"
        if dup_of is not None:
            cid = self.store.add_duplicate(proposal, dup_of, debug_of, why)
            self._consecutive_rejections += 1
            self.reporter.duplicate(cid, proposal.name, dup_of)
            return
        self._consecutive_rejections = 0
        queued = self.store.add_queued(proposal, debug_of=debug_of, debug_round=debug_round)
        self._queue.append(queued)

    # ------------------------------------------------------------------ evaluating
    def _target(self) -> TargetSpec:
        return self.cfg.targets[0]

    def _job(self, cand: QueuedCandidate, rung: int = 0) -> EvalJob:
        stages = [
            s.model_copy(update={"timeout_s": s.timeout_s * self.cfg.sandbox.timeout_scale})
            for s in self.task.stages(rung)
        ]
        request = EvalRequest(
            task=self.task.name, task_options=self.cfg.task.options, code=cand.code,
            stages=stages, target=self._target(), continue_on_constraint=cand.is_seed,
            seed=self.cfg.seed,
        )
        return EvalJob(candidate_id=cand.id, attempt=cand.attempts + 1, rung=rung,
                       request=request, limits=self.limits)

    def _submit_queued(self) -> None:
        slots = self.cfg.runner.max_in_flight
        while self._promotions and self.runner.in_flight < slots:  # promotions go first
            cid, rung = self._promotions.pop(0)
            job = self._job(self.store.queued_candidate(cid), rung)
            self.store.mark_attempt(cid, job.attempt)
            self.runner.submit(job)
        budget = self.cfg.budget.max_evaluations
        while (self._queue and self.runner.in_flight < slots
               and self.store.evaluations_started() < budget):
            cand = self._queue.pop(0)
            job = self._job(cand)
            self.store.mark_running(cand.id, job.attempt)  # committed before submission
            self.runner.submit(job)
            self.reporter.submitted(cand.id, cand.name)

    def _schedule_promotions(self) -> None:
        """Successive halving: the top fraction of each rung climbs to the next one. The
        reference seed always climbs first, so higher rungs have something to compare with."""
        f = self.cfg.fidelity
        top = min(f.max_rung, self.task.rungs() - 1)
        ref = self.store.reference_id()
        for rung in range(top):
            done_next = self.store.reached_rung(rung + 1) | {c for c, r in self._promoting if r == rung + 1}
            scores = self.store.rung_scores(rung)
            chosen = promotable(scores, done_next, f.promote_fraction, f.min_to_promote)
            if ref is not None and ref in scores and ref not in done_next and chosen:
                chosen.insert(0, ref)
            for cid in chosen:
                self._promotions.append((cid, rung + 1))
                self._promoting.add((cid, rung + 1))
                self.reporter.note(f"#{cid} promoted to rung {rung + 1}")

    def _handle(self, result: JobOutcome) -> None:
        job = result.job
        if result.outcome is None:  # platform failure: retry a bounded number of times
            retry = job.attempt - self._first_attempt(job) < self.cfg.runner.infra_retries
            self.store.record_infra_failure(job.candidate_id, job.attempt, result.infra_error or "",
                                            will_retry=retry, rung=job.rung)
            self.reporter.note(
                f"#{job.candidate_id}: infra failure (attempt {job.attempt})"
                + ("; retrying" if retry else "; giving up")
            )
            if retry and job.rung > 0:
                self._promotions.insert(0, (job.candidate_id, job.rung))
            elif retry:
                self._queue.insert(0, self.store.queued_candidate(job.candidate_id))
            else:
                self._promoting.discard((job.candidate_id, job.rung))
            return
        if job.rung > 0:
            self._promoting.discard((job.candidate_id, job.rung))
            done = self.store.write_rung_completion(
                job.candidate_id, job.attempt, job.rung, result.outcome.results, result.wall_s,
                self.task.objectives(merged_metrics(result.outcome.results)),
            )
            self.reporter.completed(done)
            self._schedule_promotions()
            return
        completed = self._complete(job, result.outcome.results, result.outcome.log_tail, result.wall_s)
        self.reporter.completed(completed)
        if completed.is_reference:
            self._rebuild_after_reference()
        else:
            self._observe(completed.as_evaluated())
        self.hooks.after_completion(self, completed)
        if self.cfg.fidelity.max_rung > 0:
            self._schedule_promotions()

    def _first_attempt(self, job: EvalJob) -> int:
        """The attempt number this rung's evaluation started at (attempts count across rungs)."""
        return self.store.first_attempt_at(job.candidate_id, job.rung, default=job.attempt)

    def _complete(self, job: EvalJob, results: Sequence[StageResult], log_tail: str,
                  wall_s: float) -> CompletedEvaluation:
        failed = [r for r in results if not r.ok]
        hard = [r for r in failed if r.stage not in self._constraint_stages]
        feasible = not any(r.stage in self._constraint_stages for r in failed)
        ran_all = not hard and (not failed or job.request.continue_on_constraint)
        status = "evaluated" if ran_all else "failed"
        metrics = merged_metrics(results)
        objectives = self.task.objectives(metrics) if status == "evaluated" else []
        first = failed[0] if failed else None
        return self.store.write_completion(
            job.candidate_id, job.attempt, job.rung, results, status=status, feasible=feasible,
            objectives=objectives, failure=first, log_tail=log_tail, wall_s=wall_s,
        )

    # ------------------------------------------------------------------ main loop
    async def run(self) -> CampaignSummary:
        self._start()
        proposing: set[asyncio.Task[None]] = set()
        try:
            while True:
                hard = self._hard_stop()
                if hard is None:
                    self._submit_queued()
                    for _ in range(self._slots_for_new_proposals(len(proposing))):
                        proposing.add(asyncio.ensure_future(self._propose_one()))
                busy = proposing or self._background or self.runner.in_flight or (
                    self._promotions and hard is None)
                spent = self.store.evaluations_started() >= self.cfg.budget.max_evaluations
                if not busy and (not self._queue or hard is not None or spent):
                    self._stop_reason = hard
                    break
                waiters: set[asyncio.Future[Any]] = set(proposing) | set(self._background)
                waiter = None
                if self.runner.in_flight:
                    waiter = asyncio.ensure_future(asyncio.to_thread(self.runner.wait, 0.5))
                    waiters.add(waiter)
                if waiters:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for t in [t for t in proposing | self._background if t.done()]:
                    proposing.discard(t)
                    self._background.discard(t)
                    t.result()  # re-raise platform bugs; candidate failures are handled inside
                if waiter is not None:
                    for outcome in await waiter:
                        self._handle(outcome)
        except (KeyboardInterrupt, asyncio.CancelledError):
            for t in proposing | self._background:
                t.cancel()
            self.store.finish("stopped", "interrupted")
            raise
        except Exception as err:  # a platform failure: record why, keep what was done
            for t in proposing | self._background:
                t.cancel()
            self.store.finish("stopped", f"error: {type(err).__name__}: {err}"[:2000])
            raise
        if self._stop_reason is None and self.evaluations_left() <= 0:
            self._stop_reason = f"max_evaluations reached ({self.cfg.budget.max_evaluations})"
        reason = self._stop_reason or "queue empty"
        self.store.finish("finished", reason)
        counts = self.store.status_counts()
        summary = CampaignSummary(
            campaign_id=self.cfg.name, stop_reason=reason,
            evaluated=counts.get("evaluated", 0), failed=counts.get("failed", 0),
            rejected=counts.get("rejected", 0), duplicates=counts.get("duplicate", 0),
            wall_s=time.monotonic() - self._t0, counts=counts,
        )
        self.reporter.finish(summary)
        return summary

