"""Search policies: they read the archive and decide what to propose next."""

from __future__ import annotations

from discovery.config import PolicyConfig
from discovery.policies.base import ArchiveView, EvaluatedCandidate, Policy
from discovery.policies.evolution import EvolutionPolicy
from discovery.policies.random_search import RandomPolicy

__all__ = ["ArchiveView", "EvaluatedCandidate", "Policy", "make_policy"]


def make_policy(cfg: PolicyConfig, seed: int) -> Policy:
    if cfg.kind == "random":
        return RandomPolicy(seed=seed)
    return EvolutionPolicy(
        seed=seed, population=cfg.population, tournament=cfg.tournament,
        crossover_rate=cfg.crossover_rate, fresh_rate=cfg.fresh_rate,
    )
