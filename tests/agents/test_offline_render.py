"""Rendered token mixers: the template covers every gene, and the code it writes is a correct,
causal, length-independent, linear-cost mixer whose recurrent `step` matches its chunked forward."""

from __future__ import annotations

import ast
import hashlib
import math
import random
import types
from pathlib import Path

import jinja2
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from agents.offline import (
    GENE_VALUES,
    GENES,
    TEMPLATE_NAME,
    Genome,
    genome_dict,
    genome_name,
    random_genome,
    render_mixer,
    template_hash,
    validate_genome,
)
from agents.offline.render import _environment
from evaluator.token_mixer.seeds import CATALOGUE

TEMPLATE_FILE = Path(__file__).resolve().parents[2] / "agents" / "templates" / TEMPLATE_NAME
ALLOWED_IMPORTS = {"math", "torch", "torch.nn", "torch.nn.functional", "typing"}
FORBIDDEN_NAMES = {"eval", "exec", "compile", "getattr", "setattr", "delattr", "open",
                   "__import__", "globals", "locals", "vars", "input", "breakpoint"}
ADDITIVE = {
    "feature_map": "elu1", "decay": "none", "update": "additive", "normalization": "denominator",
    "short_conv": 0, "output_gate": "none", "num_heads": None, "chunk_size": 16,
    "qk_norm": False, "expand_v": 1,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the numerics here are tiny: extra threads only fight the other test processes for 2 cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(genome) -> types.ModuleType:
    module = types.ModuleType("candidate")
    exec(compile(render_mixer(genome), "<candidate>", "exec"), module.__dict__)  # noqa: S102
    return module


def sample_genomes() -> list[Genome]:
    """~20 genomes (fixed seed) that together cover every gene value and every
    update x decay and denominator x feature-map combination."""
    targets = {(gene, value) for gene, values in GENE_VALUES.items() for value in values}
    targets |= {("update x decay", (u, d)) for u in GENE_VALUES["update"] for d in GENE_VALUES["decay"]}
    targets |= {("den x fmap", f) for f in ("elu1", "relu", "sigmoid")}

    def covers(g: Genome) -> set:
        found = set(genome_dict(g).items()) | {("update x decay", (g.update, g.decay))}
        if g.normalization == "denominator":
            found.add(("den x fmap", g.feature_map))
        return found

    rng = random.Random(2024)
    chosen: list[Genome] = []
    while targets or len(chosen) < 20:
        g = random_genome(rng)
        if (covers(g) & targets or not targets) and g not in chosen:
            chosen.append(g)
            targets -= covers(g)
    return chosen


SAMPLE = sample_genomes()
# The seed zoo's genomes are points of this space and must render without any repair.
SEED_GENOMES = {e.name: Genome.model_validate(dict(e.genome)) for e in CATALOGUE if e.genome}


def test_seed_zoo_genomes_are_valid_and_need_no_repair():
    assert len(SEED_GENOMES) >= 6
    for name, genome in SEED_GENOMES.items():
        assert validate_genome(genome) == genome, name


def test_template_is_strict_and_hashed():
    assert template_hash() == hashlib.sha256(TEMPLATE_FILE.read_text().encode()).hexdigest()
    assert isinstance(_environment().undefined, type) and issubclass(_environment().undefined, jinja2.StrictUndefined)
    with pytest.raises(jinja2.UndefinedError):
        _environment().get_template(TEMPLATE_NAME).render(g={})
    code = render_mixer(ADDITIVE)
    assert template_hash()[:16] in code and TEMPLATE_NAME in code


# One marker per gene value that only the matching branch of the template writes.
MARKERS = {
    ("feature_map", "identity"): "    return x\n",
    ("feature_map", "elu1"): "return F.elu(x) + 1.0",
    ("feature_map", "relu"): "return F.relu(x)",
    ("feature_map", "silu"): "return F.silu(x)",
    ("feature_map", "sigmoid"): "return torch.sigmoid(x)",
    ("decay", "fixed"): "self.log_gamma",
    ("decay", "data"): "F.logsigmoid(self.decay_proj(x)",
    ("update", "delta"): "torch.linalg.solve_triangular",
    ("normalization", "denominator"): "o[..., :-1] / (o[..., -1:]",
    ("normalization", "rmsnorm"): "torch.rsqrt(",
    ("short_conv", 2): "CONV_SIZE = 2",
    ("short_conv", 3): "CONV_SIZE = 3",
    ("short_conv", 4): "CONV_SIZE = 4",
    ("output_gate", "sigmoid"): "o * torch.sigmoid(gate)",
    ("output_gate", "silu"): "o * F.silu(gate)",
    ("num_heads", 1): "heads = 1 if hidden_size % 1 == 0 else num_heads",
    ("num_heads", 8): "heads = 8 if hidden_size % 8 == 0 else num_heads",
    ("chunk_size", 64): "CHUNK_SIZE = 64",
    ("qk_norm", True): "k = F.normalize(k, dim=-1)",
    ("expand_v", 2): "self.head_v_dim = self.head_k_dim * 2",
}


@pytest.mark.parametrize(
    ("gene", "value"), [(g, v) for g, values in GENE_VALUES.items() for v in values]
)
def test_every_gene_value_renders_its_own_code(gene, value):
    genome = validate_genome({**ADDITIVE, gene: value})
    assert getattr(genome, gene) == value  # the additive / elu1 base needs no repair
    code = render_mixer(genome)
    compile(code, "<candidate>", "exec")
    for (marker_gene, marker_value), marker in MARKERS.items():
        if marker_gene == gene:
            assert (marker in code) == (marker_value == value), (marker_gene, marker_value)
    if (gene, value) == ("short_conv", 0):
        assert "CONV_SIZE" not in code and "self.conv" not in code
    if (gene, value) == ("decay", "none"):
        assert "log_a" not in code and "_log_decay" not in code


def check_policy(code: str) -> None:
    """What the sandbox's static policy asks of candidate code (imports, names, dunders)."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= ALLOWED_IMPORTS
        elif isinstance(node, ast.ImportFrom):
            assert node.module in ALLOWED_IMPORTS
        elif isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_NAMES, node.id
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            # the one dunder: super().__init__() in Mixer.__init__
            assert node.attr == "__init__" and isinstance(node.value, ast.Call), node.attr


def test_a_few_hundred_random_genomes_render_valid_policy_clean_code():
    rng = random.Random(0)
    names = set()
    for _ in range(300):
        genome = random_genome(rng)
        code = render_mixer(genome)
        compile(code, "<candidate>", "exec")
        check_policy(code)
        names.add(code.splitlines()[0])
    assert len(names) > 250  # distinct genomes give distinct, named programs


def test_sample_covers_the_design_space():
    assert 18 <= len(SAMPLE) <= 24
    for gene in GENES:
        assert {getattr(g, gene) for g in SAMPLE} == set(GENE_VALUES[gene])


@pytest.mark.parametrize("genome", SAMPLE + list(SEED_GENOMES.values()), ids=genome_name)
def test_rendered_mixer_is_correct(genome):
    torch.manual_seed(0)
    mixer = load(genome).Mixer(64, 4)
    x = torch.randn(2, 70, 64, requires_grad=True)
    y = mixer(x)
    assert y.shape == (2, 70, 64) and torch.isfinite(y).all()

    # gradients reach the input and every parameter
    y.square().mean().backward(retain_graph=True)
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

    # exact causality, at chunk boundaries and inside chunks
    c = genome.chunk_size
    for t in sorted({0, c - 1, c, 37, 69} & set(range(70))):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert (grad[:, t + 1:] == 0).all(), t
        assert grad[:, t].abs().sum() > 0

    with torch.no_grad():
        # no position depends on the total length (prefixes not multiples of the chunk)
        for t in (37, 65):
            prefix = mixer(x[:, :t])
            torch.testing.assert_close(prefix, y[:, :t], rtol=1e-5, atol=1e-5)
        # recurrent decoding reproduces the chunked forward
        state, steps = None, []
        for t in range(70):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        decoded = torch.stack(steps, dim=1)
        assert ((decoded - y).norm() / y.norm()).item() < 1e-3
        assert mixer.state_size(70) == sum(s[0].numel() for s in state.values())
        assert mixer.state_size(10_000) == mixer.state_size(70)


def flops(genome: Genome, length: int) -> int:
    module = load(genome)
    with torch.device("meta"):
        mixer = module.Mixer(64, 4)
        x = torch.empty(1, length, 64)
    with FlopCounterMode(display=False) as counter:
        mixer(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("genome", SAMPLE, ids=genome_name)
def test_cost_is_linear_in_sequence_length(genome):
    lengths = [256, 512, 1024, 2048]
    logs = [(math.log(t), math.log(flops(genome, t))) for t in lengths]
    mx = sum(a for a, _ in logs) / len(logs)
    my = sum(b for _, b in logs) / len(logs)
    slope = sum((a - mx) * (b - my) for a, b in logs) / sum((a - mx) ** 2 for a, _ in logs)
    assert 0.9 < slope < 1.2, slope


def test_num_heads_gene_falls_back_when_it_does_not_divide_hidden_size():
    module = load({**ADDITIVE, "num_heads": 8})
    assert module.Mixer(64, 4).num_heads == 8
    assert module.Mixer(36, 4).num_heads == 4  # 36 % 8 != 0: the task's count
    assert module.Mixer(36, 4)(torch.randn(1, 5, 36)).shape == (1, 5, 36)
    assert load(ADDITIVE).Mixer(64, 2).num_heads == 2  # None: the task's count


@pytest.mark.parametrize("genome", [g for g in SAMPLE if g.update == "delta"][:1]
                         + [g for g in SAMPLE if g.normalization == "denominator"][:1]
                         + [g for g in SAMPLE if g.decay == "data"][:1], ids=genome_name)
def test_bfloat16_modules_keep_the_recurrence_in_float32(genome):
    torch.manual_seed(0)
    mixer = load(genome).Mixer(64, 4)
    x = torch.randn(2, 40, 64)
    with torch.no_grad():
        reference = mixer(x)
        mixer = mixer.to(torch.bfloat16)
        y = mixer(x.bfloat16())
        y_t, state = mixer.step(x[:, 0].bfloat16(), None)
    assert y.dtype == y_t.dtype == torch.bfloat16 and state["S"].dtype == torch.float32
    assert ((y.float() - reference).norm() / reference.norm()).item() < 3e-2
    torch.testing.assert_close(y_t.float(), y[:, 0].float(), rtol=2e-2, atol=2e-2)
