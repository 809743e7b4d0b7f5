"""Search policies, fitness and fidelity bookkeeping."""

from __future__ import annotations

import pytest

from discovery.fidelity import promotable, spearman
from discovery.fitness import fitness, pareto_front, relative_improvement
from discovery.policies.base import ArchiveView, EvaluatedCandidate
from discovery.policies.evolution import EvolutionPolicy
from discovery.policies.random_search import RandomPolicy
from evaluator.types import Objective


def cand(i, fit, feasible=True, status="evaluated"):
    return EvaluatedCandidate(id=i, name=f"c{i}", code="", genome={"i": i}, status=status,
                              fitness=fit, feasible=feasible)


def view(cands):
    return ArchiveView(task="t", interface="", candidates=tuple(cands))


def test_evolution_population_ages_out_oldest_and_skips_ineligible():
    pol = EvolutionPolicy(seed=1, population=3, tournament=2, crossover_rate=0.0, fresh_rate=0.0)
    for i, c in enumerate([cand(1, 0.9), cand(2, 0.1, feasible=False), cand(3, 0.2),
                           cand(4, 0.3, status="failed"), cand(5, 0.4), cand(6, 0.5)]):
        pol.observe(c)
    assert [c.id for c in pol.population] == [3, 5, 6]  # 1 aged out; 2, 4 never entered


def test_evolution_tournament_prefers_fitter_parents():
    pol = EvolutionPolicy(seed=0, population=10, tournament=3, crossover_rate=0.0, fresh_rate=0.0)
    cands = [cand(i, i / 10) for i in range(10)]
    for c in cands:
        pol.observe(c)
    picks = [ctx.parents[0].candidate_id for ctx in pol.suggest(view(cands), 400)]
    assert sum(p >= 5 for p in picks) > 0.75 * len(picks)
    assert all(ctx.operation == "mutation" for ctx in pol.suggest(view(cands), 5))


def test_evolution_crossover_uses_two_distinct_parents_and_is_reproducible():
    def run(seed):
        pol = EvolutionPolicy(seed=seed, population=8, tournament=2, crossover_rate=1.0, fresh_rate=0.0)
        for i in range(8):
            pol.observe(cand(i, i / 8))
        return [(c.operation, tuple(p.candidate_id for p in c.parents), c.seed)
                for c in pol.suggest(view([]), 20)]

    a = run(3)
    assert a == run(3) and a != run(4)
    assert all(op == "crossover" and len(set(ps)) == 2 for op, ps, _ in a)


def test_evolution_with_empty_population_samples_fresh():
    pol = EvolutionPolicy(seed=0)
    assert [c.operation for c in pol.suggest(view([]), 3)] == ["fresh"] * 3


def test_random_policy_is_fresh_with_eligible_inspirations():
    pol = RandomPolicy(seed=0)
    ctxs = pol.suggest(view([cand(1, 0.5), cand(2, 0.7, feasible=False)]), 5)
    assert all(c.operation == "fresh" and not c.parents for c in ctxs)
    assert all(i.candidate_id == 1 for c in ctxs for i in c.inspirations)


def test_fitness_is_half_at_reference_and_saturates():
    ref = {"acc": 0.5, "loss": 2.0}
    same = [Objective("acc", "max", 0.5), Objective("loss", "min", 2.0)]
    assert fitness(same, ref, {}) == pytest.approx(0.5)
    better = [Objective("acc", "max", 1.0), Objective("loss", "min", 1.0)]
    much_better = [Objective("acc", "max", 100.0), Objective("loss", "min", 0.0)]
    worse = [Objective("acc", "max", 0.1), Objective("loss", "min", 4.0)]
    assert 0.5 < fitness(better, ref, {}) < fitness(much_better, ref, {}) <= 1.0
    assert 0.0 <= fitness(worse, ref, {}) < 0.5
    # weights: only acc counts
    assert fitness([Objective("acc", "max", 0.5), Objective("loss", "min", 100.0)], ref,
                   {"loss": 0.0}) == pytest.approx(0.5)
    assert fitness(same, {}, {}) is None
    assert relative_improvement(1.0, 2.0, "min") == pytest.approx(0.5)


def test_pareto_front():
    pts = [(1, [Objective("a", "max", 1), Objective("b", "min", 1)]),
           (2, [Objective("a", "max", 2), Objective("b", "min", 2)]),
           (3, [Objective("a", "max", 0.5), Objective("b", "min", 1.5)])]
    assert pareto_front(pts) == [1, 2]


def test_spearman_and_promotion():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    scores = {1: 0.1, 2: 0.9, 3: 0.5, 4: 0.7}
    assert promotable(scores, set(), 0.5, 4) == [2, 4]
    assert promotable(scores, {2}, 0.5, 4) == [4]
    assert promotable({1: 0.3}, set(), 0.5, 4) == []
