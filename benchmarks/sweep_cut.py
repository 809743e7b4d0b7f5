"""What cutting the MQAR learning-rate sweep costs in fidelity (``MQAROptions.sweep_cut``).

With a cut, every learning rate trains only to that fraction of the budget, and only the
best run (held-out score there) trains on to the end. This script runs the MQAR stage on the
baseline zoo plus offline-proposer variants (``rank_fidelity.candidates``) twice, with every
run trained to the end and with the cut, and prints per candidate the accuracy, the chosen
learning rates and the steps of both, the fraction of settings where the cut kept the same
learning rate as the full sweep, and the Spearman rank correlation between the two.

    python benchmarks/sweep_cut.py                    # CPU form of rung 1, cut at 0.5
    python benchmarks/sweep_cut.py --cut 0.5 --preset rung0 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rank_fidelity import candidates  # noqa: E402
from discovery.fidelity import spearman  # noqa: E402


def measure(job: tuple[str, str, str, float | None, int]) -> tuple[str, float | None, dict[str, float], float]:
    """(name, cut, metrics, seconds) of one MQAR stage on the CPU, one thread."""
    name, code, preset, cut, seed = job
    import torch

    from evaluator.token_mixer.mqar import MQAROptions, run_mqar

    torch.set_num_threads(1)
    module = types.ModuleType("candidate")
    exec(compile(code, "candidate.py", "exec"), module.__dict__)  # trusted seeds and templates
    base = MQAROptions() if preset == "rung0" else MQAROptions.cpu_fallback()
    opts = base.model_copy(update={"sweep_cut": cut})
    t0 = time.perf_counter()
    m = run_mqar(module.Mixer, opts, torch.device("cpu"), torch.float32, seed=seed)
    return name, cut, m, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cut", type=float, default=0.5)
    p.add_argument("--preset", choices=["rung0", "rung1"], default="rung1",
                   help="rung0 = the default options; rung1 = the CPU form of rung 1")
    p.add_argument("--variants", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cands = candidates(args.variants, seed=1)
    jobs = [(n, c, args.preset, cut, args.seed) for n, c in cands for cut in (None, args.cut)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(measure, jobs))
    by = {(name, cut): (m, s) for name, cut, m, s in results}
    names = [n for n, _ in cands]
    tags = sorted(k[len("mqar_acc_"):] for k in by[(names[0], None)][0] if k.startswith("mqar_acc_"))
    print(f"{'candidate':48} {'full acc':>9} {'cut acc':>9} {'full loss':>10} {'cut loss':>9} "
          f"{'full steps':>10} {'cut steps':>9}  best lr full / cut per setting")
    same = total = 0
    for n in names:
        full, cut = by[(n, None)][0], by[(n, args.cut)][0]
        lrs = []
        for tag in tags:
            a, b = full[f"mqar_best_lr_{tag}"], cut[f"mqar_best_lr_{tag}"]
            same += a == b
            total += 1
            lrs.append(f"{a:g}/{b:g}")
        print(f"{n:48} {full['mqar_acc']:9.4f} {cut['mqar_acc']:9.4f} {full['mqar_loss']:10.4f} "
              f"{cut['mqar_loss']:9.4f} {full['mqar_steps']:10.0f} {cut['mqar_steps']:9.0f}  "
              + "  ".join(lrs))
    steps_full = sum(by[(n, None)][0]["mqar_steps"] for n in names)
    steps_cut = sum(by[(n, args.cut)][0]["mqar_steps"] for n in names)
    secs_full = sum(by[(n, None)][1] for n in names)
    secs_cut = sum(by[(n, args.cut)][1] for n in names)
    rho_acc = spearman([by[(n, None)][0]["mqar_acc"] for n in names],
                       [by[(n, args.cut)][0]["mqar_acc"] for n in names])
    rho_loss = spearman([by[(n, None)][0]["mqar_loss"] for n in names],
                        [by[(n, args.cut)][0]["mqar_loss"] for n in names])
    drop = [by[(n, None)][0]["mqar_acc"] - by[(n, args.cut)][0]["mqar_acc"] for n in names]
    print(f"\n{len(names)} candidates, {args.preset} ({'CPU form' if args.preset == 'rung1' else 'default'}),"
          f" seed {args.seed}, cut {args.cut}, {time.perf_counter() - t0:.0f}s, {args.workers} workers")
    print(f"same learning rate kept: {same} of {total} settings")
    print(f"steps: {steps_cut:.0f} with the cut against {steps_full:.0f} ({steps_cut / steps_full:.3f}); "
          f"stage seconds {secs_cut:.0f} against {secs_full:.0f} ({secs_cut / secs_full:.3f})")
    print(f"accuracy lost to the cut: mean {sum(drop) / len(drop):+.4f}, worst {max(drop):+.4f}")
    print(f"Spearman(full sweep, cut): accuracy {rho_acc:.3f}, held-out query loss {rho_loss:.3f}")


if __name__ == "__main__":
    main()
