"""The baseline zoo: every seed is a valid candidate that passes the measured correctness
stages, its chunked forward is exact (matches itself across chunk sizes and its recurrent
`step`), and its genome fits the offline proposer's design space."""

from __future__ import annotations

import ast

import pytest
import torch

from agents.offline.genome import parse_genome, validate_genome
from evaluator.token_mixer import TokenMixerTask, check_mixer_interface
from evaluator.token_mixer.causality import CausalityOptions, run_causality
from evaluator.token_mixer.checks import (
    ConformanceOptions, RecurrentOptions, rel_error, run_conformance, run_recurrent,
)
from evaluator.token_mixer.complexity import ComplexityOptions, run_complexity
from evaluator.token_mixer.seeds import CATALOGUE, SEED_NAMES, seed_source
from evaluator.types import FailureKind, StageFailure
from tests.evaluator.mixers import CPU, load_module

ZOO = ("softmax_attention", "sliding_window", "linear_attention", "retnet", "gla", "deltanet",
       "gated_deltanet", "mamba2_ssd")
LINEAR = tuple(n for n in ZOO if n != "softmax_attention")
CHUNKED = ("linear_attention", "retnet", "gla", "deltanet", "gated_deltanet", "mamba2_ssd")
ALLOWED = {"torch", "torch.nn", "torch.nn.functional", "math", "typing"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mixer_class(name: str):
    return load_module(seed_source(name), name).Mixer


def test_zoo_is_complete_and_marks_references():
    task = TokenMixerTask()
    seeds = task.seeds()
    assert [s.name for s in seeds] == list(ZOO) == list(SEED_NAMES)
    assert [s.name for s in seeds if s.reference] == ["linear_attention"] == [task.reference_seed]
    assert dict(task.reference_only_seeds) == {"softmax_attention": ("complexity",)}
    assert "complexity" in next(s for s in seeds if s.name == "softmax_attention").motivation
    for seed in seeds:
        assert seed.motivation and seed.code == seed_source(seed.name)
        assert (seed.genome is None) == (seed.name in ("softmax_attention", "sliding_window"))


@pytest.mark.parametrize("name", ZOO)
def test_seed_source_is_a_valid_candidate(name):
    code = seed_source(name)
    tree = ast.parse(code)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= ALLOWED, imported - ALLOWED
    module = load_module(code, name)
    assert check_mixer_interface(module) is None
    for method in ("step", "state_size"):
        assert callable(getattr(module.Mixer, method, None)), f"{name} lacks {method}"


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if e.genome], ids=lambda e: e.name)
def test_seed_genomes_fit_the_design_space_unrepaired(entry):
    genome = parse_genome(entry.genome)  # exact keys and values of the proposer's schema
    assert validate_genome(entry.genome) == genome  # already a sound point: no repair fires


@pytest.mark.parametrize("name", ZOO)
def test_seed_passes_conformance_causality_and_recurrent(name):
    cls = mixer_class(name)
    conf = run_conformance(cls, ConformanceOptions(), CPU, torch.float32, 0)
    assert conf["params"] <= conf["max_params"]
    assert conf["batch_leak_rel"] < 1e-5 and conf["fp64_rel_error"] < 1e-4
    assert conf["low_precision_op_fraction"] == 0.0
    caus = run_causality(cls, CausalityOptions(), CPU, torch.float32, 0)
    assert caus["causality_grad_leak"] == 0.0
    assert caus["causality_perturb_rel"] < 1e-6 and caus["causality_prefix_rel"] < 1e-5
    rec = run_recurrent(cls, RecurrentOptions(), CPU, torch.float32, 0)
    assert rec["has_step"] == 1.0 and rec["step_rel_error"] < 1e-4
    assert rec["state_elems_declared"] == rec["state_elems_measured"] > 0


@pytest.mark.parametrize("name", ZOO)
def test_seed_is_causal_at_bfloat16_alone(name):
    opts = CausalityOptions(include_float32=False)
    metrics = run_causality(mixer_class(name), opts, CPU, torch.bfloat16, 0)
    assert metrics["causality_grad_leak_bfloat16"] == 0.0
    assert metrics["causality_prefix_rel_bfloat16"] < 3e-2
    assert "causality_grad_leak" not in metrics  # float32 pass really was skipped


@pytest.mark.parametrize("name", LINEAR)
def test_linear_seeds_pass_complexity_with_exponent_one(name):
    metrics = run_complexity(mixer_class(name), ComplexityOptions(), CPU, torch.float32, 0)
    assert metrics["complexity_on_meta"] == 1.0
    assert 0.9 < metrics["flops_exponent_tail"] < 1.1
    assert 0.9 < metrics["complexity_exponent"] < 1.1


def test_softmax_attention_fails_complexity_with_exponent_two():
    with pytest.raises(StageFailure) as info:
        run_complexity(mixer_class("softmax_attention"), ComplexityOptions(), CPU, torch.float32, 0)
    assert info.value.kind is FailureKind.COMPLEXITY
    assert 1.85 < info.value.metrics["flops_exponent_tail"] <= 2.0
    assert "T^1.2" in info.value.message


@pytest.mark.parametrize("name", CHUNKED)
def test_chunked_forward_is_exact_across_chunk_sizes(name):
    cls = mixer_class(name)
    x = torch.randn(2, 150, 64, generator=torch.Generator().manual_seed(1))
    outputs = []
    for chunk in (16, 32, 64):
        torch.manual_seed(0)
        with torch.no_grad():
            outputs.append(cls(64, 4, chunk_size=chunk)(x))
    assert rel_error(outputs[1], outputs[0]) < 1e-5
    assert rel_error(outputs[2], outputs[0]) < 1e-5


@pytest.mark.parametrize("name", ("gla", "deltanet", "gated_deltanet", "mamba2_ssd"))
def test_step_matches_forward_with_sharp_gates_over_many_chunks(name):
    """Push the gates towards their extremes (fast forgetting, beta ~ 1) and use several
    chunks: the chunked algebra must still match the token-by-token recurrence."""
    torch.manual_seed(0)
    module = mixer_class(name)(64, 4, chunk_size=16)
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    x = torch.randn(2, 70, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = module(x)
        state, steps = None, []
        for t in range(x.shape[1]):
            y_t, state = module.step(x[:, t], state)
            steps.append(y_t)
    assert torch.isfinite(y).all()
    assert rel_error(torch.stack(steps, 1), y) < 1e-3


def test_sliding_window_sees_exactly_its_window():
    cls = mixer_class("sliding_window")
    torch.manual_seed(0)
    module = cls(64, 4, window=8)
    x = torch.randn(1, 40, 64, requires_grad=True)
    y = module(x)
    (grad,) = torch.autograd.grad(y[0, 30].sum(), x)
    touched = (grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == list(range(23, 31))  # positions 23..30: the window of 8 ending at 30
