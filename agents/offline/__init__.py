"""The built-in offline proposer: a templated token-mixer design space searched without an LLM.

- ``genome``: the schema (``Genome``), repair rules, keys, names.
- ``render``: genome -> PyTorch source through the packaged jinja2 template.
- ``operators``: ``random_genome``, ``mutate``, ``crossover`` (seeded, repaired).
- ``proposer``: ``OfflineProposer``, the ``Proposer`` that ``disco run`` uses with no LLM.
"""

from agents.offline.genome import (
    GENE_VALUES,
    GENES,
    Genome,
    GenomeError,
    describe,
    genome_dict,
    genome_key,
    genome_name,
    parse_genome,
    repair,
    validate_genome,
)
from agents.offline.operators import MUTATION_BIAS, crossover, mutate, random_genome
from agents.offline.proposer import OfflineProposer
from agents.offline.render import TEMPLATE_NAME, render_mixer, template_hash

__all__ = [
    "GENE_VALUES",
    "GENES",
    "MUTATION_BIAS",
    "TEMPLATE_NAME",
    "Genome",
    "GenomeError",
    "OfflineProposer",
    "crossover",
    "describe",
    "genome_dict",
    "genome_key",
    "genome_name",
    "mutate",
    "parse_genome",
    "random_genome",
    "render_mixer",
    "repair",
    "template_hash",
    "validate_genome",
]
