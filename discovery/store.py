"""The campaign's view of the knowledge base: every state transition of the loop as one
committed transaction (DESIGN.md section 7, "every state change is committed before the next
step").

The loop never holds a session across an ``await``; each method opens, commits and closes
its own. Repository functions (``knowledge_base.repository``) do the SQL; this module owns the
campaign semantics: statuses, attempts, fitness against the reference seed, resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.types import FailureInfo, ParentInfo, Proposal, ProposalContext
from discovery.config import CampaignConfig
from discovery.errors import UserError
from discovery.fitness import fitness as fitness_of
from discovery.policies.base import EvaluatedCandidate
from evaluator.types import FailureKind, Objective, StageResult, Task
from knowledge_base import repository as repo
from knowledge_base.db import Database
from knowledge_base.models import Candidate
from knowledge_base.novelty import NoveltyIndex, normalized_code_hash

FINISHED = ("evaluated", "failed")
STARTED = ("running", "evaluated", "failed")


@dataclass(frozen=True)
class QueuedCandidate:
    id: int
    name: str
    code: str
    is_seed: bool
    attempts: int


@dataclass(frozen=True)
class CompletedEvaluation:
    candidate_id: int
    name: str
    status: str
    feasible: bool
    fitness: float | None
    metrics: dict[str, float]
    objectives: dict[str, float]
    failure_kind: str | None
    failure_stage: str | None
    failure_message: str | None
    wall_s: float
    is_seed: bool
    is_reference: bool
    code: str
    genome: dict[str, Any] | None
    motivation: str
    parent_ids: tuple[int, ...]
    origin: str = ""

    @property
    def origin_model(self) -> str | None:
        return self.origin[4:] if self.origin.startswith("llm:") else None

    def as_evaluated(self) -> EvaluatedCandidate:
        return EvaluatedCandidate(
            id=self.candidate_id, name=self.name, code=self.code, genome=self.genome,
            status=self.status, fitness=self.fitness, feasible=self.feasible,
            is_seed=self.is_seed, metrics=self.metrics, motivation=self.motivation,
        )


def _metrics_of(cand: Candidate, rung: int | None = None) -> dict[str, float]:
    """Metrics of the candidate's successful stages: the highest rung wins; within a rung
    the first stage to report a name wins (the same rule as the loop's completion)."""
    out: dict[str, float] = {}
    for ev in sorted(cand.evaluations, key=lambda e: (-e.rung, e.id)):
        if ev.ok and (rung is None or ev.rung == rung):
            for k, v in (ev.metrics or {}).items():
                out.setdefault(k, v)
    return out


def _failure_tail(evaluations: Sequence[Any]) -> str:
    """Log tail of the most recent failed stage row ("" if none failed)."""
    return next((e.log_tail for e in reversed(evaluations) if not e.ok), "") or ""


def merged_metrics(results: Sequence[StageResult]) -> dict[str, float]:
    """Metrics of one evaluation: the first stage to report a name wins (conformance's
    `params` is at the task's setting, profile's at its own)."""
    out: dict[str, float] = {}
    for r in results:
        for k, v in r.metrics.items():
            out.setdefault(k, v)
    return out


class CampaignStore:
    def __init__(self, db: Database, cfg: CampaignConfig, task: Task) -> None:
        self.db = db
        self.cfg = cfg
        self.task = task
        self.campaign_id = cfg.name
        self._reference: dict[str, float] | None = None
        self._novelty = NoveltyIndex()
        self._novelty_size = -1
        self._validator_failures: int | None = None  # counted once from the DB, then kept

    # ------------------------------------------------------------------ campaign
    def open_campaign(self, cfg: CampaignConfig, task: Task) -> bool:
        """Create the campaign with its seeds, or resume it. Returns True when resuming."""
        with self.db.session() as s:
            existing = repo.get_campaign(s, cfg.name)
            if existing is not None:
                if existing.task != cfg.task.name:
                    raise UserError(
                        f"campaign {cfg.name!r} already exists in this database with task "
                        f"{existing.task!r}, not {cfg.task.name!r}; choose another `name` in the config"
                    )
                existing.config = cfg.resolved()
                existing.config_hash = cfg.config_hash()
                requeued = repo.requeue_interrupted(s, cfg.name)
                repo.set_campaign_status(s, cfg.name, "running", None)
                repo.add_event(s, cfg.name, "resumed", f"resumed; {len(requeued)} interrupted evaluation(s) re-queued",
                               {"requeued": [c.id for c in requeued]})
                return True
            repo.create_campaign(s, cfg.name, cfg.task.name, cfg.resolved(), cfg.config_hash())
            ref_name = cfg.reference or getattr(task, "reference_seed", None)
            seeds = task.seeds()
            names = [sd.name for sd in seeds]
            if ref_name is None:
                ref_name = next((sd.name for sd in seeds if sd.reference), names[0] if names else None)
            if ref_name not in names:
                raise UserError(
                    f"reference = {ref_name!r}: no such seed in task {task.name}; choose one of {', '.join(names)}"
                )
            for sd in seeds:
                cand = repo.add_candidate(
                    s, cfg.name, name=sd.name, code=sd.code,
                    code_hash=normalized_code_hash(sd.code), motivation=sd.motivation,
                    genome=dict(sd.genome) if sd.genome is not None else None, origin="seed",
                    status="queued", is_seed=True, is_reference=(sd.name == ref_name),
                )
                if sd.name == ref_name:
                    repo.set_reference_candidate(s, cfg.name, cand.id)
            repo.add_event(s, cfg.name, "created", f"campaign created with {len(seeds)} seeds",
                           {"config_hash": cfg.config_hash(), "reference": ref_name})
            return False

    def finish(self, status: str, reason: str) -> None:
        with self.db.session() as s:
            repo.set_campaign_status(s, self.campaign_id, status, reason)
            repo.add_event(s, self.campaign_id, status, reason, {})

    # ------------------------------------------------------------------ reads
    def queued(self) -> list[QueuedCandidate]:
        with self.db.read_session() as s:
            return [self._queued(c) for c in repo.candidates(s, self.campaign_id, "queued")]

    def queued_candidate(self, candidate_id: int) -> QueuedCandidate:
        with self.db.read_session() as s:
            return self._queued(repo.get_candidate(s, candidate_id))

    @staticmethod
    def _queued(c: Candidate) -> QueuedCandidate:
        return QueuedCandidate(id=c.id, name=c.name, code=c.code, is_seed=c.is_seed, attempts=c.attempts)

    def finished_candidates(self) -> list[EvaluatedCandidate]:
        with self.db.read_session() as s:
            rows = sorted(repo.candidates(s, self.campaign_id, FINISHED),
                          key=lambda c: (c.updated_at, c.id))  # completion order
            return [
                EvaluatedCandidate(
                    id=c.id, name=c.name, code=c.code, genome=c.genome, status=c.status,
                    fitness=c.fitness, feasible=bool(c.feasible), is_seed=c.is_seed,
                    metrics=_metrics_of(c), motivation=c.motivation,
                )
                for c in rows
            ]

    def evaluations_started(self) -> int:
        """Candidates that took an evaluation slot. An unusable LLM reply is stored as a
        ``failed`` candidate of kind ``validator`` but never ran, so it does not count."""
        with self.db.read_session() as s:
            counts = repo.count_by_status(s, self.campaign_id)
            if self._validator_failures is None:
                self._validator_failures = sum(
                    1 for c in repo.candidates(s, self.campaign_id, "failed")
                    if c.failure_kind == FailureKind.VALIDATOR.value)
        return sum(counts.get(k, 0) for k in STARTED) - self._validator_failures

    def status_counts(self) -> dict[str, int]:
        with self.db.read_session() as s:
            return dict(repo.count_by_status(s, self.campaign_id))

    def llm_dollars(self) -> float:
        with self.db.read_session() as s:
            return float(repo.ledger_sum(s, self.campaign_id, "llm_dollars"))

    def recent_failures(self, n: int) -> list[FailureInfo]:
        with self.db.read_session() as s:
            rows = repo.candidates(s, self.campaign_id, ("failed", "rejected"), limit=n, newest_first=True)
            out = []
            for c in rows:
                tail = _failure_tail(c.evaluations)
                out.append(FailureInfo(
                    candidate_id=c.id, name=c.name, stage=c.failure_stage or "load",
                    failure_kind=c.failure_kind or "", message=c.failure_message or "",
                    log_tail=tail or "", code=c.code,
                ))
            return out

    def reference_metrics(self) -> dict[str, float] | None:
        if self._reference is not None:
            return self._reference
        with self.db.read_session() as s:
            camp = repo.get_campaign(s, self.campaign_id)
            if camp is None or camp.reference_candidate_id is None:
                return None
            ref = repo.get_candidate(s, camp.reference_candidate_id)
            if ref.status != "evaluated":
                return None
            self._reference = {k: float(v) for k, v in (ref.objectives or {}).items()}
            return self._reference

    def genomes(self) -> list[dict[str, Any]]:
        """Genomes of every candidate proposed so far (the offline proposer avoids repeats)."""
        with self.db.read_session() as s:
            return [dict(c.genome) for c in repo.candidates(s, self.campaign_id) if c.genome]

    def debug_round(self, candidate_id: int) -> int:
        with self.db.read_session() as s:
            return int(repo.require_candidate(s, candidate_id).debug_round or 0)

    def log_tail(self, candidate_id: int) -> str:
        with self.db.read_session() as s:
            return _failure_tail(repo.evaluations_for(s, candidate_id))

    def parent_info(self, candidate_id: int) -> ParentInfo:
        with self.db.read_session() as s:
            c = repo.require_candidate(s, candidate_id)
            return ParentInfo(candidate_id=c.id, name=c.name, code=c.code, genome=c.genome,
                              fitness=c.fitness, metrics=_metrics_of(c), motivation=c.motivation)

    def best_parent_fitness(self, parent_ids: Sequence[int]) -> float | None:
        with self.db.read_session() as s:
            fits = [c.fitness for pid in parent_ids if (c := repo.get_candidate(s, pid)) and c.fitness is not None]
        return max(fits) if fits else None

    def add_insight(self, candidate_id: int, text: str, model: str | None = None) -> None:
        with self.db.session() as s:
            repo.add_insight(s, self.campaign_id, text, candidate_id=candidate_id, model=model)

    # ------------------------------------------------------------------ novelty
    def duplicate_of(self, code: str) -> int | None:
        with self.db.read_session() as s:
            hit = repo.find_candidate_by_hash(s, self.campaign_id, normalized_code_hash(code))
            return hit.id if hit is not None else None

    def most_similar(self, code: str) -> tuple[int | None, float]:
        """The most similar evaluated candidate and the similarity (novelty check)."""
        with self.db.read_session() as s:
            if self._novelty_size != len(done := repo.candidates(s, self.campaign_id, "evaluated")):
                self._novelty = NoveltyIndex()
                for c in done:
                    self._novelty.add(c.id, c.code)
                self._novelty_size = len(done)
        key, sim = self._novelty.max_similarity(code)
        return (int(key) if key is not None else None), sim

    def record_event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        with self.db.session() as s:
            repo.add_event(s, self.campaign_id, kind, message, data or {})

    # ------------------------------------------------------------------ writes
    def _add(self, s, proposal: Proposal, status: str, debug_of: int | None, debug_round: int = 0,
             inspirations: Sequence[int] = (), **extra: Any) -> Candidate:
        parents = list(proposal.parent_ids) if debug_of is None else [debug_of]
        kind = "debug" if debug_of is not None else ("crossover" if len(parents) > 1 else "parent")
        c = repo.add_candidate(
            s, self.campaign_id, name=proposal.name[:200], code=proposal.code,
            code_hash=normalized_code_hash(proposal.code), motivation=proposal.motivation,
            genome=dict(proposal.genome) if proposal.genome is not None else None,
            origin=proposal.origin, status=status, parent_ids=parents, edge_kind=kind,
            inspiration_ids=list(inspirations), debug_round=debug_round,
        )
        for key, value in extra.items():
            setattr(c, key, value)
        s.flush()
        repo.link_llm_calls(s, proposal.llm_call_ids, c.id)
        return c

    def add_queued(self, proposal: Proposal, debug_of: int | None = None, debug_round: int = 0) -> QueuedCandidate:
        with self.db.session() as s:
            c = self._add(s, proposal, "queued", debug_of, debug_round)
            return self._queued(c)

    def add_rejected(self, proposal: Proposal, kind: FailureKind, message: str, debug_of: int | None) -> int:
        with self.db.session() as s:
            c = self._add(s, proposal, "rejected", debug_of, failure_kind=kind.value,
                          failure_stage="load", failure_message=message)
            repo.add_evaluations(s, c.id, [StageResult.failure("load", kind, message, target=self._target())], attempt=1)
            return c.id

    def add_duplicate(self, proposal: Proposal, duplicate_of: int, debug_of: int | None,
                      why: str = "duplicate") -> int:
        with self.db.session() as s:
            c = self._add(s, proposal, "duplicate", debug_of,
                          failure_message=f"{why} of candidate #{duplicate_of}")
            return c.id

    def record_validator_failure(self, ctx: ProposalContext, message: str, reply: str,
                                 llm_call_ids: Sequence[int] = ()) -> int:
        proposal = Proposal(
            name="unparseable-reply", motivation=message, code=reply or "",
            parent_ids=tuple(p.candidate_id for p in ctx.parents), origin="validator",
            llm_call_ids=tuple(llm_call_ids),
        )
        with self.db.session() as s:
            c = self._add(s, proposal, "failed", None, failure_kind=FailureKind.VALIDATOR.value,
                          failure_stage="propose", failure_message=message)
            cid = c.id
        if self._validator_failures is not None:
            self._validator_failures += 1
        return cid

    def mark_running(self, candidate_id: int, attempt: int) -> None:
        with self.db.session() as s:
            c = repo.get_candidate(s, candidate_id)
            c.status = "running"
            c.attempts = attempt

    def record_infra_failure(self, candidate_id: int, attempt: int, error: str, will_retry: bool,
                             rung: int = 0) -> None:
        with self.db.session() as s:
            c = repo.get_candidate(s, candidate_id)
            repo.add_evaluations(
                s, c.id, [StageResult.failure("infra", FailureKind.INFRA, error, target=self._target(),
                                              rung=rung)],
                attempt=attempt,
            )
            if rung > 0:  # a failed promotion leaves the candidate's rung-0 result standing
                repo.add_event(s, self.campaign_id, "infra_failure", error[:500],
                               {"candidate": candidate_id, "attempt": attempt, "rung": rung,
                                "retry": will_retry})
                return
            if will_retry:
                c.status = "queued"
            else:
                c.status = "failed"
                c.failure_kind = FailureKind.INFRA.value
                c.failure_stage = "infra"
                c.failure_message = error[:4000]
            repo.add_event(s, self.campaign_id, "infra_failure", error[:500],
                           {"candidate": candidate_id, "attempt": attempt, "retry": will_retry})

    def write_completion(
        self, candidate_id: int, attempt: int, rung: int, results: Sequence[StageResult], *,
        status: str, feasible: bool, objectives: Sequence[Objective], failure: StageResult | None,
        log_tail: str, wall_s: float,
    ) -> CompletedEvaluation:
        """Evaluation rows + status + fitness + ledger in ONE transaction."""
        with self.db.session() as s:
            c = repo.get_candidate(s, candidate_id)
            repo.add_evaluations(s, c.id, results, attempt=attempt)
            c.status = status
            c.feasible = feasible
            c.rung = max(c.rung or 0, rung)
            c.objectives = {o.name: o.value for o in objectives} or None
            if failure is not None:
                c.failure_kind = failure.failure_kind.value if failure.failure_kind else None
                c.failure_stage = failure.stage
                c.failure_message = failure.message[:4000]
            if c.is_reference and status == "evaluated":
                self._reference = dict(c.objectives or {})
            c.fitness = self._fitness(objectives) if status == "evaluated" else None
            repo.add_ledger_entry(s, self.campaign_id, "evaluation", 1.0, candidate_id=c.id)
            self._charge_time(s, c.id, wall_s)
            s.flush()
            metrics: dict[str, float] = {}
            for r in results:
                metrics.update(r.metrics)
            return CompletedEvaluation(
                candidate_id=c.id, name=c.name, status=status, feasible=feasible, fitness=c.fitness,
                metrics=metrics, objectives=dict(c.objectives or {}), failure_kind=c.failure_kind,
                failure_stage=c.failure_stage, failure_message=c.failure_message, wall_s=wall_s,
                is_seed=c.is_seed, is_reference=c.is_reference, code=c.code, genome=c.genome,
                motivation=c.motivation, origin=c.origin,
                parent_ids=tuple(p.id for p in repo.parents_of(s, c.id, ("parent", "crossover", "debug"))),
            )

    # ------------------------------------------------------------------ fidelity ladder
    def mark_attempt(self, candidate_id: int, attempt: int) -> None:
        """A promotion starts: count the attempt, keep the candidate's status."""
        with self.db.session() as s:
            repo.require_candidate(s, candidate_id).attempts = attempt

    def reference_id(self) -> int | None:
        with self.db.read_session() as s:
            camp = repo.get_campaign(s, self.campaign_id)
            return camp.reference_candidate_id if camp is not None else None

    def first_attempt_at(self, candidate_id: int, rung: int, default: int) -> int:
        with self.db.read_session() as s:
            attempts = [e.attempt for e in repo.evaluations_for(s, candidate_id, rung=rung)]
        return min(attempts, default=default)

    def reached_rung(self, rung: int) -> set[int]:
        """Candidates with a non-infra result at ``rung`` (done, whether they passed or not)."""
        with self.db.read_session() as s:
            return {e.candidate_id for e in repo.campaign_evaluations(s, self.campaign_id)
                    if e.rung == rung and e.failure_kind != FailureKind.INFRA.value}

    def rung_scores(self, rung: int) -> dict[int, float]:
        """Fitness of every feasible candidate at ``rung``, from that rung's metrics only,
        against the reference's metrics at the same rung (rung 0 when it has none there)."""
        with self.db.read_session() as s:
            camp = repo.require_campaign(s, self.campaign_id)
            ref = repo.get_candidate(s, camp.reference_candidate_id) if camp.reference_candidate_id else None
            if ref is None:
                return {}
            ref_obj = self._objectives_at(ref, rung) or self._objectives_at(ref, 0)
            out: dict[int, float] = {}
            for c in repo.candidates(s, self.campaign_id, "evaluated"):
                if not c.feasible and not c.is_reference:
                    continue
                m = _metrics_of(c, rung)
                if not m or not any(e.rung == rung and e.ok for e in c.evaluations):
                    continue
                fit = self._score(self.task.objectives(m), ref_obj)
                if fit is not None:
                    out[c.id] = fit
            return out

    def write_rung_completion(self, candidate_id: int, attempt: int, rung: int,
                              results: Sequence[StageResult], wall_s: float,
                              objectives: Sequence[Objective]) -> CompletedEvaluation:
        """A promotion finished: its rows, and (if it passed) the candidate's objectives and
        fitness at its highest rung. One transaction."""
        with self.db.session() as s:
            c = repo.require_candidate(s, candidate_id)
            repo.add_evaluations(s, c.id, results, attempt=attempt)
            failure = next((r for r in results if not r.ok), None)
            if failure is None:
                c.rung = max(c.rung or 0, rung)
                c.objectives = {o.name: o.value for o in objectives} or c.objectives
                camp = repo.require_campaign(s, self.campaign_id)
                ref = repo.get_candidate(s, camp.reference_candidate_id) if camp.reference_candidate_id else None
                ref_obj = self._objectives_at(ref, rung) if ref is not None else {}
                if ref_obj:
                    c.fitness = self._score(objectives, ref_obj)
            self._charge_time(s, c.id, wall_s)
            repo.add_event(s, self.campaign_id, "rung_done",
                           f"#{c.id} rung {rung}: " + ("ok" if failure is None else f"failed {failure.stage}"),
                           {"candidate": c.id, "rung": rung, "ok": failure is None})
            s.flush()
            return CompletedEvaluation(
                candidate_id=c.id, name=f"{c.name} (rung {rung})", status=c.status,
                feasible=bool(c.feasible), fitness=c.fitness, metrics=merged_metrics(results),
                objectives=dict(c.objectives or {}),
                failure_kind=failure.failure_kind.value if failure and failure.failure_kind else None,
                failure_stage=failure.stage if failure else None,
                failure_message=failure.message if failure else None, wall_s=wall_s,
                is_seed=c.is_seed, is_reference=c.is_reference, code=c.code, genome=c.genome,
                motivation=c.motivation, parent_ids=(), origin=c.origin,
            )

    def _fitness(self, objectives: Sequence[Objective]) -> float | None:
        ref = self.reference_metrics()
        return None if ref is None else self._score(objectives, ref)

    def _score(self, objectives: Sequence[Objective], reference: dict[str, float]) -> float | None:
        f = self.cfg.fitness
        return fitness_of(objectives, reference, f.weights, f.default_weight, f.scale)

    def _objectives_at(self, cand: Candidate, rung: int) -> dict[str, float]:
        """A candidate's objective values from one rung's metrics (empty if it has none)."""
        return {o.name: o.value for o in self.task.objectives(_metrics_of(cand, rung))}

    def _charge_time(self, s, candidate_id: int, wall_s: float) -> None:
        """Ledger the sandbox wall time of an evaluation (and as GPU time on a cuda target)."""
        repo.add_ledger_entry(s, self.campaign_id, "wall_seconds", wall_s, candidate_id=candidate_id)
        if self.cfg.targets[0].device == "cuda":
            repo.add_ledger_entry(s, self.campaign_id, "gpu_seconds", wall_s, candidate_id=candidate_id)

    def recompute_fitness(self) -> bool:
        """Recompute every evaluated candidate's fitness (after the reference is measured)."""
        if self.reference_metrics() is None:
            return False
        with self.db.session() as s:
            for c in repo.candidates(s, self.campaign_id, "evaluated"):
                c.fitness = self._fitness(self.task.objectives(_metrics_of(c)))
        return True

    def _target(self) -> str:
        return self.cfg.targets[0].name

