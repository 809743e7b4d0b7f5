"""Every hostile program, twice: through the full sandbox (static policy + OS layer), and with
the static policy bypassed so the OS-level mechanisms alone must contain it. Each run asserts
the failure kind and that the host is unharmed (no file, no connection, no killed process, no
secret in any output, database intact, no surviving process)."""

from __future__ import annotations

import pytest

from evaluator.types import FailureKind
from tests.adversarial.conftest import (Host, isolation_uid, run_bypassing_policy,
                                        run_with_policy, settle)
from tests.adversarial.programs import PROGRAMS, Hostile


def _kind(outcome) -> FailureKind | None:
    failure = outcome.first_failure
    return failure.failure_kind if failure else None


def _describe(outcome) -> str:
    return "; ".join(f"{r.stage}:{r.ok}:{r.failure_kind}:{r.message[:200]}" for r in outcome.results)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_hostile_program_with_full_sandbox(program: Hostile, host: Host) -> None:
    outcome = run_with_policy(program, host)
    settle(program)
    assert _kind(outcome) == program.policy_kind, _describe(outcome)
    assert not outcome.ok
    host.assert_unharmed(outcome, uid=isolation_uid(outcome), marker=None)


# Programs the static policy accepts already ran on the OS layer alone above.
STOPPED_BY_POLICY = [p for p in PROGRAMS if p.policy_kind is FailureKind.POLICY]


@pytest.mark.parametrize("program", STOPPED_BY_POLICY, ids=lambda p: p.name)
def test_hostile_program_contained_by_os_layer_alone(program: Hostile, host: Host) -> None:
    outcome, child = run_bypassing_policy(program, host)
    settle(program)
    assert _kind(outcome) == program.runtime_kind, _describe(outcome) + outcome.log_tail[-800:]
    assert not outcome.ok
    host.assert_unharmed(outcome, uid=child.uid, marker=f"ARCHDISCO_SANDBOX_RUN={child.marker}")


def test_flood_is_bounded_and_keeps_the_tail(host: Host) -> None:
    from tests.adversarial.programs import BY_NAME

    outcome = run_with_policy(BY_NAME["stdout_flood"], host)
    assert outcome.first_failure.failure_kind is FailureKind.TIMEOUT
    assert len(outcome.log_tail.encode()) <= 64 * 1024 + 100
    assert "earlier bytes dropped" in outcome.log_tail and "flood flood" in outcome.log_tail[-500:]


def test_rewired_cross_entropy_is_named_in_the_message(host: Host) -> None:
    from tests.adversarial.programs import BY_NAME

    outcome = run_with_policy(BY_NAME["monkeypatch_cross_entropy_aliased"], host)
    failure = outcome.first_failure
    assert failure.stage == "load"
    assert "torch.nn.functional.cross_entropy" in failure.message
