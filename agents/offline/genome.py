"""The token-mixer design space of the offline proposer: the genome, its repair rules, its names.

A genome is one point of a templated family of chunked linear-recurrence token mixers
(linear attention, RetNet, GLA, DeltaNet, Gated DeltaNet, Mamba2-like SSD are all points of
it). ``agents.offline.render`` turns a genome into PyTorch source; ``agents.offline.operators``
mutates and crosses genomes. The seed zoo of the token-mixer task stores genomes with exactly
these keys, so the schema here is a contract: keys and values change only together with it.

Some combinations are numerically unsound; they are *repaired* (rewritten to the nearest sound
point) rather than rejected, so that every genome an operator produces renders a trainable
mixer. The rules live in ``_REPAIRS`` below, each with the reason it exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

FeatureMap = Literal["identity", "elu1", "relu", "silu", "sigmoid"]
Decay = Literal["none", "fixed", "data"]
Update = Literal["additive", "delta"]
Normalization = Literal["none", "denominator", "rmsnorm"]
OutputGate = Literal["none", "sigmoid", "silu"]


class Genome(BaseModel):
    """One point of the token-mixer design space. Every key is required (no hidden defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    feature_map: FeatureMap  # phi applied to q and k
    decay: Decay  # none | fixed per-head gamma (RetNet) | data-dependent per-head gate (GLA/Mamba2)
    update: Update  # additive S += k v^T, or the delta rule S += beta k (v - S^T k)^T
    normalization: Normalization  # of the per-head output: q^T z denominator, or RMSNorm
    short_conv: Literal[0, 2, 3, 4]  # kernel of a causal depthwise conv on q/k/v; 0 = none
    output_gate: OutputGate  # o *= act(W_g x)
    num_heads: Literal[1, 2, 4, 8] | None  # None = the task's num_heads
    chunk_size: Literal[16, 32, 64]  # tokens per chunk of the chunked algorithm
    qk_norm: bool  # L2-normalise q and k (after the feature map)
    expand_v: Literal[1, 2]  # value / state width = expand_v * head key width

    @field_validator("short_conv", "num_heads", "chunk_size", "expand_v", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        # bool is a subclass of int, so strict Literal[1, 2] would accept True as 1
        if isinstance(value, bool):
            raise ValueError("a bool is not an integer gene value")
        return value


# The allowed values of every gene, in a fixed order (operators sample from these).
GENE_VALUES: Mapping[str, tuple[Any, ...]] = {
    "feature_map": ("identity", "elu1", "relu", "silu", "sigmoid"),
    "decay": ("none", "fixed", "data"),
    "update": ("additive", "delta"),
    "normalization": ("none", "denominator", "rmsnorm"),
    "short_conv": (0, 2, 3, 4),
    "output_gate": ("none", "sigmoid", "silu"),
    "num_heads": (None, 1, 2, 4, 8),
    "chunk_size": (16, 32, 64),
    "qk_norm": (False, True),
    "expand_v": (1, 2),
}
GENES: tuple[str, ...] = tuple(GENE_VALUES)

# Feature maps whose values are always >= 0, so phi(q)^T phi(k) is a non-negative kernel weight.
POSITIVE_FEATURE_MAPS = frozenset({"elu1", "relu", "sigmoid"})


class GenomeError(ValueError):
    """A genome mapping does not fit the schema; the message is one line naming the key."""


# --- repair rules -------------------------------------------------------------------------
# Each rule: (applies?, fix, why). Rules run in order until none applies; every fix moves the
# genome to a point where its rule no longer applies and that no earlier rule re-triggers on,
# so repair terminates and is idempotent (tests check both).

Rule = tuple[Callable[[Genome], bool], Mapping[str, Any], str]

_REPAIRS: tuple[Rule, ...] = (
    (
        lambda g: g.update == "delta" and not g.qk_norm,
        {"qk_norm": True},
        # S <- a S (I - beta k k^T) + beta v k^T is a contraction only when beta ||k||^2 <= 2.
        # beta comes from a sigmoid (0..1), so unit-norm keys make it stable for any feature
        # map; a bounded feature map alone does not (sigmoid features in (0,1)^d have norm up
        # to sqrt(d)). DeltaNet (Yang et al., 2024) L2-normalises q and k for this reason.
        "the delta rule is only stable with unit-norm keys, so qk_norm was forced on",
    ),
    (
        lambda g: g.update == "delta" and g.normalization == "denominator",
        {"normalization": "rmsnorm"},
        # The denominator q^T z divides by the sum of the kernel weights that the additive
        # state accumulated. The delta rule overwrites state instead of accumulating it, so
        # there is no such sum (its effective weights can be negative); per-head RMSNorm is
        # what DeltaNet / Gated DeltaNet use.
        "a q^T z denominator is meaningless for the delta rule, so normalization became rmsnorm",
    ),
    (
        lambda g: g.normalization == "denominator" and g.feature_map not in POSITIVE_FEATURE_MAPS,
        {"normalization": "rmsnorm"},
        # The normalised form y = sum_j w_j v_j / sum_j w_j is a weighted average only for
        # w_j = phi(q)^T phi(k_j) >= 0 (Katharopoulos et al., 2020 use elu+1). With identity
        # or silu features the denominator crosses zero and the output explodes.
        "a q^T z denominator needs non-negative features, so normalization became rmsnorm",
    ),
)
# Not a repair but a runtime rule of the rendered module: a num_heads gene that does not divide
# the task's hidden_size falls back to the task's num_heads (hidden_size is unknown here).
# Left valid on purpose: additive updates with no decay and no normalization (the state and
# the output grow with T). That is weak but sound, and measuring it is the evaluator's job.


def repair(genome: Genome) -> tuple[Genome, tuple[str, ...]]:
    """Apply the repair rules; returns the sound genome and one note per rule that fired."""
    notes: list[str] = []
    for _ in range(len(_REPAIRS) + 1):
        for applies, fix, why in _REPAIRS:
            if applies(genome):
                genome = genome.model_copy(update=dict(fix))
                notes.append(why)
                break
        else:
            return genome, tuple(notes)
    raise AssertionError("genome repair did not converge")  # a rule set bug, not a user error


def _error_line(exc: ValidationError, data: Mapping[str, Any]) -> str:
    err = exc.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else "?"
    if err["type"] == "extra_forbidden":
        return f"genome key {key!r} is not a gene; genes are: {', '.join(GENES)}"
    if err["type"] == "missing":
        return f"genome key {key!r} is missing; every gene must be given: {', '.join(GENES)}"
    allowed = ", ".join(json.dumps(v) for v in GENE_VALUES.get(key, ()))
    return f"genome key {key!r}: got {data.get(key)!r}, expected one of {allowed}"


def parse_genome(data: Mapping[str, Any] | Genome) -> Genome:
    """Check a mapping against the schema (no repair); raises GenomeError with one line."""
    if isinstance(data, Genome):
        return data
    if not isinstance(data, Mapping):
        raise GenomeError(f"a genome must be a mapping of genes, got {type(data).__name__}")
    try:
        return Genome.model_validate(dict(data))
    except ValidationError as exc:
        raise GenomeError(_error_line(exc, data)) from None


def validate_genome(data: Mapping[str, Any] | Genome) -> Genome:
    """Parse ``data`` strictly (GenomeError on unknown keys / values) and return it repaired."""
    return repair(parse_genome(data))[0]


def genome_dict(genome: Genome) -> dict[str, Any]:
    """The JSON-ready mapping of a genome, keys in schema order (what a Proposal carries)."""
    return genome.model_dump()


def genome_key(data: Mapping[str, Any] | Genome) -> str:
    """A stable 16-hex-digit identity of the *repaired* genome (equal keys render equal code)."""
    canonical = json.dumps(genome_dict(validate_genome(data)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def changed_genes(before: Genome, after: Genome) -> list[tuple[str, Any, Any]]:
    """(gene, old value, new value) for every gene that differs, in schema order."""
    a, b = genome_dict(before), genome_dict(after)
    return [(gene, a[gene], b[gene]) for gene in GENES if a[gene] != b[gene]]


# --- names and descriptions ----------------------------------------------------------------

_FAMILY = {  # (update, decay) -> the published mixer this corner of the space is closest to
    ("additive", "none"): ("linattn", "linear attention"),
    ("additive", "fixed"): ("retnet", "RetNet-style retention (fixed per-head decay)"),
    ("additive", "data"): ("gla", "gated linear attention (data-dependent per-head decay)"),
    ("delta", "none"): ("deltanet", "DeltaNet-style delta rule"),
    ("delta", "fixed"): ("decaydelta", "delta rule with a fixed per-head decay"),
    ("delta", "data"): ("gdn", "gated delta rule (data-dependent per-head decay)"),
}


def genome_name(genome: Genome) -> str:
    """A short, readable, unique-enough name, e.g. ``gdn-silu-rms-conv4-silugate-c32-1a2b``."""
    parts = [_FAMILY[(genome.update, genome.decay)][0], genome.feature_map]
    parts += {"none": [], "denominator": ["den"], "rmsnorm": ["rms"]}[genome.normalization]
    if genome.short_conv:
        parts.append(f"conv{genome.short_conv}")
    if genome.output_gate != "none":
        parts.append(f"{genome.output_gate}gate")
    if genome.qk_norm and genome.update == "additive":  # always on for delta: not informative
        parts.append("qkn")
    if genome.num_heads is not None:
        parts.append(f"h{genome.num_heads}")
    if genome.expand_v != 1:
        parts.append(f"ev{genome.expand_v}")
    parts.append(f"c{genome.chunk_size}")
    parts.append(genome_key(genome)[:4])
    return "-".join(parts)


def describe(genome: Genome) -> str:
    """One plain-English sentence saying what mixer the genome renders."""
    family = _FAMILY[(genome.update, genome.decay)][1]
    bits = [f"{genome.feature_map} features"]
    if genome.qk_norm:
        bits.append("L2-normalised q/k")
    if genome.normalization == "denominator":
        bits.append("a q^T z denominator")
    elif genome.normalization == "rmsnorm":
        bits.append("per-head RMSNorm")
    if genome.short_conv:
        bits.append(f"a {genome.short_conv}-tap causal short conv on q/k/v")
    if genome.output_gate != "none":
        bits.append(f"a {genome.output_gate} output gate")
    if genome.num_heads is None:
        bits.append("the task's head count")
    else:
        bits.append(f"{genome.num_heads} head{'s' if genome.num_heads > 1 else ''}")
    if genome.expand_v != 1:
        bits.append(f"{genome.expand_v}x wider values/state")
    listed = ", ".join(bits[:-1]) + f" and {bits[-1]}"
    return f"{family[0].upper()}{family[1:]}: {listed}; computed in chunks of {genome.chunk_size}."
