"""Helpers shared by CLI commands: database option, JSON output, one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer


DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL or SQLite path (default: $DISCO_DB or ./disco.db)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
CampaignOption = Annotated[
    str | None, typer.Option("--campaign", "-c", help="Campaign id (default: the most recent).")
]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def console():
    """stdout console; wide when piped so tables are not folded into an 80-column log."""
    from rich.console import Console

    probe = Console()
    return Console(highlight=False, width=probe.width if probe.is_terminal else 160)
