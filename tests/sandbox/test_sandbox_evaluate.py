"""``sandbox.evaluate`` end to end with well-behaved and clumsy candidates: stage order,
stopping rules, failure kinds passed through, the isolation report, platform errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluator.types import FailureKind, StageSpec, TargetSpec
from sandbox import SandboxError, evaluate
from sandbox.api import EvalRequest, SandboxLimits
from tests.sandbox.fake_task import TRIVIAL

FAKE = "tests.sandbox.fake_task:FakeTask"
ROOT = Path(__file__).resolve().parents[2]


def stages(*names: str, **options) -> list[StageSpec]:
    return [StageSpec(name=n, timeout_s=10, options=options.get(n, {})) for n in names]


def run(code: str, names=("build", "forward"), **kw) -> object:
    request = EvalRequest(task=FAKE, code=code, stages=kw.pop("specs", None) or stages(*names), **kw)
    return evaluate(request, SandboxLimits(load_timeout_s=20))


def test_trivial_candidate_passes_every_stage_with_metrics() -> None:
    outcome = run(TRIVIAL)
    assert outcome.ok, outcome.first_failure
    assert [r.stage for r in outcome.results] == ["load", "build", "forward"]
    assert outcome.results[2].metrics == {"y": 6.0}
    assert all(r.wall_s >= 0 for r in outcome.results) and outcome.exit_code == 0


def test_the_task_hears_the_plan_before_the_first_stage() -> None:
    outcome = run(TRIVIAL, names=("build", "planned", "forward"))
    assert outcome.ok, outcome.first_failure
    assert outcome.results[2].metrics == {"planned": 3.0, "position": 1.0}


def test_isolation_report_names_the_mechanisms() -> None:
    outcome = run(TRIVIAL)
    report = outcome.results[0].artifacts["isolation"]
    assert report["seccomp"] is True or report["notes"]
    if os.geteuid() == 0 and report["mode"] == "namespaces":  # what this machine provides
        assert report["uid"] != 0 and report["capabilities_dropped"]
        assert report["pid_namespace"] and report["net_namespace"] and report["mount_namespace"]
        assert report["readonly_root"] and report["private_tmp"] and report["fresh_proc"]
        assert report["workdir"] == "/tmp/work"


def test_stops_at_the_first_failure_and_keeps_the_kind() -> None:
    specs = stages("build", "boom", "forward", boom={"kind": "nan"})
    outcome = run(TRIVIAL, specs=specs)
    assert [r.stage for r in outcome.results] == ["load", "build", "boom"]
    assert outcome.first_failure.failure_kind is FailureKind.NAN


@pytest.mark.parametrize("oom_kills, kind", [((3, 4), FailureKind.OOM), ((3, 3), FailureKind.KILLED),
                                             ((None, None), FailureKind.KILLED)])
def test_a_sigkill_is_oom_when_the_kernel_counted_an_oom_kill_meanwhile(
        monkeypatch: pytest.MonkeyPatch, oom_kills, kind: FailureKind) -> None:
    from sandbox import launcher

    counts = iter(oom_kills)  # read when the request goes out, then when the child has died
    monkeypatch.setattr(launcher, "oom_kills", lambda: next(counts))
    # the machine-wide count decides where the child has no memory cgroup (test_cgroup.py)
    request = EvalRequest(task=FAKE, code=TRIVIAL, stages=stages("build", "sigkill", "forward"))
    outcome = launcher.run_evaluation(request, SandboxLimits(load_timeout_s=20),
                                      isolation_config=launcher.IsolationConfig(memory_cgroup=False))
    assert [r.stage for r in outcome.results] == ["load", "build", "sigkill"]
    failure = outcome.first_failure
    assert failure.failure_kind is kind and outcome.exit_code == -9, failure.message
    assert ("OOM killer" in failure.message) == (kind is FailureKind.OOM), failure.message


def test_an_exit_code_of_137_is_the_candidates_own_not_a_sigkill() -> None:
    """The namespace's monitor dies of the harness's signal, so a candidate that exits with
    128 + 9 itself is a runtime failure with that code, not a kill."""
    outcome = run(TRIVIAL, specs=stages("build", "exit", exit={"code": 137}))
    failure = outcome.first_failure
    assert failure.failure_kind is FailureKind.RUNTIME, failure.message
    assert "exited with code 137 during stage 'exit'" in failure.message
    assert outcome.exit_code == 137


def test_the_oom_kill_count_is_read_from_the_kernel() -> None:
    from sandbox.launcher import oom_kills

    count = oom_kills()
    assert count is None or count >= 0
    vmstat = Path("/proc/vmstat")
    if vmstat.exists() and "oom_kill " in vmstat.read_text():
        assert isinstance(count, int)


def test_reference_seeds_continue_past_a_failed_constraint_only() -> None:
    specs = [StageSpec(name="constraint", constraint=True, options={"fail": True}),
             StageSpec(name="forward")]
    kept_going = run(TRIVIAL, specs=specs, continue_on_constraint=True)
    assert [(r.stage, r.ok) for r in kept_going.results] == [
        ("load", True), ("constraint", False), ("forward", True)]
    assert kept_going.results[1].failure_kind is FailureKind.COMPLEXITY
    assert kept_going.results[1].metrics == {"exponent": 2.0}
    stopped = run(TRIVIAL, specs=specs)
    assert [r.stage for r in stopped.results] == ["load", "constraint"]


def test_gpu_stage_is_skipped_with_a_note_on_a_cpu_target() -> None:
    specs = [StageSpec(name="forward", device="cuda")]
    outcome = run(TRIVIAL, specs=specs, target=TargetSpec())
    assert outcome.ok and outcome.results[1].artifacts == {"skipped": True}
    assert "GPU" in outcome.results[1].message


@pytest.mark.parametrize("code,kind,fragment", [
    ("class Model:\n    def __init__(self)\n", FailureKind.SYNTAX, "line 2"),
    ("import os\n" + TRIVIAL, FailureKind.POLICY, "import of `os`"),
    ("x = 1\n", FailureKind.INTERFACE, "class Model"),
    ("raise ValueError('bad constant')\n", FailureKind.IMPORT, "ValueError: bad constant"),
])
def test_load_failures_have_their_kind(code: str, kind: FailureKind, fragment: str) -> None:
    outcome = run(code)
    assert [r.stage for r in outcome.results] == ["load"]
    assert outcome.first_failure.failure_kind is kind
    assert fragment in outcome.first_failure.message


def test_runtime_error_names_the_candidate_line_and_keeps_a_traceback() -> None:
    code = "class Model:\n    def __init__(self):\n        pass\n    def forward(self, x):\n" \
           "        return [][x]\n"
    outcome = run(code)
    failure = outcome.first_failure
    assert failure.stage == "forward" and failure.failure_kind is FailureKind.RUNTIME
    assert "IndexError" in failure.message and "candidate line 5" in failure.message
    assert "Traceback" in failure.log_tail


def test_prints_go_to_the_log_tail_not_the_results() -> None:
    code = TRIVIAL.replace("return self.scale * x", "print('hello from forward'); return 1.5")
    outcome = run(code)
    assert outcome.ok and "hello from forward" in outcome.log_tail
    assert outcome.results[2].metrics == {"y": 1.5}


def test_a_real_token_mixer_seed_runs_forward_and_backward() -> None:
    seed = ROOT / "evaluator" / "token_mixer" / "seeds" / "linear_attention.py"
    if not seed.exists():
        pytest.skip("seed not present")
    request = EvalRequest(task=FAKE, task_options={"interface": "Mixer"}, code=seed.read_text(),
                          stages=[StageSpec(name="mixer", timeout_s=60)])
    outcome = evaluate(request, SandboxLimits(load_timeout_s=60))
    assert outcome.ok, outcome.first_failure
    assert outcome.results[1].metrics["params"] > 0


def test_an_unknown_task_is_a_platform_error() -> None:
    request = EvalRequest(task="tests.sandbox.fake_task:NoSuchTask", code=TRIVIAL, stages=[])
    with pytest.raises(SandboxError, match="NoSuchTask"):
        evaluate(request)
