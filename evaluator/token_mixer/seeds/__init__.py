"""The baseline zoo of the token-mixer task: one complete candidate module per file.

Each ``<name>.py`` here is a candidate exactly as an agent would write one (``class Mixer``,
imports limited to torch / math / typing), shipped as package data and read as text with
``importlib.resources``; the task never imports these files as part of its own code. Each
seed has a chunked (or blocked) parallel form in ``forward``, a recurrent ``step`` for
decoding, and ``state_size``.

Genomes place a seed in the offline proposer's design space (agents/offline/genome.py); the
two attention seeds have no counterpart there (genome None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from evaluator.types import Seed


def _genome(feature_map: str, decay: str, update: str, normalization: str, short_conv: int,
            output_gate: str, chunk_size: int, qk_norm: bool, expand_v: int) -> dict[str, Any]:
    return {
        "feature_map": feature_map, "decay": decay, "update": update,
        "normalization": normalization, "short_conv": short_conv, "output_gate": output_gate,
        "num_heads": None, "chunk_size": chunk_size, "qk_norm": qk_norm, "expand_v": expand_v,
    }


@dataclass(frozen=True)
class SeedEntry:
    name: str
    motivation: str
    genome: Mapping[str, Any] | None
    # campaign constraints this seed is known to violate: it is evaluated and shown as a
    # reference point, never used as a parent
    violates: tuple[str, ...] = ()


CATALOGUE: tuple[SeedEntry, ...] = (
    SeedEntry(
        "softmax_attention",
        "Causal softmax attention (SDPA) with rotary positions: the quality reference for recall. "
        "Quadratic in sequence length, so it violates a linear complexity bound on purpose and is "
        "kept as a reference point, not as a parent.",
        None, violates=("complexity",),
    ),
    SeedEntry(
        "sliding_window",
        "Sliding-window softmax attention (window 64), computed blockwise in O(T * window): "
        "exact recall inside the window, none beyond it; a constant-size KV cache.",
        None,
    ),
    SeedEntry(
        "linear_attention",
        "Linear attention with the elu+1 feature map and a q.z denominator (Katharopoulos et "
        "al., 2020), chunked: the plain linear baseline every other mixer is measured against.",
        _genome("elu1", "none", "additive", "denominator", 0, "none", 64, False, 1),
    ),
    SeedEntry(
        "retnet",
        "RetNet-style retention: a fixed per-head exponential decay forgets old tokens, with 2x "
        "wide values, per-head RMS norm and a swish output gate.",
        _genome("identity", "fixed", "additive", "rmsnorm", 0, "silu", 64, False, 2),
    ),
    SeedEntry(
        "gla",
        "GLA-style gated linear attention: a data-dependent forget gate per key channel decides "
        "what to keep, with per-head RMS norm and a swish output gate.",
        _genome("identity", "data", "additive", "rmsnorm", 0, "silu", 16, False, 1),
    ),
    SeedEntry(
        "deltanet",
        "DeltaNet: the delta rule overwrites the value stored under a key instead of adding to "
        "it, which is what associative recall needs; chunked WY/UT-transform form, short conv.",
        _genome("silu", "none", "delta", "rmsnorm", 4, "none", 64, True, 1),
    ),
    SeedEntry(
        "gated_deltanet",
        "Gated DeltaNet: the delta rule plus a data-dependent scalar decay per head, so the state "
        "can both overwrite one association and forget everything quickly.",
        _genome("silu", "data", "delta", "rmsnorm", 4, "silu", 64, True, 1),
    ),
    SeedEntry(
        "mamba2_ssd",
        "Mamba2-style SSD: a selective state space with a data-dependent scalar decay per head, "
        "keys/queries (B/C) shared across heads, 2x expansion, short conv and a gated RMS norm.",
        _genome("silu", "data", "additive", "rmsnorm", 4, "silu", 64, False, 2),
    ),
)

SEED_NAMES: tuple[str, ...] = tuple(e.name for e in CATALOGUE)


def seed_source(name: str) -> str:
    """The source text of seed ``name`` (a complete candidate module)."""
    if name not in SEED_NAMES:
        raise KeyError(f"no seed named {name!r}; seeds: {', '.join(SEED_NAMES)}")
    return resources.files(__package__).joinpath(f"{name}.py").read_text(encoding="utf-8")


def load_seeds(reference: str) -> list[Seed]:
    """Every seed as a ``Seed``; ``reference`` names the one fitness is measured against."""
    return [
        Seed(name=e.name, code=seed_source(e.name), motivation=e.motivation,
             genome=dict(e.genome) if e.genome is not None else None,
             reference=(e.name == reference))
        for e in CATALOGUE
    ]
