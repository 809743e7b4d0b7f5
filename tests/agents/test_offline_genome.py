"""The offline proposer's design space: schema, repair rules, keys, names and variation operators."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from agents.offline import (
    GENE_VALUES,
    GENES,
    MUTATION_BIAS,
    Genome,
    GenomeError,
    crossover,
    genome_dict,
    genome_key,
    genome_name,
    mutate,
    parse_genome,
    random_genome,
    repair,
    validate_genome,
)
from agents.offline.genome import POSITIVE_FEATURE_MAPS, changed_genes

# The schema the seed zoo relies on, spelled out independently of the module under test.
SCHEMA = {
    "feature_map": {"identity", "elu1", "relu", "silu", "sigmoid"},
    "decay": {"none", "fixed", "data"},
    "update": {"additive", "delta"},
    "normalization": {"none", "denominator", "rmsnorm"},
    "short_conv": {0, 2, 3, 4},
    "output_gate": {"none", "sigmoid", "silu"},
    "num_heads": {None, 1, 2, 4, 8},
    "chunk_size": {16, 32, 64},
    "qk_norm": {False, True},
    "expand_v": {1, 2},
}
GDN = {
    "feature_map": "silu", "decay": "data", "update": "delta", "normalization": "rmsnorm",
    "short_conv": 4, "output_gate": "silu", "num_heads": None, "chunk_size": 32,
    "qk_norm": True, "expand_v": 1,
}


def every_genome():
    for values in itertools.product(*GENE_VALUES.values()):
        yield Genome.model_validate(dict(zip(GENES, values)))


def test_schema_is_exactly_the_contract():
    assert set(Genome.model_fields) == set(SCHEMA)
    assert {gene: set(values) for gene, values in GENE_VALUES.items()} == SCHEMA
    for gene, values in SCHEMA.items():
        for value in values:
            assert getattr(parse_genome({**GDN, gene: value}), gene) == value


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({**GDN, "colour": "red"}, "'colour' is not a gene"),
        ({k: v for k, v in GDN.items() if k != "decay"}, "'decay' is missing"),
        ({**GDN, "decay": "exponential"}, "'decay': got 'exponential', expected one of"),
        ({**GDN, "short_conv": 5}, "'short_conv': got 5"),
        ({**GDN, "short_conv": "4"}, "'short_conv': got '4'"),  # strict: no string coercion
        ({**GDN, "expand_v": True}, "'expand_v': got True"),  # strict: a bool is not 1
        ({**GDN, "qk_norm": "yes"}, "'qk_norm': got 'yes'"),
    ],
)
def test_bad_genomes_give_one_line_naming_the_key(data, fragment):
    with pytest.raises(GenomeError) as info:
        validate_genome(data)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_delta_rule_forces_qk_norm():
    fixed, notes = repair(parse_genome({**GDN, "qk_norm": False}))
    assert fixed.qk_norm is True and len(notes) == 1 and "unit-norm keys" in notes[0]


def test_delta_rule_with_denominator_becomes_rmsnorm():
    fixed = validate_genome({**GDN, "feature_map": "elu1", "normalization": "denominator"})
    assert fixed.normalization == "rmsnorm"


@pytest.mark.parametrize("feature_map", ["identity", "silu"])
def test_denominator_needs_non_negative_features(feature_map):
    additive = {**GDN, "update": "additive", "normalization": "denominator"}
    assert validate_genome({**additive, "feature_map": feature_map}).normalization == "rmsnorm"
    assert validate_genome({**additive, "feature_map": "elu1"}).normalization == "denominator"


def test_repair_is_sound_and_idempotent_over_the_whole_space():
    repaired = 0
    for genome in every_genome():
        fixed, notes = repair(genome)
        repaired += bool(notes)
        assert repair(fixed) == (fixed, ())
        assert (fixed == genome) == (not notes)
        if fixed.update == "delta":
            assert fixed.qk_norm and fixed.normalization != "denominator"
        if fixed.normalization == "denominator":
            assert fixed.feature_map in POSITIVE_FEATURE_MAPS
    assert 0 < repaired < 64800 // 2


def test_genome_key_is_stable_and_identifies_the_repaired_genome():
    assert genome_key(GDN) == genome_key(dict(reversed(list(GDN.items()))))
    assert genome_key({**GDN, "qk_norm": False}) == genome_key(GDN)  # repairs to GDN
    assert genome_key({**GDN, "chunk_size": 64}) != genome_key(GDN)
    assert len(genome_key(GDN)) == 16


def test_names_are_descriptive():
    name = genome_name(parse_genome(GDN))
    assert name.startswith("gdn-silu-rms-conv4-silugate-c32-")
    assert name.endswith(genome_key(GDN)[:4])
    linear = {**GDN, "update": "additive", "decay": "none", "feature_map": "elu1",
              "normalization": "denominator", "short_conv": 0, "output_gate": "none",
              "qk_norm": False}
    assert genome_name(parse_genome(linear)).startswith("linattn-elu1-den-c32-")


def test_random_genome_is_seeded_and_covers_every_value():
    a = [random_genome(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = random.Random(0)
    seen = {gene: set() for gene in GENES}
    for _ in range(600):
        for gene, value in genome_dict(random_genome(rng)).items():
            seen[gene].add(value)
    assert seen == SCHEMA


def test_mutation_is_seeded_changes_one_or_two_genes_and_follows_the_bias():
    parent = parse_genome({**GDN, "update": "additive", "qk_norm": False})
    assert mutate(parent, random.Random(3)) == mutate(parent, random.Random(3))
    counts: Counter[int] = Counter()
    genes: Counter[str] = Counter()
    rng = random.Random(0)
    for _ in range(2000):
        child = mutate(parent, rng)
        changes = changed_genes(parent, child)
        assert child == repair(child)[0]
        # 1-2 mutated genes, plus at most one repair (update -> delta also forces qk_norm)
        assert 1 <= len(changes) <= 3
        counts[len(changes)] += 1
        genes.update(gene for gene, _, _ in changes)
    assert counts[1] > counts[2] > 0
    assert genes["decay"] > 2 * genes["chunk_size"]  # bias 1.5 vs 0.3
    assert set(genes) == set(GENES)
    assert MUTATION_BIAS.keys() == set(GENES)


def test_mutation_never_returns_the_parent_even_when_repair_undoes_a_change():
    parent = parse_genome(GDN)  # delta rule: a qk_norm flip is always repaired away
    rng = random.Random(1)
    for _ in range(500):
        assert mutate(parent, rng, genes=1) != parent


def test_crossover_is_seeded_and_mixes_parent_genes():
    a = parse_genome(GDN)
    b = parse_genome({**GDN, "update": "additive", "decay": "fixed", "feature_map": "elu1",
                      "normalization": "denominator", "short_conv": 0, "chunk_size": 64,
                      "qk_norm": False})
    assert crossover(a, b, random.Random(5)) == crossover(a, b, random.Random(5))
    rng = random.Random(0)
    children = {crossover(a, b, rng) for _ in range(200)}
    assert len(children) > 20
    da, db = genome_dict(a), genome_dict(b)
    for child in children:
        assert child not in (a, b)
        for gene, value in genome_dict(child).items():
            # every gene comes from a parent, except values the repair rules set
            assert value in (da[gene], db[gene]) or gene in ("qk_norm", "normalization")
