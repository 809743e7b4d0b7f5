"""Export of candidates and evaluations to CSV / JSONL (and Parquet when pyarrow exists)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest

from knowledge_base import repository as repo
from knowledge_base.db import Database
from knowledge_base.export import ExportError, export_all, export_rows, write_export


@pytest.fixture
def filled(sqlite_db: Database) -> Database:
    with sqlite_db.session() as s:
        repo.create_campaign(s, "c", "token-mixer", {}, "h")
        repo.create_campaign(s, "other", "token-mixer", {}, "h")
        a = repo.add_candidate(s, "c", name="seed", code="A = 1\n", code_hash="a", is_seed=True,
                               origin="seed")
        b = repo.add_candidate(s, "c", name="mut, \"quoted\"", code="B = 2\n", code_hash="b",
                               parent_ids=[a.id], inspiration_ids=[a.id])
        x = repo.add_candidate(s, "c", name="cross", code="C = 3\n", code_hash="c",
                               parent_ids=[a.id, b.id], edge_kind="crossover")
        repo.set_candidate_fitness(s, a.id, 0.5, {"recall": 0.8, "tok_s": 1000.0}, feasible=True)
        repo.set_candidate_fitness(s, b.id, 0.7, {"recall": 0.9, "params": 12.0}, feasible=True)
        repo.set_candidate_failure(s, x.id, "causality", "causality", "leaks the future\nline 2")
        repo.add_evaluations(s, a.id, [
            {"stage": "conformance", "ok": True, "metrics": {"params": 10.0}, "wall_s": 0.25},
            {"stage": "recall", "ok": True, "metrics": {"recall": 0.8}},
        ])
        repo.add_evaluations(s, x.id, [{"stage": "causality", "ok": False,
                                        "failure_kind": "causality", "message": "leak"}])
        repo.add_candidate(s, "other", name="elsewhere", code="D = 4\n", code_hash="d")
    return sqlite_db


def _jsonl(db: Database, **kw) -> list[dict]:
    buf = io.StringIO()
    with db.read_session() as s:
        n = write_export(s, buf, "jsonl", **kw)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == n
    return lines


def test_jsonl_candidates(filled: Database) -> None:
    rows = _jsonl(filled, campaign_id="c")
    assert [r["name"] for r in rows] == ["seed", 'mut, "quoted"', "cross"]
    seed, mut, cross = rows
    assert seed["objectives"] == {"recall": 0.8, "tok_s": 1000.0} and seed["fitness"] == 0.5
    assert seed["status"] == "evaluated" and seed["is_seed"] is True and seed["parents"] == []
    assert mut["parents"] == [seed["id"]] and mut["parent_kinds"] == ["parent"]
    assert mut["inspirations"] == []  # already a parent, so no separate inspiration edge
    assert cross["parents"] == [seed["id"], mut["id"]]
    assert cross["parent_kinds"] == ["crossover", "crossover"]
    assert (cross["status"], cross["failure_kind"]) == ("failed", "causality")
    assert "code" not in seed
    assert _jsonl(filled, campaign_id="c", include_code=True)[0]["code"] == "A = 1\n"
    assert len(_jsonl(filled)) == 4  # every campaign


def test_jsonl_evaluations(filled: Database) -> None:
    rows = _jsonl(filled, table="evaluations", campaign_id="c")
    assert [(r["stage"], r["ok"], r["attempt"]) for r in rows] == [
        ("conformance", True, 1), ("recall", True, 1), ("causality", False, 1)]
    assert rows[0]["metrics"] == {"params": 10.0} and rows[0]["wall_s"] == 0.25
    assert rows[2]["failure_kind"] == "causality"


def test_csv_candidates_flatten_objectives_and_parents(filled: Database, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "cands.csv"
    with filled.read_session() as s:
        assert write_export(s, out, "csv", campaign_id="c") == 3
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    assert header[-3:] == ["objective.params", "objective.recall", "objective.tok_s"]
    seed, mut, cross = rows
    assert mut["name"] == 'mut, "quoted"'  # quoting survives a round trip
    assert seed["objective.tok_s"] == "1000.0" and seed["objective.params"] == ""
    assert mut["objective.params"] == "12.0"
    assert cross["parents"] == f"{seed['id']};{mut['id']}"
    assert cross["failure_message"] == "leaks the future\nline 2"
    assert seed["is_seed"] == "true" and mut["is_seed"] == "false" and cross["fitness"] == ""


def test_csv_evaluations_to_binary_stream(filled: Database) -> None:
    buf = io.BytesIO()
    with filled.read_session() as s:
        write_export(s, buf, "csv", table="evaluations", campaign_id="c")
    assert not buf.closed  # the caller's stream stays open
    rows = list(csv.DictReader(io.StringIO(buf.getvalue().decode())))
    assert [r["stage"] for r in rows] == ["conformance", "recall", "causality"]
    assert rows[0]["metric.params"] == "10.0" and rows[1]["metric.recall"] == "0.8"
    assert rows[2]["metric.params"] == ""


def test_export_rows_and_export_all(filled: Database, tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    assert export_rows(filled, "c", "candidates", "jsonl", out) == 3
    assert len(out.read_text().splitlines()) == 3
    with filled.read_session() as s:
        written = export_all(s, tmp_path / "all", "csv", campaign_id="c")
    assert {k: p.name for k, p in written.items()} == {
        "candidates": "candidates.csv", "evaluations": "evaluations.csv"}
    assert all(p.is_file() for p in written.values())


def test_bad_format_and_table(filled: Database) -> None:
    with filled.read_session() as s:
        with pytest.raises(ExportError, match="unknown export format"):
            write_export(s, io.StringIO(), "xlsx")
        with pytest.raises(ExportError, match="unknown export table"):
            write_export(s, io.StringIO(), "csv", table="llm_calls")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_is_a_clear_error(filled: Database, tmp_path: Path) -> None:
    with filled.read_session() as s, pytest.raises(ExportError) as info:
        write_export(s, tmp_path / "x.parquet", "parquet")
    assert "pip install pyarrow" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet_round_trip(filled: Database, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    with filled.read_session() as s:
        write_export(s, tmp_path / "x.parquet", "parquet", campaign_id="c")
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.num_rows == 3 and "objective.recall" in table.column_names
