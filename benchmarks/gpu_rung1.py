"""Token-mixer measurements on one GPU (issue 5 acceptance), printed as tables.

    python benchmarks/gpu_rung1.py zoo        # MQAR T=256 / 16 pairs for the whole seed zoo
    python benchmarks/gpu_rung1.py exponent   # timing exponents at saturating batch
    python benchmarks/gpu_rung1.py compile [SEEDS]  # eager vs torch.compile'd mixers, per step
    python benchmarks/gpu_rung1.py overlap [SEED] [--beside] [--autotune]  # compile time of one
                                              # mixer, alone or beside eager training (one per process)
    python benchmarks/gpu_rung1.py cost [SEED]  # full rung-1 cost of one candidate + GPU busy %
    python benchmarks/gpu_rung1.py cost [SEED] --sandbox  # the same, through the sandbox
    python benchmarks/gpu_rung1.py cost [SEED] --sandbox --warm  # from a warm child
    python benchmarks/gpu_rung1.py cost [SEED] --where  # in-process: where the GPU idled
    python benchmarks/gpu_rung1.py cost [SEED] --where --warm  # the same after the preload

`zoo` trains every seed of the baseline zoo in the rung-1 MQAR frame (d_model 64, T = 256, 16
key-value pairs, vocabulary 8192, batch 256, LR sweep, best LR kept) and prints accuracy,
state size and stage time. `cost` runs the task's rung-1 stages (mqar, lm, profile) exactly as
a campaign would on a `cuda` target, while `nvidia-smi` samples utilisation every 100 ms; it
prints the wall time per stage and the share of samples with the GPU busy. With `--sandbox`
the stages run as a campaign's worker runs them: one sandboxed child evaluates the candidate
(`sandbox.launcher.run_evaluation`), and the child's start-up and load count in the total;
`--warm` takes the child from a warm pool prepared with the task's preload for the target, as
a campaign's GPU worker does (its warm-up overlaps the previous evaluation there, so it is
timed apart and left out of the total). `--where` samples the host's stack while the GPU
idles and prints the code locations that took the idle time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluator.registry import get_task  # noqa: E402
from evaluator.token_mixer.seeds import SEED_NAMES, seed_source  # noqa: E402
from evaluator.types import Program, TargetSpec  # noqa: E402


def load(code: str) -> types.ModuleType:
    module = types.ModuleType("candidate")
    exec(compile(code, "candidate.py", "exec"), module.__dict__)  # benchmark of trusted seeds
    return module


def load_seed(name: str) -> types.ModuleType:
    return load(seed_source(name))


def time_ms(fn, device: torch.device, repeats: int, inner: int) -> float:
    """Median ms of one ``fn()`` over ``repeats`` windows of ``inner`` calls, after 3 warm-up
    calls; the device is synchronised around each window."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(1000.0 * (time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def zoo(args: argparse.Namespace) -> list[dict]:
    from evaluator.token_mixer.mqar import MQAROptions, run_mqar

    opts = MQAROptions.rung1(settings=((256, 16),), d_model=args.d_model, steps=args.steps,
                             lrs=tuple(args.lrs))
    rows = []
    for name in args.seeds or SEED_NAMES:
        mod = load_seed(name)
        state = mod.Mixer(args.d_model, opts.num_heads)
        size = state.state_size(256) if hasattr(state, "state_size") else float("nan")
        t0 = time.perf_counter()
        m = run_mqar(mod.Mixer, opts, torch.device("cuda"), torch.bfloat16, seed=0)
        rows.append({"seed": name, "acc": m["mqar_acc"], "best_lr": m.get("mqar_best_lr_T256_kv16"),
                     "state_elems_T256": size, "step_ms": m.get("mqar_step_ms"),
                     "stage_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nMQAR T=256, 16 pairs, d_model {args.d_model}, steps {args.steps}, lrs {args.lrs}, "
          f"bf16, {torch.cuda.get_device_name()}")
    print(f"{'seed':18} {'acc':>7} {'best lr':>8} {'state@256':>10} {'step ms':>8} {'stage s':>8}")
    for r in rows:
        print(f"{r['seed']:18} {r['acc']:7.4f} {r['best_lr'] or 0:8.0e} {r['state_elems_T256']:10.0f} "
              f"{r['step_ms'] or 0:8.2f} {r['stage_s']:8.1f}")
    return rows


def exponent(args: argparse.Namespace) -> None:
    from evaluator.token_mixer.profile import timing_exponent

    fixtures = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mixers"
    cases = [(n, seed_source(n)) for n in ("softmax_attention", "linear_attention", "deltanet")]
    cases.append(("masked_quadratic_linear", (fixtures / "masked_quadratic_linear.py").read_text()))
    print(f"\ntiming exponent, d_model {args.width}, bf16, forward+backward, {torch.cuda.get_device_name()}")
    for name, code in cases:
        mod = load(code)
        fit = timing_exponent(lambda d, h, m=mod: m.Mixer(d, h), tuple(args.ts), torch.device("cuda"),
                              torch.bfloat16, batch=1, d_model=args.width, num_heads=args.heads)
        print(name, fit, flush=True)


def compile_speed(args: argparse.Namespace) -> None:
    """Eager vs torch.compile'd mixers: forward+backward of one mixer at the rung-1 MQAR shapes
    (B 256, T 256, d_model 128, 2 heads, bf16 autocast), then the rung-1 MQAR training step
    (CUDA graph) with eager mixers, with compiled ones, and a second compiled model of the
    same class (is the compiled code reused?)."""
    from evaluator.token_mixer.mqar import MQAROptions, run_mqar

    dev = torch.device("cuda")

    names = args.seeds or ["gated_deltanet", "deltanet", "softmax_attention", "mamba2_ssd"]
    print(f"mixer forward+backward, {torch.cuda.get_device_name()}")
    for name in names:
        mod = load_seed(name)
        x = torch.randn(256, 256, 128, device=dev, requires_grad=True)
        row = {}
        for tag in ("eager", "compiled"):
            mixer = mod.Mixer(128, 2).to(dev)
            if tag == "compiled":
                mixer = torch.compile(mixer, dynamic=False)

            def step(m=mixer) -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = m(x)
                y.float().sum().backward()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            row[tag] = (time_ms(step, dev, repeats=5, inner=20), first)
        print(f"{name:18} eager {row['eager'][0]:7.2f} ms  compiled {row['compiled'][0]:7.2f} ms  "
              f"speed-up {row['eager'][0] / row['compiled'][0]:4.2f}  first compiled call "
              f"{row['compiled'][1]:5.1f} s", flush=True)
    opts = MQAROptions.rung1(settings=((256, 16),), steps=args.steps, lrs=(3e-3,),
                             early_stop_acc=None, stop_sweep_at=None)
    print(f"\nrung-1 MQAR step (T 256, 16 pairs, {args.steps} steps, CUDA graph)")
    for name in names:
        mod = load_seed(name)
        for tag, compiled in (("eager", False), ("compiled", True), ("compiled again", True)):
            t0 = time.perf_counter()
            m = run_mqar(mod.Mixer, opts.model_copy(update={"compile": compiled}), dev, torch.bfloat16, 0)
            print(f"{name:18} {tag:15} step {m['mqar_step_ms']:6.2f} ms  graphs "
                  f"{m['mqar_compiled_graphs']:.0f}  stage {time.perf_counter() - t0:5.1f} s", flush=True)


def overlap(args: argparse.Namespace) -> None:
    """How long compiling one seed's mixer takes (wall and the compiling thread's CPU time):
    alone (the GPU idles meanwhile), or ``--beside`` a rung-1 MQAR run that trains eagerly
    until the compile is done (``MixerCompiler``). ``--autotune`` turns inductor's pointwise
    autotuning back on. Run one variant per process: the caches start empty here, and dynamo
    would reuse code compiled earlier in the process."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix="archdisco-overlap-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(scratch, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(scratch, "triton")
    from evaluator.token_mixer import model as frame
    from evaluator.token_mixer.mqar import MQAROptions, build_data, train_run

    if args.autotune:
        frame.COMPILE_OPTIONS.pop("triton.autotune_pointwise", None)
    dev = torch.device("cuda")
    mixer = load_seed(args.seed).Mixer
    opts = MQAROptions.rung1(settings=((256, 16),), steps=2000, early_stop_acc=None)
    train, test = build_data(opts, opts.settings[0], 0, dev)
    label = f"{args.seed}, {'beside training' if args.beside else 'alone'}, " \
            f"pointwise autotune {'on' if args.autotune else 'off'}"
    compiler = frame.MixerCompiler()
    if not args.beside:  # the same compile, with this thread waiting for it
        scratch_model = frame.MixerLM(opts.model_config_for(), mixer).to(dev)
        compiler.start(scratch_model, train.inputs[:opts.batch_size], torch.bfloat16)
        compiler.wait()
        print(f"{label}: compile {compiler.wall_s:.1f} s wall, {compiler.cpu_s:.1f} s thread CPU"
              + (f", failed: {compiler.error}" if compiler.error else ""), flush=True)
        return
    run = train_run(mixer, opts, train, test, 1e-3, dev, torch.bfloat16, 0, compiler)
    compiler.wait()
    print(f"{label}: compile {compiler.wall_s:.1f} s wall, {compiler.cpu_s:.1f} s thread CPU; "
          f"run {run.wall_s:.1f} s, {run.eager_steps} of {run.steps} steps eager, "
          f"accuracy {run.accuracy:.3f}", flush=True)


def _sample_gpu(stop: threading.Event, out: list[tuple[float, int]]) -> None:
    proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                             "-lms", "100"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if stop.is_set():
            break
        try:
            out.append((time.monotonic(), int(line.strip())))
        except ValueError:
            continue
    proc.terminate()


def _stages(task, overrides: dict[str, dict[str, object]]) -> list:
    """Rung 1's stages, with ``overrides`` of a stage's options by stage name (``--mqar
    KEY=JSON``, ``--lm KEY=JSON``)."""
    stages = []
    for stage in task.stages(1):
        if overrides.get(stage.name):
            opts = dict(stage.options)
            opts["overrides"] = {**opts.get("overrides", {}), **overrides[stage.name]}
            stage = stage.model_copy(update={"options": opts})
        stages.append(stage)
    return stages


def _sandboxed(task, name: str, target: TargetSpec, samples: list[tuple[float, int]],
               overrides: dict[str, dict[str, object]], warm: bool) -> list[tuple]:
    """Run rung 1 in one sandboxed child; per-stage windows come from the stage wall times
    (stages run back to back after the child's start-up and the implicit load stage).

    ``warm``: the child comes from a warm pool prepared with the task's preload for the
    target (``Task.preload``), as a campaign's GPU worker serves its next evaluation; the
    warm-up (which a campaign overlaps with the previous evaluation) is timed on its own row
    and left out of the total."""
    from sandbox import SandboxPool
    from sandbox.api import EvalRequest, SandboxLimits
    from sandbox.launcher import run_evaluation

    request = EvalRequest(task="token-mixer", code=seed_source(name), stages=_stages(task, overrides),
                          target=target)
    limits = SandboxLimits(wall_timeout_s=1800)
    rows, pool = [], None
    if warm:
        t0 = time.monotonic()
        pool = SandboxPool(1, preload=task.preload(target))
        if not pool.wait_warm(600):
            raise SystemExit("the warm sandbox child did not get ready")
        t_ready = time.monotonic()
        rows.append(("(warm-up)", True, t_ready - t0, *_busy(samples, t0, t_ready)))
    t0 = time.monotonic()
    try:
        outcome = pool.evaluate(request, limits) if pool is not None else run_evaluation(request, limits)
        t_end = time.monotonic()
    finally:
        if pool is not None:
            pool.close()  # its refill child too (not timed)
    if not outcome.ok:
        print("sandboxed evaluation failed:", outcome.first_failure, "\n", outcome.log_tail[-3000:])
    stage_wall = sum(r.wall_s for r in outcome.results)
    t = t_end - stage_wall  # start of the first stage: after spawn and imports
    rows.append(("spawn", True, t - t0, _busy(samples, t0, t)[0], _busy(samples, t0, t)[1]))
    for r in outcome.results:
        busy, util = _busy(samples, t, t + r.wall_s)
        rows.append((r.stage, r.ok, r.wall_s, busy, util))
        print(r.stage, r.ok, r.failure_kind, round(r.wall_s, 1),
              {k: round(v, 4) for k, v in r.metrics.items()
               if not k.startswith(("prefill", "decode", "lm_corpus", "ref_", "state_bytes_"))}, flush=True)
        t += r.wall_s
    iso = outcome.results[0].artifacts.get("isolation", {}) if outcome.results else {}
    print("isolation:", {k: iso.get(k) for k in ("mode", "seccomp", "landlock", "notes")})
    return rows


class StackSampler:
    """Where the main thread is, every ``period`` seconds: its innermost frame in this
    repository's code and the innermost frame of all (a torch function, say). Joined with the
    ``nvidia-smi`` samples, it says which code the host was running while the GPU idled
    (``cost --where``, in-process only)."""

    def __init__(self, period: float = 0.05):
        self.period, self.samples = period, []  # (monotonic time, location)
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._root = str(Path(__file__).resolve().parents[1])
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _where(self) -> str:
        """``our/file.py:function | innermost.py:function`` (the second part only when the
        innermost frame is outside this repository, e.g. in torch)."""
        frame = sys._current_frames().get(self._main)
        inner, ours = None, None
        while frame is not None and ours is None:
            code = frame.f_code
            path = code.co_filename
            if path.startswith(self._root) and "/benchmarks/" not in path:
                ours = f"{Path(path).relative_to(self._root)}:{code.co_name}"
            elif inner is None:
                inner = f"{Path(path).name}:{code.co_name}"
            frame = frame.f_back
        return f"{ours} | {inner}" if inner else str(ours)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append((time.monotonic(), self._where()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def idle_report(self, gpu: list[tuple[float, int]], t0: float, t1: float, top: int = 25) -> None:
        """The code locations of the GPU's idle samples (utilisation 0) between t0 and t1."""
        import bisect
        from collections import Counter

        times = [t for t, _ in self.samples]
        idle = Counter()
        window = [(t, u) for t, u in gpu if t0 <= t <= t1]
        for t, u in window:
            if u > 0 or not times:
                continue
            i = min(bisect.bisect_left(times, t - 0.05), len(times) - 1)  # util covers the last period
            idle[self.samples[i][1]] += 1
        n = sum(idle.values())
        print(f"\nGPU idle samples: {n} of {len(window)} (100 ms each); where the main thread was:")
        for where, count in idle.most_common(top):
            print(f"{count:5d}  {where}")


def _busy(samples: list[tuple[float, int]], t0: float, t1: float) -> tuple[float, float]:
    window = [u for t, u in samples if t0 <= t <= t1]
    busy = sum(u > 0 for u in window) / max(1, len(window))
    return busy, statistics.mean(window) if window else 0.0


def cost(args: argparse.Namespace) -> None:
    task = get_task("token-mixer")
    name = args.seed
    program = Program(code=seed_source(name), module=load_seed(name), dtype="bfloat16")
    target = TargetSpec(name="cuda", device="cuda", dtype="bfloat16", resources={"GPU": 1.0})
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_gpu, args=(stop, samples), daemon=True)
    sampler.start()
    time.sleep(1.0)
    rows = []
    overrides = {stage: {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in pairs)}
                 for stage, pairs in (("mqar", args.mqar), ("lm", args.lm))}
    if args.sandbox:
        rows = _sandboxed(task, name, target, samples, overrides, args.warm)
    in_process = [] if args.sandbox else _stages(task, overrides)
    if args.warm and not args.sandbox:  # in-process: this process warmed as a pooled child is
        from sandbox.runner import _preload

        t0 = time.monotonic()
        for entry in task.preload(target):
            _preload(entry)
        t1 = time.monotonic()
        rows.append(("(warm-up)", True, t1 - t0, *_busy(samples, t0, t1)))
    where = StackSampler() if args.where and not args.sandbox else None
    if where is not None:
        where.start()
    t_first = time.monotonic()
    task.plan(in_process, target)  # as the sandbox harness does
    for stage in in_process:
        t0 = time.monotonic()
        result = task.run_stage(program, stage, target)
        t1 = time.monotonic()
        rows.append((stage.name, result.ok, t1 - t0, *_busy(samples, t0, t1)))
        print(stage.name, result.ok, result.failure_kind, round(t1 - t0, 1),
              json.dumps({k: round(v, 4) for k, v in result.metrics.items()}), flush=True)
    stop.set()
    if where is not None:
        where.stop()
        where.idle_report(samples, t_first, time.monotonic())
    rows_in_total = [r for r in rows if not r[0].startswith("(")]
    total = sum(r[2] for r in rows_in_total)
    changed = {stage: o for stage, o in overrides.items() if o}
    print(f"\nrung-1 cost of {name} on {torch.cuda.get_device_name()} (bf16)"
          + (f", overrides {changed}" if changed else ""))
    print(f"{'stage':10} {'ok':>4} {'wall s':>8} {'busy %':>7} {'mean util %':>12}")
    for stage, ok, wall, busy, util in rows:
        print(f"{stage:10} {str(ok):>4} {wall:8.1f} {100 * busy:7.1f} {util:12.1f}")
    weighted = sum(r[2] * r[3] for r in rows_in_total) / max(total, 1e-9)
    print(f"{'total':10} {'':>4} {total:8.1f} {100 * weighted:7.1f}")
    staged = [r for r in rows_in_total if r[0] not in ("spawn", "load")]
    wall = sum(r[2] for r in staged)
    busy = sum(r[2] * r[3] for r in staged) / max(wall, 1e-9)
    print(f"{'stages':10} {'':>4} {wall:8.1f} {100 * busy:7.1f}   (rung 1's stages alone)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    z = sub.add_parser("zoo")
    z.add_argument("--d-model", type=int, default=64)
    z.add_argument("--steps", type=int, default=1600)
    z.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    z.add_argument("--seeds", nargs="*")
    e = sub.add_parser("exponent")
    e.add_argument("--ts", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    e.add_argument("--width", type=int, default=256)
    e.add_argument("--heads", type=int, default=4)
    k = sub.add_parser("compile")
    k.add_argument("seeds", nargs="*")
    k.add_argument("--steps", type=int, default=300)
    v = sub.add_parser("overlap")
    v.add_argument("seed", nargs="?", default="gated_deltanet")
    v.add_argument("--beside", action="store_true", help="compile beside an eager training run")
    v.add_argument("--autotune", action="store_true", help="inductor's pointwise autotuning on")
    c = sub.add_parser("cost")
    c.add_argument("seed", nargs="?", default="deltanet")
    c.add_argument("--sandbox", action="store_true", help="evaluate through the sandbox, as a worker does")
    c.add_argument("--warm", action="store_true",
                   help="with --sandbox: from a warm child prepared with the task's preload; "
                        "in-process: run that preload in this process first (untimed)")
    c.add_argument("--where", action="store_true",
                   help="in-process: say where the host was while the GPU idled")
    c.add_argument("--mqar", action="append", default=[], metavar="KEY=JSON",
                   help="override an MQAR stage option, e.g. --mqar compile=false")
    c.add_argument("--lm", action="append", default=[], metavar="KEY=JSON",
                   help="override an LM stage option, e.g. --lm compile=false")
    args = p.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    {"zoo": zoo, "exponent": exponent, "compile": compile_speed, "overlap": overlap,
     "cost": cost}[args.cmd](args)


if __name__ == "__main__":
    main()
