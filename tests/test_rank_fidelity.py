"""The GPU ladder of ``benchmarks/rank_fidelity.py`` is measured in pieces across machines:
finished runs go to a results file and are skipped on the next call."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rank_fidelity  # noqa: E402


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A stand-in ``measure`` that records its jobs (threads instead of processes, so the
    stand-in need not pickle)."""
    calls: list[tuple] = []

    def measure(job: tuple) -> dict[str, object]:
        calls.append(job)
        name, _, preset, factor, seed, device = job
        return {"name": name, "key": f"{preset}x{factor}", "seed": seed, "device": device,
                "acc": 0.5, "loss": 1.0, "seconds": 0.0}

    monkeypatch.setattr(rank_fidelity, "measure", measure)
    monkeypatch.setattr(rank_fidelity, "_pool", lambda workers, gpu: ThreadPoolExecutor(workers))
    return calls


def _jobs() -> list[tuple]:
    return [(f"m{i}", "", preset, factor, 0, "cpu" if preset == "rung0" else "cuda")
            for i in range(3) for preset, factor in (("rung0", 1), ("rung1", 1), ("rung1", 4))]


def _args(part: str, budget_s: float | None = None, gpu_workers: int = 1,
          deadline_s: float | None = None) -> argparse.Namespace:
    return argparse.Namespace(workers=1, part=part, budget_s=budget_s, gpu_workers=gpu_workers,
                              deadline_s=deadline_s)


def test_the_ladder_resumes_from_its_results_file(measured: list[tuple], tmp_path: Path) -> None:
    path = tmp_path / "ladder.jsonl"
    jobs = _jobs()
    assert rank_fidelity._run_jobs(jobs, _args("gpu", budget_s=-1.0), path) == []  # spent
    cpu = rank_fidelity._run_jobs(jobs, _args("cpu"), path)
    assert len(cpu) == 3 and [j[5] for j in measured] == ["cpu"] * 3
    everything = rank_fidelity._run_jobs(jobs, _args("all"), path)
    assert len(everything) == len(jobs) == len(measured)  # the CPU runs were not run again
    assert [j[3] for j in measured[3:]] == [1, 1, 1, 4, 4, 4]  # every 1x run before any 4x run
    assert len(path.read_text().splitlines()) == len(jobs)
    again = rank_fidelity._run_jobs(jobs, _args("all"), path)
    assert len(again) == len(jobs) and len(measured) == len(jobs)


def test_gpu_runs_share_the_device_and_stop_at_the_budget(measured: list[tuple],
                                                          tmp_path: Path) -> None:
    path = tmp_path / "ladder.jsonl"
    jobs = _jobs()
    done = rank_fidelity._run_jobs(jobs, _args("gpu", gpu_workers=2), path)
    assert len(done) == 6 and sorted(j[3] for j in measured) == [1, 1, 1, 4, 4, 4]
    assert {j[5] for j in measured} == {"cuda"}
    assert rank_fidelity._run_jobs(jobs, _args("gpu", budget_s=-1.0, gpu_workers=2), path) == done
    assert len(measured) == 6  # nothing left to run, and a spent budget starts nothing


def test_longer_runs_start_longest_first_and_only_if_they_end_before_the_deadline() -> None:
    def job(name: str, factor: int) -> tuple:
        return (name, "", "rung1", factor, 0, "cuda")

    def ran(name: str, seconds: float) -> dict[str, object]:
        return {"name": name, "key": "rung1x1", "seed": 0, "device": "cuda", "seconds": seconds}

    todo = [job("a", 4), job("b", 4), job("c", 4), job("d", 1)]
    pick = rank_fidelity._next_gpu_job
    assert pick(todo, [], 0.0, None) == job("d", 1)  # 1x runs first
    todo.pop()
    done = [ran("a", 10.0), ran("b", 30.0)]  # c's 1x run still running
    assert pick(todo, done, 0.0, None) == job("b", 4)  # the longest first
    assert pick(todo, done, 0.0, 100.0) == job("a", 4)  # b (120 s) would not end in time
    assert pick(todo, done, 70.0, 100.0) is None  # nor would a (40 s); c has no estimate
    assert pick(todo, done + [ran("c", 5.0)], 70.0, 100.0) == job("c", 4)


def test_the_alternative_rung0_setting_keeps_rung0s_budget_and_grows_the_vocabulary() -> None:
    base = rank_fidelity.options("rung0", 1, "cpu")
    alt = rank_fidelity.options("r0T128k16", 1, "cpu")
    assert [(s.seq_len, s.num_kv_pairs) for s in alt.settings] == [(128, 16)]
    assert alt.vocab_size == 256 > base.vocab_size and alt.steps == base.steps
    assert alt.lrs == base.lrs
    assert rank_fidelity.options("r0T128k16", 4, "cpu").steps == 4 * base.steps
