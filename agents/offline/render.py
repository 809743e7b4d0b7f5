"""Render a token-mixer genome into PyTorch module source with the packaged jinja2 template.

One template (``agents/templates/offline/mixer.py.j2``), one render function. The template's
name and sha256 are exposed so that a candidate can be traced to the exact template text that
produced it (they are also written into the rendered module's docstring).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jinja2

from agents.offline.genome import Genome, describe, genome_dict, genome_name, validate_genome

TEMPLATE_NAME = "offline/mixer.py.j2"


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("agents", "templates"),
        undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, never ""
        autoescape=False,  # the output is Python, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@functools.cache
def template_source() -> str:
    """The template text as shipped."""
    loader = _environment().loader
    assert loader is not None
    source, _, _ = loader.get_source(_environment(), TEMPLATE_NAME)
    return source


def template_hash() -> str:
    """sha256 (hex) of the template text: recorded with every rendered candidate."""
    return hashlib.sha256(template_source().encode()).hexdigest()


def render_mixer(genome: Mapping[str, Any] | Genome) -> str:
    """PyTorch source of ``class Mixer(nn.Module)`` for ``genome`` (validated and repaired first)."""
    g = validate_genome(genome)
    text = _environment().get_template(TEMPLATE_NAME).render(
        g=genome_dict(g),
        delta=g.update == "delta",
        decay=g.decay != "none",
        den=g.normalization == "denominator",
        name=genome_name(g),
        description=describe(g),
        genome_json=json.dumps(genome_dict(g), sort_keys=True),
        template_name=TEMPLATE_NAME,
        template_hash=template_hash(),
    )
    return text
