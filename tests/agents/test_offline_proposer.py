"""OfflineProposer: the Proposer a campaign uses with no LLM (mutation, crossover, fresh)."""

from __future__ import annotations

import asyncio
import re

import pytest

from agents.offline import (
    GENES,
    OfflineProposer,
    genome_key,
    parse_genome,
    render_mixer,
    validate_genome,
)
from agents.types import ParentInfo, Proposal, ProposalContext, ProposalError, Proposer

GDN = {
    "feature_map": "silu", "decay": "data", "update": "delta", "normalization": "rmsnorm",
    "short_conv": 4, "output_gate": "silu", "num_heads": None, "chunk_size": 32,
    "qk_norm": True, "expand_v": 1,
}
LINEAR = {
    "feature_map": "elu1", "decay": "none", "update": "additive", "normalization": "denominator",
    "short_conv": 0, "output_gate": "none", "num_heads": None, "chunk_size": 64,
    "qk_norm": False, "expand_v": 1,
}
NAME = re.compile(r"^(linattn|retnet|gla|deltanet|decaydelta|gdn)-[a-z0-9-]+-c(16|32|64)-[0-9a-f]{4}$")


def parent(cid: int, name: str, genome) -> ParentInfo:
    return ParentInfo(candidate_id=cid, name=name, code="...", genome=genome, fitness=0.5)


def propose(proposer: OfflineProposer, **ctx) -> Proposal:
    ctx.setdefault("task", "token-mixer")
    ctx.setdefault("interface", "class Mixer(nn.Module) ...")
    return asyncio.run(proposer.propose(ProposalContext(**ctx)))


def test_it_is_a_proposer_named_offline():
    assert isinstance(OfflineProposer(), Proposer)
    assert OfflineProposer.name == "offline"


def test_mutation_changes_the_parent_and_says_how():
    p = propose(OfflineProposer(), parents=(parent(3, "gated-deltanet", GDN),), seed=11)
    genome = parse_genome(p.genome)
    assert p.origin == "mutation" and p.parent_ids == (3,)
    assert genome != parse_genome(GDN) and set(p.genome) == set(GENES)
    assert p.code == render_mixer(genome)
    assert NAME.match(p.name) and p.name.endswith(genome_key(genome)[:4])
    assert "Mutation of gated-deltanet (#3)" in p.motivation
    changed = [g for g in GENES if p.genome[g] != GDN[g]]
    assert all(gene in p.motivation for gene in changed)


def test_crossover_uses_both_parents():
    p = propose(
        OfflineProposer(),
        parents=(parent(3, "gated-deltanet", GDN), parent(4, "linear-attention", LINEAR)),
        operation="crossover", seed=2,
    )
    assert p.origin == "crossover" and p.parent_ids == (3, 4)
    assert parse_genome(p.genome) not in (parse_genome(GDN), validate_genome(LINEAR))
    assert "crossover of gated-deltanet (#3) and linear-attention (#4)" in p.motivation


def test_parents_without_a_genome_count_as_absent():
    attention = parent(1, "softmax-attention", None)
    fresh = propose(OfflineProposer(), parents=(attention,), operation="mutation", seed=0)
    assert fresh.origin == "fresh" and fresh.parent_ids == ()
    assert "fresh sample" in fresh.motivation
    half = propose(
        OfflineProposer(), parents=(attention, parent(2, "gla", GDN)), operation="crossover", seed=0
    )
    assert half.origin == "mutation" and half.parent_ids == (2,)
    assert propose(OfflineProposer(), operation="fresh", seed=0).parent_ids == ()


def test_proposals_are_reproducible_per_seed():
    ctx = {"parents": (parent(3, "a", GDN), parent(4, "b", LINEAR)), "operation": "crossover"}
    first = propose(OfflineProposer(), seed=42, **ctx)
    again = propose(OfflineProposer(), seed=42, **ctx)
    assert (first.genome, first.code, first.name) == (again.genome, again.code, again.name)
    others = {propose(OfflineProposer(), seed=s, **ctx).name for s in range(10)}
    assert len(others) > 5


def test_only_tasks_with_a_design_space_are_accepted():
    assert OfflineProposer(task="token-mixer").task == "token-mixer"
    with pytest.raises(ValueError, match="no design space for task 'nas-bench-201'"):
        OfflineProposer(task="nas-bench-201")


def test_seen_may_be_any_iterable_and_a_set_is_shared():
    keys = ["a" * 16, "b" * 16]
    assert OfflineProposer(keys).seen == set(keys)
    shared: set[str] = set()
    assert OfflineProposer(seen=shared).seen is shared


def test_seen_genomes_are_not_proposed_again():
    seen: set[str] = set()
    proposer = OfflineProposer(seen)
    ctx = {"parents": (parent(3, "gdn", GDN),), "seed": 7}
    keys = [genome_key(propose(proposer, **ctx).genome) for _ in range(25)]
    assert len(set(keys)) == 25 and seen == set(keys)  # same seed each time, still all new
    assert genome_key(GDN) not in seen  # the parent itself is never re-proposed

    blocked = genome_key(propose(OfflineProposer(), **ctx).genome)
    assert genome_key(propose(OfflineProposer({blocked}), **ctx).genome) != blocked


def test_exhausted_neighbourhood_falls_back_then_fails_cleanly(monkeypatch):
    import agents.offline.proposer as module

    same = parse_genome(LINEAR)
    monkeypatch.setattr(module, "mutate", lambda genome, rng: same)
    monkeypatch.setattr(module, "random_genome", lambda rng: same)
    proposer = OfflineProposer({genome_key(same)}, max_tries=3)
    with pytest.raises(ProposalError, match="no unseen genome"):
        propose(proposer, parents=(parent(3, "gdn", GDN),), seed=0)


@pytest.mark.parametrize(
    ("ctx", "message"),
    [
        ({"task": "inference-pipeline"}, "built for task 'token-mixer', got a context for"),
        ({"operation": "splice"}, "unknown operation 'splice'"),
        ({"parents": (parent(9, "odd-seed", {**GDN, "decay": "exp"}),)},
         "parent 'odd-seed' (#9): genome key 'decay'"),
    ],
)
def test_unusable_contexts_raise_proposal_errors(ctx, message):
    with pytest.raises(ProposalError) as info:
        propose(OfflineProposer(), **ctx)
    assert message in str(info.value)
