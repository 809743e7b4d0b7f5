"""The `disco` command line as a user meets it: exit codes, one-line errors, rows written."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from tests.discovery.conftest import disco, small_config


def one_line_error(proc) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, proc.stderr
    return err


def test_init_writes_a_runnable_config_and_refuses_overwrite(tmp_path):
    assert disco("init", "c.toml", cwd=tmp_path).returncode == 0
    text = (tmp_path / "c.toml").read_text()
    assert "[policy]" in text and "max_evaluations" in text
    again = disco("init", "c.toml", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in one_line_error(again)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[budget]\nmax_evalutions = 3\n", "unknown key 'budget.max_evalutions'"),
        ("[runner]\nmax_in_flight = 'two'\n", "'runner.max_in_flight' = 'two' is invalid"),
        ("[task]\nname = 'no-such-task'\n", "unknown task 'no-such-task'"),
        ("[task.options]\nhidden_sise = 64\n", "hidden_sise"),
    ],
)
def test_bad_config_is_one_line_and_exit_1(tmp_path, text, needle):
    (tmp_path / "c.toml").write_text(text)
    proc = disco("run", "c.toml", "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    assert proc.returncode == 1
    assert needle in one_line_error(proc)


def test_missing_config_and_usage_errors(tmp_path):
    proc = disco("run", "nope.toml", cwd=tmp_path)
    assert proc.returncode == 1 and "config file not found" in one_line_error(proc)
    assert disco("run", cwd=tmp_path).returncode == 2  # missing argument
    assert disco("top", "-n", "many", cwd=tmp_path).returncode == 2


def test_eval_errors(tmp_path):
    proc = disco("eval", "missing.py", "--task", "token-mixer", cwd=tmp_path)
    assert proc.returncode == 1 and "candidate file not found" in one_line_error(proc)
    (tmp_path / "m.py").write_text("x = 1\n")
    proc = disco("eval", "m.py", "--task", "nope", cwd=tmp_path)
    assert proc.returncode == 1 and "unknown task" in one_line_error(proc)
    proc = disco("eval", "m.py", "--task", "token-mixer", "--stages", "bogus", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr


def test_read_commands_without_a_campaign(tmp_path):
    proc = disco("top", "--db", str(tmp_path / "empty.db"), cwd=tmp_path)
    assert proc.returncode == 1 and "no campaign" in one_line_error(proc)
    proc = disco("show", "99", "--db", str(tmp_path / "empty.db"), cwd=tmp_path)
    assert proc.returncode == 1 and "no candidate 99" in one_line_error(proc)


def test_small_campaign_leaderboard_show_query_export(small_campaign):
    d = small_campaign
    db = str(d / "disco.db")
    top = json.loads(disco("top", "--db", db, "--json", cwd=d, check=True).stdout)
    assert top["campaign"] == "small" and top["leaderboard"]
    ref = [r for r in top["leaderboard"] if r["reference"]]
    assert ref and ref[0]["fitness"] == pytest.approx(0.5)
    assert any(r["feasible"] is False for r in top["leaderboard"])  # softmax: reference only

    cid = top["leaderboard"][0]["id"]
    shown = json.loads(disco("show", str(cid), "--db", db, "--json", cwd=d, check=True).stdout)
    stages = [e["stage"] for e in shown["evaluations"]]
    assert stages[0] == "load" and "causality" in stages and "mqar" in stages
    assert "class Mixer" in shown["code"]

    q = json.loads(disco("query", "select status, count(*) as n from candidate group by status",
                         "--db", db, "--json", cwd=d, check=True).stdout)
    assert sum(r["n"] for r in q["rows"] if r["status"] in ("evaluated", "failed")) == 4

    disco("export", "--format", "csv", "--out", str(d / "c.csv"), "--db", db, cwd=d, check=True)
    rows = list(csv.DictReader((d / "c.csv").open()))
    assert len(rows) >= 4 and "fitness" in rows[0]
    out = disco("export", "--format", "jsonl", "--table", "evaluations", "--db", db, cwd=d, check=True)
    assert all(json.loads(line)["stage"] for line in out.stdout.splitlines())

    status = json.loads(disco("status", "--db", db, "--json", cwd=d, check=True).stdout)
    assert status["status"] == "finished" and status["evaluations"] == 4
    assert status["stop_reason"].startswith("max_evaluations")


@pytest.mark.parametrize("sql", [
    "insert into event (campaign_id, kind, message, data, ts) values ('small','x','y','{}','2020-01-01')",
    "update candidate set fitness = 1",
    "delete from candidate",
    "drop table candidate",
    "attach database 'other.db' as o",
    "pragma journal_mode = delete",
    "select 1; delete from candidate",
])
def test_query_refuses_writes_and_leaves_db_unchanged(small_campaign, sql):
    d = small_campaign
    db = d / "disco.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    proc = disco("query", sql, "--db", str(db), cwd=d)
    assert proc.returncode == 1
    one_line_error(proc)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_rerun_of_a_finished_campaign_resumes_without_new_work(small_campaign):
    d = small_campaign
    db = str(d / "disco.db")
    before = json.loads(disco("query", "select count(*) as n from evaluation", "--db", db, "--json",
                              cwd=d, check=True).stdout)["rows"][0]["n"]
    small_config(d / "c.toml", "small", 4)
    proc = disco("run", str(d / "c.toml"), "--db", db, "--json", cwd=d, check=True)
    assert json.loads(proc.stdout)["stop_reason"].startswith("max_evaluations")
    after = json.loads(disco("query", "select count(*) as n from evaluation", "--db", db, "--json",
                             cwd=d, check=True).stdout)["rows"][0]["n"]
    assert after == before
