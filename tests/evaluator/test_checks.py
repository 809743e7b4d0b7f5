"""The measured checks catch what a code reviewer can miss: hostile and buggy mixers from
tests/fixtures/mixers fail the right stage with the right failure kind and a message that says
which test failed and where, in float32 and at bfloat16 alone; and the task object validates
its options, declares its ladder and turns stage failures into results."""

from __future__ import annotations

import math

import pytest
import torch

from evaluator.registry import get_task
from evaluator.token_mixer import (
    ProxyPreset, TokenMixerTask, check_mixer_interface, resolve_proxy_options,
)
from evaluator.token_mixer.causality import CausalityOptions, run_causality
from evaluator.token_mixer.checks import (
    ConformanceOptions, RecurrentOptions, run_conformance, run_recurrent,
)
from evaluator.token_mixer.complexity import ComplexityOptions, fit_exponent, run_complexity
from evaluator.token_mixer.seeds import seed_source
from evaluator.types import FailureKind, Program, StageFailure, TargetSpec
from tests.evaluator.mixers import CPU, FIXTURES, fixture, load_module

F32, BF16 = torch.float32, torch.bfloat16


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fails(run, name, options, dtype=F32) -> StageFailure:
    with pytest.raises(StageFailure) as info:
        run(fixture(name).Mixer, options, CPU, dtype, 0)
    return info.value


# ------------------------------------------------------------------ causality


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_frequency_domain_leak_is_caught_by_the_gradient_test(dtype):
    err = fails(run_causality, "non_causal_fft", CausalityOptions(include_float32=False), dtype)
    assert err.kind is FailureKind.CAUSALITY
    assert err.message.startswith("gradient test")
    assert "depend on the input at position" in err.message


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_dependence_on_total_length_is_caught_by_the_prefix_test(dtype):
    err = fails(run_causality, "length_dependent", CausalityOptions(include_float32=False), dtype)
    assert err.kind is FailureKind.CAUSALITY
    assert err.message.startswith("prefix test") and "total sequence length" in err.message
    # it is invisible to the other two tests: they ran and passed first
    suffix = "" if dtype == F32 else "_bfloat16"
    assert err.metrics[f"causality_grad_leak{suffix}"] == 0.0
    assert err.metrics[f"causality_perturb_rel{suffix}"] < 1e-6


def test_whole_sequence_statistics_are_caught():
    err = fails(run_causality, "global_mean", CausalityOptions())
    assert err.kind is FailureKind.CAUSALITY and err.message.startswith("gradient test")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_leak_hidden_from_autograd_is_caught_by_the_perturbation_test(dtype):
    err = fails(run_causality, "detach_leak", CausalityOptions(include_float32=False), dtype)
    assert err.kind is FailureKind.CAUSALITY and err.message.startswith("perturbation test")


def test_declared_bfloat16_runs_float32_causality_first():
    err = fails(run_causality, "non_causal_fft", CausalityOptions(), BF16)
    assert "at float32" in err.message


# ------------------------------------------------------------------ complexity


def test_masked_quadratic_linear_attention_fails_complexity():
    opts = ComplexityOptions()
    mixer = fixture("masked_quadratic_linear").Mixer
    run_conformance(mixer, ConformanceOptions(), CPU, F32, 0)  # a correct, causal mixer ...
    run_causality(mixer, CausalityOptions(), CPU, F32, 0)
    err = fails(run_complexity, "masked_quadratic_linear", opts)  # ... but quadratic
    assert err.kind is FailureKind.COMPLEXITY
    assert 1.85 < err.metrics["flops_exponent_tail"] <= 2.0
    assert "T^1.2" in err.message


def test_quadratic_work_without_matmuls_is_caught_by_the_element_count():
    err = fails(run_complexity, "broadcast_quadratic", ComplexityOptions())
    assert err.kind is FailureKind.COMPLEXITY
    assert err.metrics["flops_exponent_tail"] < 1.2  # the FLOP counter alone would pass it
    assert err.metrics["elements_exponent_tail"] > 1.85


def test_complexity_bound_is_configurable():
    metrics = run_complexity(fixture("masked_quadratic_linear").Mixer, ComplexityOptions(bound=2.1),
                             CPU, F32, 0)
    assert metrics["complexity_exponent"] > 1.85


def test_mixer_that_cannot_run_on_meta_is_counted_on_cpu():
    code = seed_source("linear_attention").replace(
        "        b, t, d = x.shape\n", "        b, t, d = x.shape\n        _ = float(x.sum())\n", 1)
    metrics = run_complexity(load_module(code).Mixer, ComplexityOptions(), CPU, F32, 0)
    assert metrics["complexity_on_meta"] == 0.0 and metrics["complexity_exponent"] < 1.2


def test_fit_exponent_recovers_power_laws():
    ts = [256, 512, 1024, 2048]
    assert fit_exponent(ts, [3.0 * t ** 2 for t in ts]) == pytest.approx(2.0)
    assert fit_exponent(ts, [7.0 * t for t in ts]) == pytest.approx(1.0)


# ------------------------------------------------------------------ conformance, recurrent


def test_bf16_hardcast_is_reported_when_float32_is_declared():
    err = fails(run_conformance, "bf16_hardcast", ConformanceOptions())
    assert err.kind is FailureKind.CONFORMANCE
    assert "declared precision float32" in err.message and "bfloat16" in err.message
    assert err.metrics["low_precision_op_fraction"] > 0.1


def test_bf16_hardcast_is_fine_when_bfloat16_is_declared():
    metrics = run_conformance(fixture("bf16_hardcast").Mixer, ConformanceOptions(), CPU, BF16, 0)
    assert "fp64_rel_error" not in metrics and metrics["low_precision_op_fraction"] > 0.1


def test_bfloat16_output_under_float32_is_reported():
    code = seed_source("linear_attention").replace(
        "return self.out(y.transpose(1, 2).reshape(b, t, d))",
        "return self.out(y.transpose(1, 2).reshape(b, t, d)).to(torch.bfloat16)")
    with pytest.raises(StageFailure, match="forward returned bfloat16"):
        run_conformance(load_module(code).Mixer, ConformanceOptions(), CPU, F32, 0)


def test_batch_statistics_are_caught():
    err = fails(run_conformance, "batch_mixing", ConformanceOptions())
    assert err.kind is FailureKind.CONFORMANCE and "batch independence" in err.message


def test_parameter_budget():
    err = fails(run_conformance, "over_budget", ConformanceOptions())
    assert err.kind is FailureKind.BUDGET and "524288 parameters" in err.message
    ok = run_conformance(fixture("over_budget").Mixer, ConformanceOptions(max_params=600_000), CPU, F32, 0)
    assert ok["params"] == 524288


@pytest.mark.parametrize("edit, kind, words", [
    ("        return self.out(y.transpose(1, 2).reshape(b, t, d))",
     FailureKind.CONFORMANCE, "forward returned shape"),
    ("        return self.out(y.transpose(1, 2).reshape(b, t, d)) / (x.shape[1] - 1)",
     FailureKind.NAN, "not finite"),
    ("        self.unused = nn.Linear(4, 4)\n", FailureKind.CONFORMANCE, "'unused.weight' received no gradient"),
])
def test_conformance_failures_name_the_problem(edit, kind, words):
    code = seed_source("linear_attention")
    if "unused" in edit:
        code = code.replace("        self.out = nn.Linear(hidden_size, hidden_size, bias=False)\n",
                            "        self.out = nn.Linear(hidden_size, hidden_size, bias=False)\n" + edit, 1)
    elif "shape" in words:
        code = code.replace(edit, "        return self.out(y.transpose(1, 2).reshape(b, t, d))[:, :-1]")
    else:
        code = code.replace("        return self.out(y.transpose(1, 2).reshape(b, t, d))", edit)
    with pytest.raises(StageFailure) as info:
        run_conformance(load_module(code).Mixer, ConformanceOptions(), CPU, F32, 0)
    assert info.value.kind is kind and words in info.value.message


def test_wrong_step_is_caught():
    err = fails(run_recurrent, "bad_step", RecurrentOptions())
    assert err.kind is FailureKind.CONFORMANCE and "step disagrees with forward" in err.message
    assert err.metrics["step_rel_error"] > 1e-3


def test_under_declared_state_size_is_caught():
    code = seed_source("linear_attention").replace(
        "        return self.num_heads * (self.head_dim * self.head_dim + self.head_dim)",
        "        return self.num_heads")
    with pytest.raises(StageFailure, match="declares 4 elements"):
        run_recurrent(load_module(code).Mixer, RecurrentOptions(), CPU, F32, 0)


def test_mixer_without_step_passes_recurrent():
    metrics = run_recurrent(fixture("masked_quadratic_linear").Mixer, RecurrentOptions(), CPU, F32, 0)
    assert metrics == {"has_step": 0.0}


# ------------------------------------------------------------------ the task object


def test_options_errors_name_key_value_and_allowed():
    with pytest.raises(ValueError, match=r"'hiden' is unknown; allowed: hidden_size"):
        get_task("token-mixer", {"hiden": 64})
    with pytest.raises(ValueError, match=r"'num_heads': got 'four'"):
        TokenMixerTask(num_heads="four")
    with pytest.raises(ValueError, match=r"'complexity_bound': got -1.*greater than 0"):
        TokenMixerTask(complexity_bound=-1)
    with pytest.raises(ValueError, match="num_heads 3 must divide hidden_size 64"):
        TokenMixerTask(num_heads=3)
    with pytest.raises(ValueError, match=r"'mqar.stepz' is unknown; allowed: .*steps"):
        TokenMixerTask(mqar={"stepz": 1})


def test_ladder_and_interface():
    task = TokenMixerTask(complexity_bound=1.3, max_params=1000)
    assert task.rungs() == 3
    rung0 = task.stages(0)
    assert [s.name for s in rung0] == ["conformance", "causality", "recurrent", "complexity", "mqar", "profile"]
    assert [s.name for s in rung0 if s.constraint] == ["complexity"]
    assert rung0[3].options["bound"] == 1.3 and rung0[0].options["max_params"] == 1000
    assert [s.name for s in task.stages(1)] == ["mqar", "lm", "profile"]
    assert task.stages(2)[0].options["step_factor"] == 4.0
    with pytest.raises(ValueError):
        task.stages(3)
    text = task.interface()
    for words in ("class Mixer(nn.Module)", "step(x_t, state)", "T^1.3", "1000 parameters",
                  "torch, torch.nn, torch.nn.functional, math, typing"):
        assert words in text


def test_proxy_presets_resolve_per_device():
    from evaluator.token_mixer.mqar import MQAROptions

    spec = ProxyPreset(preset="rung1", step_factor=4.0, overrides={"lrs": [1e-2]})
    gpu = resolve_proxy_options("mqar", spec, "cuda")
    cpu = resolve_proxy_options("mqar", spec, "cpu")
    assert gpu.reduced is False and cpu.reduced is True  # a CPU target gets the reduced sizes
    assert gpu.steps == 4 * MQAROptions.rung1().steps and cpu.steps == 4 * MQAROptions.cpu_fallback().steps
    assert gpu.lrs == cpu.lrs == (1e-2,)
    assert resolve_proxy_options("mqar", ProxyPreset(), "cuda") == MQAROptions()  # rung 0: tiny


def test_run_stage_turns_failures_into_results():
    task = TokenMixerTask()
    module = fixture("length_dependent")
    program = Program(code=(FIXTURES / "length_dependent.py").read_text(), module=module)
    by_name = {s.name: s for s in task.stages(0)}
    ok = task.run_stage(program, by_name["conformance"], TargetSpec())
    assert ok.ok and ok.metrics["params"] > 0 and ok.stage == "conformance"
    bad = task.run_stage(program, by_name["causality"], TargetSpec())
    assert not bad.ok and bad.failure_kind is FailureKind.CAUSALITY and "prefix test" in bad.message
    assert all(math.isfinite(v) for v in bad.metrics.values())


@pytest.mark.parametrize("code, words", [
    ("x = 1", "defines no `Mixer`"),
    ("class Mixer:\n    pass", "subclasses torch.nn.Module"),
    ("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, d, h, **kw): super().__init__()\n"
     "    def forward(self, x): return x", "(hidden_size, num_heads, **kw) first"),
    ("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, hidden_size, num_heads): super().__init__()\n"
     "    def forward(self, x): return x", "must accept **kw"),
    ("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, hidden_size, num_heads, window, **kw): super().__init__()\n"
     "    def forward(self, x): return x", "window need defaults"),
    ("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, hidden_size, num_heads, **kw): super().__init__()\n",
     "must define forward"),
    ("import torch.nn as nn\nclass Mixer(nn.Module):\n    def __init__(self, hidden_size, num_heads, **kw): super().__init__()\n"
     "    def forward(self, x): return x\n    def step(self, x_t): return x_t", "step(self, x_t, state)"),
])
def test_check_interface_messages(code, words):
    message = check_mixer_interface(load_module(code))
    assert message is not None and words in message


def test_objectives_use_only_measured_metrics():
    task = TokenMixerTask()
    objs = task.objectives({"mqar_acc": 0.5, "params": 1000.0, "lm_val_loss": float("nan"), "mqar_loss": 2.0})
    assert [(o.name, o.direction, o.value) for o in objs] == [
        ("mqar_acc", "max", 0.5), ("mqar_loss", "min", 2.0), ("params", "min", 1000.0)]
