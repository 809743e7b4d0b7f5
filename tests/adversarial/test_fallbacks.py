"""The fallback isolation modes, and each protection layer on its own, against the hostile
programs whose effects reach the host. The static policy is bypassed throughout.

This machine runs the tests as root with every mechanism available, so the fallbacks are
exercised by switches: ``simulate_unprivileged`` drops to an ordinary uid before any set-up
(the code path of a non-root driver), ``mode="none"`` skips namespaces, and ``seccomp`` /
``landlock`` / ``socket_layer`` turn single layers off to show the others hold alone.
"""

from __future__ import annotations

import os

import pytest

from evaluator.types import FailureKind as K
from sandbox.isolation import blocked_ancestor
from sandbox.landlock import abi_version
from sandbox.launcher import IsolationConfig
from tests.adversarial.conftest import Host, run_bypassing_policy, settle
from tests.adversarial.programs import BY_NAME

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the simulations start as root")

MODES = {
    "userns-unprivileged": IsolationConfig(mode="userns", simulate_unprivileged=True),
    "no-namespaces-unprivileged": IsolationConfig(mode="none", simulate_unprivileged=True),
    "no-namespaces-root-without-capabilities": IsolationConfig(mode="none"),
}
PROGRAMS = ["write_via_obfuscated_import", "read_and_print_secrets",
            "connect_to_loopback_listener", "fork_bomb", "kill_the_parent",
            "setsid_grandchild_outlives_evaluation", "write_campaign_database",
            "exfiltrate_database_by_reading", "write_forged_frames_to_every_fd"]


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("name", PROGRAMS, ids=str)
def test_fallback_mode_contains_hostile_program(mode: str, name: str, host: Host) -> None:
    program = BY_NAME[name]
    outcome, child = run_bypassing_policy(program, host, MODES[mode])
    settle(program)
    assert child.report is not None and child.report.mode == MODES[mode].mode
    assert outcome.first_failure is not None
    assert outcome.first_failure.failure_kind is program.runtime_kind, outcome.first_failure.message
    host.assert_unharmed(outcome, uid=child.uid if child.report.uid else None,
                         marker=f"ARCHDISCO_SANDBOX_RUN={child.marker}")


def _only(layer: str) -> IsolationConfig:
    """Namespaces off, a simulated ordinary uid, and only ``layer`` on."""
    return IsolationConfig(mode="none", simulate_unprivileged=True, seccomp=layer == "seccomp",
                           landlock=layer == "landlock", socket_layer=layer == "socket_layer")


LAYER_CASES = [
    # (what is on, program, expected kind, message fragment proving which layer acted)
    # (a host path under /tmp is hidden by the private tmpfs rather than read-only: a
    # checkout under /tmp, as in CI, gets the second message; both are the mount namespace)
    ("namespaces", "write_outside_workdir", K.IMPORT, ("Read-only file system", "No such file or directory")),
    ("namespaces", "connect_to_loopback_listener", K.RUNTIME, "unreachable"),
    ("namespaces", "write_campaign_database", K.RUNTIME, ("readonly database", "unable to open database file")),
    ("landlock", "write_outside_workdir", K.IMPORT, "Permission denied"),
    ("landlock", "exfiltrate_database_by_reading", K.RUNTIME, "Permission denied"),
    ("landlock", "connect_to_loopback_listener", K.RUNTIME, "Permission denied"),
    ("seccomp", "connect_to_loopback_listener", K.RUNTIME, "Permission denied"),
    ("socket_layer", "connect_to_loopback_listener", K.RUNTIME, "network access is disabled"),
    ("uid", "kill_the_parent", K.RUNTIME, "Operation not permitted"),
]


@pytest.mark.parametrize("layer,name,kind,fragment", LAYER_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in LAYER_CASES])
def test_each_layer_holds_on_its_own(layer: str, name: str, kind: K, fragment: str | tuple[str, ...],
                                     host: Host) -> None:
    if layer == "landlock" and abi_version() < 4:
        pytest.skip("needs Landlock ABI >= 4 (TCP rules)")
    if layer == "landlock" and name != "connect_to_loopback_listener" and blocked_ancestor(str(host.scratch)):
        pytest.skip("the checkout lies under a directory other users cannot traverse: the simulated "
                    "unprivileged start hides the host files before Landlock can act on them")
    if layer == "namespaces":
        config = IsolationConfig(mode="namespaces", seccomp=False, landlock=False)
    else:
        config = _only(layer)
    program = BY_NAME[name]
    outcome, child = run_bypassing_policy(program, host, config)
    failure = outcome.first_failure
    assert failure is not None and failure.failure_kind is kind, failure
    fragments = (fragment,) if isinstance(fragment, str) else fragment
    assert any(f in failure.message for f in fragments), failure.message
    host.assert_unharmed(outcome, uid=child.uid, marker=f"ARCHDISCO_SANDBOX_RUN={child.marker}")


def test_landlock_signal_scope_protects_same_uid_processes(host: Host) -> None:
    """Without namespaces and with uid 0 kept (the interpreter is unreadable to other uids
    on this machine), only Landlock's signal scope stops the child from killing root-owned
    processes such as the driver and the victim."""
    if abi_version() < 6:
        pytest.skip("needs Landlock ABI >= 6 (signal scoping)")
    outcome, child = run_bypassing_policy(BY_NAME["kill_the_parent"], host,
                                          IsolationConfig(mode="none", seccomp=False))
    assert child.report is not None and child.report.landlock
    assert outcome.first_failure.failure_kind is K.RUNTIME
    assert "Operation not permitted" in outcome.first_failure.message
    host.assert_unharmed(outcome, uid=None, marker=f"ARCHDISCO_SANDBOX_RUN={child.marker}")
