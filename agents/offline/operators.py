"""Variation operators over token-mixer genomes: random sampling, mutation, uniform crossover.

Every operator takes an explicit ``random.Random`` (the proposer seeds it from
``ProposalContext.seed``), so a campaign replays the same genomes from the same seeds. Every
operator returns a *repaired* genome (``genome.repair``), and mutation and crossover never
return a genome equal to a parent when another one is reachable.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from agents.offline.genome import GENE_VALUES, GENES, Genome, genome_dict, repair

# How often each gene is picked for mutation (relative weights). Genes that change *what* the
# mixer computes (its recurrence, its decay, its feature map) get the most weight; chunk_size
# mostly trades speed for nothing the rung-0 metrics see, and num_heads / expand_v also move
# the parameter count, so they are picked less often.
MUTATION_BIAS: Mapping[str, float] = {
    "feature_map": 1.0,
    "decay": 1.5,
    "update": 1.5,
    "normalization": 1.0,
    "short_conv": 1.0,
    "output_gate": 1.0,
    "num_heads": 0.5,
    "chunk_size": 0.3,
    "qk_norm": 0.7,
    "expand_v": 0.5,
}
# Probability that a mutation changes two genes instead of one (small steps dominate, as in
# regularized evolution's single-edit mutations; two-gene steps cross repair boundaries).
TWO_GENE_PROBABILITY = 0.3
_MAX_TRIES = 64


def random_genome(rng: random.Random) -> Genome:
    """A uniformly sampled point of the design space, repaired."""
    raw = {gene: rng.choice(values) for gene, values in GENE_VALUES.items()}
    return repair(Genome.model_validate(raw))[0]


def _weighted_genes(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct genes, drawn without replacement with MUTATION_BIAS weights."""
    pool = list(GENES)
    chosen: list[str] = []
    for _ in range(count):
        gene = rng.choices(pool, weights=[MUTATION_BIAS[g] for g in pool])[0]
        pool.remove(gene)
        chosen.append(gene)
    return chosen


def mutate(genome: Genome, rng: random.Random, *, genes: int | None = None) -> Genome:
    """Change 1 or 2 genes (``genes`` forces the count) to a different value, then repair.

    Retries when repair undoes the change (e.g. turning qk_norm off under the delta rule), so
    the result always differs from ``genome``.
    """
    for _ in range(_MAX_TRIES):
        count = genes if genes is not None else (2 if rng.random() < TWO_GENE_PROBABILITY else 1)
        values: dict[str, Any] = genome_dict(genome)
        for gene in _weighted_genes(rng, count):
            values[gene] = rng.choice([v for v in GENE_VALUES[gene] if v != values[gene]])
        child = repair(Genome.model_validate(values))[0]
        if child != genome:
            return child
    raise RuntimeError(f"no mutation of {genome_dict(genome)} survives repair")  # unreachable


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    """Uniform crossover: each gene from ``a`` or ``b`` with probability 1/2, then repaired.

    When the parents differ, retries until the child equals neither (when they differ in only
    one gene no such child exists, and a copy of a parent is returned: callers mutate it).
    """
    da, db = genome_dict(a), genome_dict(b)
    child = a
    for _ in range(_MAX_TRIES):
        values = {gene: (da if rng.random() < 0.5 else db)[gene] for gene in GENES}
        child = repair(Genome.model_validate(values))[0]
        if child not in (a, b):
            return child
    return child
