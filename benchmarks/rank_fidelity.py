"""How far the cheap rung can be trusted: Spearman rank correlation of MQAR accuracy between
the rung-0 budget and a 4x-step budget, on the baseline zoo plus offline-proposer variants.

    python benchmarks/rank_fidelity.py                 # CPU, rung-0 MQAR vs 4x steps
    python benchmarks/rank_fidelity.py --variants 8 --factor 4 --workers 2 --seeds 0 1
    python benchmarks/rank_fidelity.py --ladder        # rung 0 and rung 1 vs rung 1 at 4x
    python benchmarks/rank_fidelity.py --ladder --device cuda --results ladder.jsonl \\
        --part gpu --gpu-workers 4 --budget-s 1200     # the GPU ladder, resumable across hosts

Each candidate is trained twice per seed in the rung-0 MQAR frame (same data, same LR sweep),
once with the rung-0 step budget and once with ``--factor`` times it; accuracies are averaged
over ``--seeds``. Prints one row per candidate and the rank correlation (discovery.fidelity).
With ``--ladder`` the top rung is the rung-1 MQAR frame as a CPU runs it
(``MQAROptions.cpu_fallback``: T 64 / 16 pairs and T 128 / 32 pairs) at ``--factor`` times
its steps, and both rung 0 and rung 1 are correlated with it. With ``--device cuda`` rung 1
is the GPU preset (``MQAROptions.rung1``, bf16), trained on the GPU (``--gpu-workers`` at a
time); rung 0 stays on the CPU, as a campaign runs it. ``--results`` keeps every finished run in a
JSON-lines file and skips the runs found there, so the ladder can be measured in pieces
(``--part cpu`` here, ``--part gpu --budget-s`` on a borrowed GPU, the same file carried
between them); the table is printed once every run is in the file. ``--gpu-workers`` trains
that many GPU runs at once, each in its own process: with an MPS daemon running
(``bash benchmarks/with_mps.sh python benchmarks/rank_fidelity.py ...`` starts a private one)
the small rung-1 mixers' kernels overlap (4 at once gave about 1.4x the throughput of one at
a time on an H200). Without one the GPU time-slices between the processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import time
import types
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.offline import OfflineProposer  # noqa: E402
from agents.types import ParentInfo, ProposalContext  # noqa: E402
from discovery.fidelity import spearman  # noqa: E402
from evaluator.registry import get_task  # noqa: E402
from evaluator.token_mixer.mqar import MQAROptions  # noqa: E402


def candidates(n_variants: int, seed: int) -> list[tuple[str, str]]:
    task = get_task("token-mixer")
    out = [(s.name, s.code) for s in task.seeds()]
    parents = [s for s in task.seeds() if s.genome is not None]
    proposer = OfflineProposer(task="token-mixer")
    rng = random.Random(seed)
    while len(out) < len(parents) + 2 + n_variants:  # 8 seeds + n variants
        p = rng.choice(parents)
        ctx = ProposalContext(
            task="token-mixer", interface="", operation="mutation", seed=rng.getrandbits(32),
            parents=(ParentInfo(candidate_id=0, name=p.name, code=p.code, genome=p.genome, fitness=None),),
        )
        prop = asyncio.run(proposer.propose(ctx))
        out.append((prop.name, prop.code))
    return out


def options(preset: str, factor: int, device: str) -> MQAROptions:
    """The MQAR options of a rung (see ``measure``) at ``factor`` x its steps."""
    if preset == "rung0":
        base = MQAROptions()
    elif preset.startswith("r0T"):
        t, k = (int(v) for v in preset[3:].split("k"))
        base = MQAROptions(settings=((t, k),), vocab_size=max(MQAROptions().vocab_size, 2 * t))
    else:
        base = MQAROptions.rung1() if device == "cuda" else MQAROptions.cpu_fallback()
    return base.model_copy(update={"steps": base.steps * factor})


def measure(job: tuple[str, str, str, int, int, str]) -> dict[str, object]:
    """One MQAR run: {name, key, seed, device, acc, loss, steps, seconds}; the rung key is
    ``"<preset>x<factor>"`` with preset ``rung0`` (the default options, always on the CPU as a
    campaign runs rung 0), ``r0T<T>k<K>`` (rung 0 with one other setting, ``--rung0-alt``,
    also on the CPU) or ``rung1`` (``MQAROptions.rung1`` on a GPU, its CPU form
    ``cpu_fallback`` on a CPU)."""
    name, code, preset, factor, seed, device = job
    import torch

    from evaluator.token_mixer.mqar import run_mqar

    if device == "cpu":
        torch.set_num_threads(1)
    module = types.ModuleType("candidate")
    exec(compile(code, "candidate.py", "exec"), module.__dict__)  # trusted seeds and templates
    opts = options(preset, factor, device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    m = run_mqar(module.Mixer, opts, torch.device(device), dtype, seed=seed)
    return {"name": name, "key": f"{preset}x{factor}", "seed": seed, "device": device,
            "acc": m["mqar_acc"], "loss": m["mqar_loss"], "steps": m["mqar_steps"],
            "seconds": time.perf_counter() - t0}


def _job_id(job: tuple[str, str, str, int, int, str]) -> tuple[str, str, int, str]:
    name, _, preset, factor, seed, device = job
    return name, f"{preset}x{factor}", seed, device


def _result_id(r: dict[str, object]) -> tuple[object, ...]:
    """The ``_job_id`` of the job that gave ``r``."""
    return r["name"], r["key"], r["seed"], r["device"]


def _done(path: Path | None) -> list[dict[str, object]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pool(workers: int, gpu: bool) -> Executor:
    """Worker processes for the runs; GPU runs need ``spawn`` (a forked child cannot start
    CUDA once its parent has)."""
    if gpu:
        threads = max(1, (os.cpu_count() or 1) // workers)
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_share_host, initargs=(threads,))
    return ProcessPoolExecutor(workers)


def _share_host(threads: int) -> None:
    """Each GPU worker's share of the host's cores (data drawing, compiling)."""
    import torch

    torch.set_num_threads(threads)


def _next_gpu_job(todo: list, results: list[dict[str, object]], elapsed: float,
                  deadline_s: float | None) -> tuple | None:
    """The next GPU run to start: the first 1x run left; once they have all started, the
    longest of the longer-budget runs expected to end before ``deadline_s`` (the host's time
    limit: a run cut off there is lost). A run at ``factor`` x the budget is expected to take
    ``factor`` x the seconds of the same candidate's 1x run; a run whose 1x run has not
    finished yet waits for it when there is a deadline."""
    for job in todo:
        if job[3] == 1:
            return job
    one_x = {(r["name"], r["seed"]): float(r["seconds"])  # type: ignore[arg-type]
             for r in results if str(r["key"]).endswith("x1") and r["device"] == "cuda"}
    fits: list[tuple[float, int]] = []
    for i, (name, _, _, factor, seed, _) in enumerate(todo):
        seconds = one_x.get((name, seed))
        if deadline_s is None:
            fits.append((factor * (seconds or 0.0), -i))
        elif seconds is not None and elapsed + factor * seconds <= deadline_s:
            fits.append((factor * seconds, -i))
    return todo[-max(fits)[1]] if fits else None


def _run_jobs(jobs: list, args: argparse.Namespace, path: Path | None) -> list[dict[str, object]]:
    """Run the jobs not in the results file yet, appending each result as it finishes (a run
    cut short by ``--budget-s`` or a lost machine keeps what it measured); the results of
    every job asked for. GPU runs go ``--gpu-workers`` at a time, every 1x run before any 4x
    run, and none starts after ``--budget-s`` seconds."""
    results = _done(path)
    have = {_result_id(r) for r in results}
    todo = [j for j in jobs if _job_id(j) not in have]
    t0 = time.perf_counter()

    def keep(r: dict[str, object]) -> None:
        results.append(r)
        print(json.dumps(r), flush=True)
        if path is not None:
            with path.open("a") as f:
                f.write(json.dumps(r) + "\n")

    cpu = [j for j in todo if j[5] == "cpu"]
    gpu = [j for j in todo if j[5] == "cuda"]  # _next_gpu_job starts every 1x run first
    if cpu and args.part in ("all", "cpu"):
        with _pool(args.workers, gpu=False) as pool:
            for r in pool.map(measure, cpu):
                keep(r)
    if gpu and args.part in ("all", "gpu"):
        with _pool(args.gpu_workers, gpu=True) as pool:
            running: set[Future] = set()
            while gpu or running:
                while len(running) < args.gpu_workers and (
                        args.budget_s is None or time.perf_counter() - t0 <= args.budget_s):
                    job = _next_gpu_job(gpu, results, time.perf_counter() - t0, args.deadline_s)
                    if job is None:
                        break
                    gpu.remove(job)
                    running.add(pool.submit(measure, job))
                if not running:
                    break  # out of budget, or no run left that would end before the deadline
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    try:
                        keep(f.result())
                    except Exception as e:  # noqa: BLE001 - report it, keep the other runs
                        print(f"a GPU run failed ({type(e).__name__}: {e}); it runs again on the "
                              "next call", flush=True)
    wanted = {_job_id(j) for j in jobs}
    return [r for r in results if _result_id(r) in wanted]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=int, default=8)
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ladder", action="store_true",
                   help="rung 0 and rung 1 against rung 1 at --factor x the steps")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the rung-1 runs train (rung 0 always trains on the CPU)")
    p.add_argument("--results", type=Path,
                   help="JSON-lines file: finished runs are appended, runs found there are skipped")
    p.add_argument("--part", choices=("all", "cpu", "gpu"), default="all",
                   help="run only the CPU or only the GPU runs (e.g. rung 0 here, rung 1 on a GPU host)")
    p.add_argument("--gpu-workers", type=int, default=1,
                   help="GPU runs at a time, each in its own process (with an MPS daemon running "
                        "their kernels overlap; without one the GPU time-slices between them)")
    p.add_argument("--deadline-s", type=float,
                   help="start no longer-budget GPU run expected to end after this many seconds "
                        "(factor x its 1x run's seconds): the host's time limit")
    p.add_argument("--partial", action="store_true",
                   help="with runs missing, print the table for the candidates measured at every "
                        "rung (marked PARTIAL)")
    p.add_argument("--rung0-alt", metavar="T,K",
                   help="also rung 0 with this one (seq_len, pairs) setting instead of its own "
                        "(vocabulary grown to 2T where needed), on the CPU")
    p.add_argument("--budget-s", type=float,
                   help="start no further GPU run after this many seconds (resume with --results)")
    args = p.parse_args()
    if args.device == "cuda" and not args.ladder:
        p.error("--device cuda needs --ladder (rung 0 alone trains on the CPU)")
    cands = candidates(args.variants, seed=1)
    top = f"rung1x{args.factor}" if args.ladder else f"rung0x{args.factor}"
    alt = []
    if args.rung0_alt:
        t, k = (int(v) for v in args.rung0_alt.split(","))
        alt = [(f"r0T{t}k{k}", 1)]
    rungs = ([("rung0", 1)] + alt + ([("rung1", 1)] if args.ladder else [])
             + [(top[:5], args.factor)])
    keys = [f"{preset}x{factor}" for preset, factor in rungs]
    jobs = [(n, c, preset, f, s, "cpu" if preset.startswith(("rung0", "r0T")) else args.device)
            for n, c in cands for preset, f in rungs for s in args.seeds]
    t0 = time.perf_counter()
    results = _run_jobs(jobs, args, args.results)
    names = [n for n, _ in cands]
    if len(results) < len(jobs):
        again = f"run again with --results {args.results} to go on" if args.results else \
            "pass --results FILE to keep finished runs between calls"
        print(f"\n{len(results)} of {len(jobs)} runs done ({time.perf_counter() - t0:.0f}s this "
              f"time); {again}")
        if not args.partial:
            return
        have = {(r["name"], r["key"]) for r in results}
        names = [n for n in names if all((n, k) in have for k in keys)]  # one seed's runs suffice
        print(f"PARTIAL: the {len(names)} of {len(cands)} candidates with a run at every rung")
        if len(names) < 3:
            return
    acc: dict[tuple[str, str], list[float]] = {}
    loss: dict[tuple[str, str], list[float]] = {}
    for r in results:
        acc.setdefault((str(r["name"]), str(r["key"])), []).append(float(r["acc"]))  # type: ignore[arg-type]
        loss.setdefault((str(r["name"]), str(r["key"])), []).append(float(r["loss"]))  # type: ignore[arg-type]

    def mean(d: dict[tuple[str, str], list[float]], n: str, key: str) -> float:
        return sum(d[(n, key)]) / len(d[(n, key)])

    print(f"{'candidate':48}" + "".join(f" {k + ' acc':>12}" for k in keys)
          + "".join(f" {k + ' loss':>13}" for k in keys))
    for n in names:
        print(f"{n:48}" + "".join(f" {mean(acc, n, k):12.4f}" for k in keys)
              + "".join(f" {mean(loss, n, k):13.4f}" for k in keys))
    shown = [r for r in results if r["name"] in names]
    seconds = sum(float(r["seconds"]) for r in shown)  # type: ignore[arg-type]
    print(f"\n{len(names)} candidates, seeds {args.seeds}, {seconds:.0f}s of runs in all, "
          f"rung 1 on {args.device}, {args.workers} CPU workers")
    for key in keys[:-1]:
        rho_acc = spearman([mean(acc, n, key) for n in names], [mean(acc, n, top) for n in names])
        rho_loss = spearman([mean(loss, n, key) for n in names], [mean(loss, n, top) for n in names])
        print(f"Spearman({key}, {top}): accuracy {rho_acc:.3f}, held-out query loss {rho_loss:.3f}")
    # A run stops once it is solved (MQAROptions.stop_sweep_at on held-out data, early_stop_acc
    # on training batches), so differences above the threshold say when the stop fired, not
    # how well the mixer recalls: the same correlations with every accuracy >= it tied.
    solved = MQAROptions().stop_sweep_at or 1.0
    for key in keys[:-1]:
        rho = spearman([min(mean(acc, n, key), solved) for n in names],
                       [min(mean(acc, n, top), solved) for n in names])
        n_top = sum(mean(acc, n, top) >= solved for n in names)
        print(f"Spearman({key}, {top}), accuracy >= {solved} tied as solved: {rho:.3f} "
              f"({n_top} of {len(names)} solved at {top})")


if __name__ == "__main__":
    main()
