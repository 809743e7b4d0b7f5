"""How far the cheap rung can be trusted: Spearman rank correlation of MQAR accuracy between
the rung-0 budget and a 4x-step budget, on the baseline zoo plus offline-proposer variants.

    python benchmarks/rank_fidelity.py                 # CPU, rung-0 MQAR vs 4x steps
    python benchmarks/rank_fidelity.py --variants 8 --factor 4 --workers 2 --seeds 0 1

Each candidate is trained twice per seed in the rung-0 MQAR frame (same data, same LR sweep),
once with the rung-0 step budget and once with ``--factor`` times it; accuracies are averaged
over ``--seeds``. Prints one row per candidate and the rank correlation (discovery.fidelity).
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


def measure(job: tuple[str, str, int, int]) -> tuple[str, int, int, float, float, float]:
    name, code, factor, seed = job
    import torch

    from evaluator.token_mixer.mqar import MQAROptions, run_mqar

    torch.set_num_threads(1)
    module = types.ModuleType("candidate")
    exec(compile(code, "candidate.py", "exec"), module.__dict__)  # trusted seeds and templates
    base = MQAROptions()
    opts = base.model_copy(update={"steps": base.steps * factor})
    t0 = time.perf_counter()
    m = run_mqar(module.Mixer, opts, torch.device("cpu"), torch.float32, seed=seed)
    return name, factor, seed, m["mqar_acc"], m["mqar_loss"], time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=int, default=8)
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    cands = candidates(args.variants, seed=1)
    jobs = [(n, c, f, s) for n, c in cands for f in (1, args.factor) for s in args.seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(measure, jobs))
    acc: dict[tuple[str, int], list[float]] = {}
    loss: dict[tuple[str, int], list[float]] = {}
    for name, factor, _, a, lo_, _ in results:
        acc.setdefault((name, factor), []).append(a)
        loss.setdefault((name, factor), []).append(lo_)
    names = [n for n, _ in cands]

    def mean(d: dict[tuple[str, int], list[float]], n: str, f: int) -> float:
        return sum(d[(n, f)]) / len(d[(n, f)])

    cols = [(mean(acc, n, 1), mean(acc, n, args.factor), mean(loss, n, 1), mean(loss, n, args.factor))
            for n in names]
    print(f"{'candidate':48} {'rung0 acc':>10} {f'{args.factor}x acc':>10} {'rung0 loss':>11} "
          f"{f'{args.factor}x loss':>10}")
    for n, (a, b, c, d) in zip(names, cols):
        print(f"{n:48} {a:10.4f} {b:10.4f} {c:11.4f} {d:10.4f}")
    rho_acc = spearman([c[0] for c in cols], [c[1] for c in cols])
    rho_loss = spearman([c[2] for c in cols], [c[3] for c in cols])
    print(f"\nSpearman(rung0, {args.factor}x steps) over {len(names)} candidates, seeds {args.seeds}: "
          f"accuracy {rho_acc:.3f}, held-out query loss {rho_loss:.3f}   "
          f"({time.perf_counter() - t0:.0f}s, {args.workers} workers, CPU)")

if __name__ == "__main__":
    main()
