"""Export candidates and evaluations to CSV, JSONL or Parquet, for ``disco export``.

One table per output: ``candidates`` (status, fitness, feasibility, raw objectives, lineage
parents, failure) or ``evaluations`` (one row per stage x target x rung x attempt with its
metrics). JSONL keeps nested values (objectives, metrics, parent lists) as JSON; CSV and
Parquet flatten them into ``objective.<name>`` / ``metric.<name>`` columns (the union over all
rows, sorted) and join id lists with ``;``. Parquet needs ``pyarrow``; without it the export
fails with a one-line ``ExportError`` saying how to install it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knowledge_base.db import Database
from knowledge_base.models import Candidate, Evaluation, LineageEdge
from knowledge_base.values import as_utc, json_safe

EXPORT_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
EXPORT_TABLES: tuple[str, ...] = ("candidates", "evaluations")
_NESTED_PREFIX = {"objectives": "objective.", "metrics": "metric."}


class ExportError(Exception):
    """The export cannot be written; the message is one line for the user."""


def _iso(value: dt.datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def _edges_by_child(session: Session, campaign_id: str | None) -> dict[int, list[LineageEdge]]:
    stmt = select(LineageEdge).join(Candidate, LineageEdge.child_id == Candidate.id)
    if campaign_id is not None:
        stmt = stmt.where(Candidate.campaign_id == campaign_id)
    edges: dict[int, list[LineageEdge]] = defaultdict(list)
    for edge in session.scalars(stmt.order_by(LineageEdge.id)):
        edges[edge.child_id].append(edge)
    return edges


def candidate_records(
    session: Session, campaign_id: str | None = None, *, include_code: bool = False
) -> list[dict[str, Any]]:
    """One JSON-ready record per candidate (all campaigns when ``campaign_id`` is None)."""
    edges = _edges_by_child(session, campaign_id)
    stmt = select(Candidate)
    if campaign_id is not None:
        stmt = stmt.where(Candidate.campaign_id == campaign_id)
    records = []
    for c in session.scalars(stmt.order_by(Candidate.id)):
        mine = edges.get(c.id, [])
        record: dict[str, Any] = {
            "id": c.id, "campaign_id": c.campaign_id, "name": c.name, "status": c.status,
            "origin": c.origin, "fitness": c.fitness, "feasible": c.feasible, "rung": c.rung,
            "objectives": dict(c.objectives or {}),
            "parents": [e.parent_id for e in mine if e.kind != "inspiration"],
            "parent_kinds": [e.kind for e in mine if e.kind != "inspiration"],
            "inspirations": [e.parent_id for e in mine if e.kind == "inspiration"],
            "is_seed": c.is_seed, "is_reference": c.is_reference, "attempts": c.attempts,
            "debug_round": c.debug_round, "failure_kind": c.failure_kind,
            "failure_stage": c.failure_stage, "failure_message": c.failure_message,
            "code_hash": c.code_hash, "motivation": c.motivation,
            "genome": c.genome, "created_at": _iso(c.created_at),
        }
        if include_code:
            record["code"] = c.code
        records.append(json_safe(record))
    return records


def evaluation_records(session: Session, campaign_id: str | None = None) -> list[dict[str, Any]]:
    """One JSON-ready record per evaluation row."""
    stmt = select(Evaluation)
    if campaign_id is not None:
        stmt = stmt.where(Evaluation.campaign_id == campaign_id)
    records = []
    for e in session.scalars(stmt.order_by(Evaluation.id)):
        records.append(json_safe({
            "id": e.id, "candidate_id": e.candidate_id, "campaign_id": e.campaign_id,
            "stage": e.stage, "target": e.target, "rung": e.rung, "attempt": e.attempt,
            "ok": e.ok, "failure_kind": e.failure_kind, "message": e.message,
            "wall_s": e.wall_s, "metrics": dict(e.metrics or {}),
            "artifacts": dict(e.artifacts or {}), "log_tail": e.log_tail,
            "created_at": _iso(e.created_at),
        }))
    return records


def flatten(records: Iterable[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and flat rows: objectives/metrics spread into prefixed columns, id lists
    joined with ``;``, other nested values as JSON text."""
    rows: list[dict[str, Any]] = []
    base: dict[str, None] = {}
    nested: dict[str, set[str]] = defaultdict(set)
    for record in records:
        row: dict[str, Any] = {}
        for key, value in record.items():
            if key in _NESTED_PREFIX:
                for name, x in (value or {}).items():
                    column = _NESTED_PREFIX[key] + name
                    nested[key].add(column)
                    row[column] = x
                continue
            base.setdefault(key, None)
            if isinstance(value, list):
                row[key] = ";".join(str(v) for v in value)
            elif isinstance(value, dict):
                row[key] = json.dumps(value, sort_keys=True) if value else ""
            else:
                row[key] = value
        rows.append(row)
    columns = list(base)
    for key in _NESTED_PREFIX:
        columns += sorted(nested.get(key, ()))
    return columns, rows


def _records(
    session: Session, table: str, campaign_id: str | None, include_code: bool
) -> list[dict[str, Any]]:
    if table == "candidates":
        return candidate_records(session, campaign_id, include_code=include_code)
    if table == "evaluations":
        return evaluation_records(session, campaign_id)
    raise ExportError(f"unknown export table {table!r}: expected {' or '.join(EXPORT_TABLES)}")


def write_export(
    session: Session,
    out: str | Path | IO[Any],
    fmt: str,
    *,
    table: str = "candidates",
    campaign_id: str | None = None,
    include_code: bool = False,
) -> int:
    """Write ``table`` in ``fmt`` to a path or an open stream (text for csv/jsonl, binary for
    parquet); returns the number of rows written."""
    if fmt not in EXPORT_FORMATS:
        expected = ", ".join(EXPORT_FORMATS)
        raise ExportError(f"unknown export format {fmt!r}: expected one of {expected}")
    if fmt == "parquet":
        _require_pyarrow()
    records = _records(session, table, campaign_id, include_code)
    if isinstance(out, (str, Path)):
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            with path.open("wb") as stream:
                _write_parquet(records, stream)
        else:
            with path.open("w", encoding="utf-8", newline="") as stream:
                _write_text(records, stream, fmt)
    elif fmt == "parquet":
        _write_parquet(records, out)
    else:
        _write_text(records, out, fmt)
    return len(records)


def export_rows(
    db: Database,
    campaign_id: str | None,
    table: str,
    fmt: str,
    out: str | Path | IO[Any],
    *,
    include_code: bool = False,
) -> int:
    """``write_export`` in a read session of ``db`` (what ``disco export`` calls)."""
    with db.read_session() as session:
        return write_export(session, out, fmt, table=table, campaign_id=campaign_id,
                            include_code=include_code)


def export_all(
    session: Session,
    out_dir: str | Path,
    fmt: str,
    *,
    campaign_id: str | None = None,
    include_code: bool = False,
) -> dict[str, Path]:
    """Write ``candidates.<fmt>`` and ``evaluations.<fmt>`` into ``out_dir``."""
    written = {}
    for table in EXPORT_TABLES:
        path = Path(out_dir) / f"{table}.{fmt}"
        write_export(session, path, fmt, table=table, campaign_id=campaign_id,
                     include_code=include_code)
        written[table] = path
    return written


def _write_text(records: list[dict[str, Any]], stream: IO[Any], fmt: str) -> None:
    if not isinstance(stream, (io.RawIOBase, io.BufferedIOBase)):
        _write_text_to(records, stream, fmt)
        return
    wrapper = io.TextIOWrapper(stream, encoding="utf-8", newline="")  # type: ignore[arg-type]
    try:
        _write_text_to(records, wrapper, fmt)
    finally:
        wrapper.flush()
        wrapper.detach()  # leave the caller's binary stream open


def _write_text_to(records: list[dict[str, Any]], stream: IO[str], fmt: str) -> None:
    if fmt == "jsonl":
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        return
    columns, rows = flatten(records)
    writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})


def _csv_cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def _require_pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ExportError(
            "Parquet export needs pyarrow, which is not installed: pip install pyarrow "
            "(or export with --format csv / jsonl)"
        ) from err
    return pq


def _write_parquet(records: list[dict[str, Any]], stream: IO[bytes]) -> None:
    import pyarrow as pa

    pq = _require_pyarrow()
    columns, rows = flatten(records)
    data = {c: [row.get(c) for row in rows] for c in columns}
    pq.write_table(pa.table(data), stream)
