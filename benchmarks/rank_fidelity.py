"""How far the cheap rung can be trusted: Spearman rank correlation of MQAR accuracy between
the rung-0 budget and a 4x-step budget, on the baseline zoo plus offline-proposer variants.

    python benchmarks/rank_fidelity.py                 # CPU, rung-0 MQAR vs 4x steps
    python benchmarks/rank_fidelity.py --variants 8 --factor 4 --workers 2 --seeds 0 1
    python benchmarks/rank_fidelity.py --ladder        # rung 0 and rung 1 vs rung 1 at 4x

Each candidate is trained twice per seed in the rung-0 MQAR frame (same data, same LR sweep),
once with the rung-0 step budget and once with ``--factor`` times it; accuracies are averaged
over ``--seeds``. Prints one row per candidate and the rank correlation (discovery.fidelity).
With ``--ladder`` the top rung is the rung-1 MQAR frame as a CPU runs it
(``MQAROptions.cpu_fallback``: T 64 / 16 pairs and T 128 / 32 pairs) at ``--factor`` times
its steps, and both rung 0 and rung 1 are correlated with it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.offline import OfflineProposer  # noqa: E402
from agents.types import ParentInfo, ProposalContext  # noqa: E402
from discovery.fidelity import spearman  # noqa: E402
from evaluator.registry import get_task  # noqa: E402


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


def measure(job: tuple[str, str, str, int, int]) -> tuple[str, str, int, float, float, float]:
    """(name, rung key, seed, accuracy, query loss, seconds) of one MQAR run; the rung key is
    ``"<preset>x<factor>"`` with preset ``rung0`` (the default options) or ``rung1`` (the
    CPU form of rung 1)."""
    name, code, preset, factor, seed = job
    import torch

    from evaluator.token_mixer.mqar import MQAROptions, run_mqar

    torch.set_num_threads(1)
    module = types.ModuleType("candidate")
    exec(compile(code, "candidate.py", "exec"), module.__dict__)  # trusted seeds and templates
    base = MQAROptions() if preset == "rung0" else MQAROptions.cpu_fallback()
    opts = base.model_copy(update={"steps": base.steps * factor})
    t0 = time.perf_counter()
    m = run_mqar(module.Mixer, opts, torch.device("cpu"), torch.float32, seed=seed)
    return name, f"{preset}x{factor}", seed, m["mqar_acc"], m["mqar_loss"], time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=int, default=8)
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ladder", action="store_true",
                   help="rung 0 and rung 1 (CPU form) against rung 1 at --factor x the steps")
    args = p.parse_args()
    cands = candidates(args.variants, seed=1)
    top = f"rung1x{args.factor}" if args.ladder else f"rung0x{args.factor}"
    rungs = [("rung0", 1)] + ([("rung1", 1)] if args.ladder else []) + [(top[:5], args.factor)]
    keys = [f"{preset}x{factor}" for preset, factor in rungs]
    jobs = [(n, c, preset, f, s) for n, c in cands for preset, f in rungs for s in args.seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(measure, jobs))
    acc: dict[tuple[str, str], list[float]] = {}
    loss: dict[tuple[str, str], list[float]] = {}
    for name, key, _, a, lo_, _ in results:
        acc.setdefault((name, key), []).append(a)
        loss.setdefault((name, key), []).append(lo_)
    names = [n for n, _ in cands]

    def mean(d: dict[tuple[str, str], list[float]], n: str, key: str) -> float:
        return sum(d[(n, key)]) / len(d[(n, key)])

    print(f"{'candidate':48}" + "".join(f" {k + ' acc':>12}" for k in keys)
          + "".join(f" {k + ' loss':>13}" for k in keys))
    for n in names:
        print(f"{n:48}" + "".join(f" {mean(acc, n, k):12.4f}" for k in keys)
              + "".join(f" {mean(loss, n, k):13.4f}" for k in keys))
    print(f"\n{len(names)} candidates, seeds {args.seeds}, {time.perf_counter() - t0:.0f}s, "
          f"{args.workers} workers, CPU")
    for key in keys[:-1]:
        rho_acc = spearman([mean(acc, n, key) for n in names], [mean(acc, n, top) for n in names])
        rho_loss = spearman([mean(loss, n, key) for n in names], [mean(loss, n, top) for n in names])
        print(f"Spearman({key}, {top}): accuracy {rho_acc:.3f}, held-out query loss {rho_loss:.3f}")


if __name__ == "__main__":
    main()
