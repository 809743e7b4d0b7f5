"""`disco query "SQL"` (read-only, refused if it writes) and `disco export` (CSV / JSONL /
Parquet of candidates or evaluations)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from discovery.cli.common import CampaignOption, DbOption, JsonOption, console, print_json
from discovery.errors import UsageError, UserError


def query_command(
    sql: Annotated[str, typer.Argument(help="One read-only SQL statement (SELECT / WITH / EXPLAIN).")],
    db: DbOption = None,
    json_out: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows printed in the table view.")] = 200,
) -> None:
    """Run read-only SQL against the knowledge base. Writing statements are refused."""
    from knowledge_base.db import DatabaseError, open_database, resolve_url
    from knowledge_base.query import ReadOnlyQueryError, run_readonly_query

    url = resolve_url(db)
    try:
        open_database(url).close()  # migrate / validate first, so a new file has the schema
        columns, rows = run_readonly_query(url, sql)
    except (ReadOnlyQueryError, DatabaseError) as err:
        raise UserError(str(err)) from None
    if json_out:
        print_json({"columns": columns, "rows": [dict(zip(columns, r)) for r in rows]})
        return
    from rich.table import Table

    table = Table(show_lines=False)
    for col in columns:
        table.add_column(str(col), overflow="fold")
    for r in rows[:limit]:
        table.add_row(*["NULL" if v is None else str(v) for v in r])
    c = console()
    c.print(table)
    c.print(f"{len(rows)} row(s)" + (f", first {limit} shown" if len(rows) > limit else ""))


def export_command(
    format: Annotated[str, typer.Option("--format", "-f", help="csv | jsonl | parquet")] = "jsonl",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")] = None,
    table: Annotated[str, typer.Option("--table", help="candidates | evaluations")] = "candidates",
    campaign: CampaignOption = None,
    db: DbOption = None,
) -> None:
    """Export candidates (with objectives, fitness, lineage) or evaluations."""
    from discovery.cli.inspect_cmd import resolve_campaign
    from discovery.session import open_db
    from knowledge_base.export import ExportError, export_rows

    if format not in ("csv", "jsonl", "parquet"):
        raise UsageError(f"--format {format!r}: expected csv, jsonl or parquet")
    if table not in ("candidates", "evaluations"):
        raise UsageError(f"--table {table!r}: expected candidates or evaluations")
    if format == "parquet" and out is None:
        raise UsageError("--format parquet needs --out PATH")
    database = open_db(db)
    try:
        with database.read_session() as s:
            cid = resolve_campaign(s, campaign)
        try:
            n = export_rows(database, cid, table, format, out if out is not None else sys.stdout)
        except ExportError as err:
            raise UserError(str(err)) from None
    finally:
        database.close()
    if out is not None:
        console().print(f"wrote {n} {table} of campaign {cid} to {out}", style="dim")
