"""The built-in offline proposer: genome mutation / crossover rendered to code, no LLM needed.

``OfflineProposer`` implements the ``Proposer`` protocol of ``agents.types``. It reads the
genomes of the context's parents (candidates without a genome, such as the softmax-attention
seed, count as absent), applies the operation the policy asked for, and renders the child with
``render_mixer``. A ``seen`` set of genome keys (shared with the caller, updated with every
proposal) keeps it from proposing the same design twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from agents.offline.genome import (
    Genome,
    GenomeError,
    changed_genes,
    describe,
    genome_dict,
    genome_key,
    genome_name,
    parse_genome,
    repair,
)
from agents.offline.operators import crossover, mutate, random_genome
from agents.offline.render import render_mixer
from agents.types import ParentInfo, Proposal, ProposalContext, ProposalError

OPERATIONS = ("mutation", "crossover", "fresh")
SUPPORTED_TASKS = ("token-mixer",)  # tasks that have a templated design space here


def _changes_text(changes: list[tuple[str, object, object]]) -> str:
    return ", ".join(f"{gene} {old!r} -> {new!r}" for gene, old, new in changes) or "no gene"


class OfflineProposer:
    """Mutates and crosses genomes of the templated token-mixer design space."""

    name = "offline"

    def __init__(
        self,
        seen: Iterable[str] | None = None,
        *,
        task: str = "token-mixer",
        max_tries: int = 32,
    ) -> None:
        if task not in SUPPORTED_TASKS:
            raise ValueError(
                f"the offline proposer has no design space for task {task!r}; "
                f"it supports: {', '.join(SUPPORTED_TASKS)}"
            )
        # A set passed in is shared on purpose: the caller pre-fills it from the archive
        # (genome_key of every stored candidate) and sees the keys this proposer adds.
        self.seen: set[str] = seen if isinstance(seen, set) else set(seen or ())
        self.task = task
        self.max_tries = max_tries

    async def propose(self, ctx: ProposalContext) -> Proposal:
        if ctx.task != self.task:
            raise ProposalError(
                f"this offline proposer was built for task {self.task!r}, got a context for "
                f"{ctx.task!r}"
            )
        if ctx.operation not in OPERATIONS:
            raise ProposalError(
                f"unknown operation {ctx.operation!r}; expected one of {', '.join(OPERATIONS)}"
            )
        rng = random.Random(ctx.seed)
        parents = [(p, self._genome_of(p)) for p in ctx.parents]
        usable = [(p, g) for p, g in parents if g is not None]
        avoid = set(self.seen)
        avoid.update(genome_key(g) for _, g in usable)
        avoid.update(genome_key(g) for g in map(self._genome_of, ctx.inspirations) if g is not None)

        operation = ctx.operation
        if operation == "crossover" and len(usable) < 2:
            operation = "mutation"  # one parent without a genome (an attention seed): mutate the other
        if operation == "mutation" and not usable:
            operation = "fresh"

        child: Genome | None = None
        for _ in range(self.max_tries):
            if operation == "mutation":
                candidate = mutate(usable[0][1], rng)
            elif operation == "crossover":
                candidate = crossover(usable[0][1], usable[1][1], rng)
                if candidate in (usable[0][1], usable[1][1]):
                    candidate = mutate(candidate, rng)  # parents one gene apart: step off them
            else:
                candidate = random_genome(rng)
            if genome_key(candidate) not in avoid:
                child = candidate
                break
        if child is None:  # the neighbourhood is exhausted: fall back to the whole space
            for _ in range(self.max_tries):
                candidate = random_genome(rng)
                if genome_key(candidate) not in avoid:
                    child, operation = candidate, "fresh"
                    break
        if child is None:
            raise ProposalError(
                f"no unseen genome found in {2 * self.max_tries} tries ({len(avoid)} seen)"
            )

        self.seen.add(genome_key(child))
        used = usable[:2] if operation == "crossover" else usable[:1] if operation == "mutation" else []
        return Proposal(
            name=genome_name(child),
            motivation=self._motivation(operation, used, child),
            code=render_mixer(child),
            parent_ids=tuple(p.candidate_id for p, _ in used),
            genome=genome_dict(child),
            origin=operation,
        )

    @staticmethod
    def _genome_of(parent: ParentInfo) -> Genome | None:
        if parent.genome is None:
            return None
        try:
            return repair(parse_genome(parent.genome))[0]
        except GenomeError as exc:
            raise ProposalError(f"parent {parent.name!r} (#{parent.candidate_id}): {exc}") from None

    @staticmethod
    def _motivation(operation: str, used: list[tuple[ParentInfo, Genome]], child: Genome) -> str:
        result = describe(child)
        if operation == "mutation":
            parent, genome = used[0]
            changes = _changes_text(changed_genes(genome, child))
            head = f"Mutation of {parent.name} (#{parent.candidate_id}): {changes}."
        elif operation == "crossover":
            (pa, ga), (pb, gb) = used
            from_b = [gene for gene, _, new in changed_genes(ga, child) if genome_dict(gb)[gene] == new]
            novel = [c for c in changed_genes(ga, child) if c[0] not in from_b]
            head = (
                f"Uniform crossover of {pa.name} (#{pa.candidate_id}) and {pb.name} "
                f"(#{pb.candidate_id}): takes {', '.join(from_b) or 'no gene'} from {pb.name} "
                f"and the rest from {pa.name}"
            )
            head += f", then mutates {_changes_text(novel)}." if novel else "."
        else:
            head = "A fresh sample of the token-mixer design space."
        return f"{head} Result: {result}"
