"""Model choice per role: fixed weights and UCB on improvement per dollar, seeded."""

from __future__ import annotations

from collections import Counter

import pytest

from agents.bandit import FixedModel, ModelBandit, ModelSpec

A, B, C = ModelSpec("openai/a", weight=3.0), ModelSpec("openai/b", weight=1.0), ModelSpec("openai/c", weight=0.0)


def test_weights_follow_configured_proportions_deterministically() -> None:
    bandit = ModelBandit([A, B, C], strategy="weights", seed=1)
    counts = Counter(bandit.choose().model for _ in range(2000))
    assert counts["openai/c"] == 0
    assert 0.70 < counts["openai/a"] / 2000 < 0.80
    first = ModelBandit([A, B], strategy="weights", seed=5)
    second = ModelBandit([A, B], strategy="weights", seed=5)
    assert [first.choose().model for _ in range(100)] == [second.choose().model for _ in range(100)]


def test_ucb_tries_every_arm_then_prefers_improvement_per_dollar() -> None:
    bandit = ModelBandit([A, B], strategy="ucb", seed=0)
    assert [bandit.choose().model for _ in range(2)] == ["openai/a", "openai/b"]
    # same improvement, but b is 20x cheaper: b should be exploited
    for _ in range(30):
        spec = bandit.choose()
        cost = 0.02 if spec.model == "openai/a" else 0.001
        bandit.update(spec.model, improvement=0.05, dollars=cost)
    later = Counter(bandit.choose().model for _ in range(40))
    assert later["openai/b"] > later["openai/a"]
    assert bandit.stats["openai/b"].updates > bandit.stats["openai/a"].updates


def test_ucb_prefers_the_model_that_improves_fitness() -> None:
    bandit = ModelBandit([A, B], strategy="ucb", seed=3)
    for _ in range(60):
        spec = bandit.choose()
        bandit.update(spec.model, improvement=0.1 if spec.model == "openai/a" else 0.0, dollars=0.01)
    assert bandit.stats["openai/a"].updates > 2 * bandit.stats["openai/b"].updates
    assert bandit.stats["openai/b"].updates >= 1  # it was explored


def test_ucb_is_deterministic_given_seed_and_updates() -> None:
    def run(seed: int) -> list[str]:
        bandit = ModelBandit([A, B, C], strategy="ucb", seed=seed)
        out = []
        for i in range(30):
            spec = bandit.choose()
            out.append(spec.model)
            bandit.update(spec.model, improvement=(i % 3) * 0.01, dollars=0.001 * (1 + i % 2))
        return out

    assert run(11) == run(11)


def test_update_unknown_model_and_invalid_configs() -> None:
    bandit = ModelBandit([A])
    assert bandit.update("openai/zzz", 1.0, 0.1) is False
    assert bandit.update("openai/a", -1.0, 0.1) is True and bandit.stats["openai/a"].reward_sum == 0.0
    with pytest.raises(ValueError):
        ModelBandit([])
    with pytest.raises(ValueError):
        ModelBandit([A, A])
    with pytest.raises(ValueError):
        ModelBandit([A], strategy="greedy")
    with pytest.raises(ValueError):
        ModelBandit([C], strategy="weights")
    assert FixedModel(A).choose() is A
