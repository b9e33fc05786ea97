"""Benchmark: the reproduction of the published grokking results (issue 22) on the published preset.

    python benchmarks/bench_curv_published.py run    [--out results/curv_published] [--workers 2] [--stages 1,2,3]
    python benchmarks/bench_curv_published.py report [--out results/curv_published]
    python benchmarks/bench_curv_published.py speed  [--steps 300] [--threads 2]

run: trains the sweep with the process executor (`--workers` processes, 1 torch thread each), resumable
(finished runs are kept, unfinished ones resume from their last snapshot), in stages:
  1. lr 1e-3, wd 1: add, sub, mul, sq × seeds 42, 137, 2024; the wd 0 control (add, 42, 5000 steps);
     the two non-grokking operations (x2_xy_y2, x3_xy; seed 42; 7500 steps)   (model_configs/grok-curv-published.yaml)
  2. lr 1e-2, wd 1: add, sub × 3 seeds (at most 12k steps)
  3. lr 1e-4, wd 1: add seed 42 (then sub 42, add 137, ...: as far as time allows; at most 45k steps,
     snapshots every 500)
  Runs are trained without the per-run analysis; `report` reads their tables.
report: per run, onset (published rule), grokking at 0.5/0.9/0.95, lead; then the counts, lead ranges,
  the lead-time law with its fixed-onset null and rank statistic, each beside the published figure
  (computed from the published records by the same code), and the comparison figure data per run.
speed: steps per second of the preset with and without the defect (one process, --threads), beside
  /proc/loadavg; the published code took 174 s for add/seed 42 (4200 steps with the defect) at 2 threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = "grok-curv-published"
SEEDS = (42, 137, 2024)
STEPS_LR2 = 12_000  # cap for lr 1e-2 (the published runs there stop by 10.8k steps)
STEPS_LR4 = 45_000  # cap for lr 1e-4 (the published runs stop at 32.6k-41k steps)


def stage_runs(stage: int) -> dict:
    """{run name: GrokConfig} of one stage, in training order."""
    from headscreen.grokking.config import extra_run
    from pipelines.grok import load_grok_config

    _, base, sweep = load_grok_config(CONFIG)
    if stage == 1:
        return dict(sweep.grid(base))
    if stage == 2:
        return dict(extra_run(base, {"task": t, "lr": 0.01, "seed": s, "steps": STEPS_LR2}, "stage 2")
                    for t in ("add", "sub") for s in SEEDS)
    if stage == 3:
        order = [(t, s) for s in SEEDS for t in ("add", "sub")]
        return dict(extra_run(base, {"task": t, "lr": 1e-4, "seed": s, "steps": STEPS_LR4, "snapshot_every": 500},
                              "stage 3") for t, s in order)
    raise ValueError(f"stage {stage} is unknown; use 1, 2 or 3")


def run(out: Path, workers: int, stages: list[int]) -> None:
    from headscreen.executors import make_executor
    from pipelines.grok import run_many

    for stage in stages:
        configs = stage_runs(stage)
        print(f"[{time.strftime('%H:%M:%S')}] stage {stage}: {len(configs)} runs; load {os.getloadavg()}", flush=True)
        with make_executor("process", workers=workers) as ex:
            results, errors = run_many(configs, out / "runs", workers=workers, progress=False, analyse=False,
                                       executor=ex)
        for name, err in errors.items():
            print(f"  FAILED {name}: {err}", flush=True)
        print(f"[{time.strftime('%H:%M:%S')}] stage {stage} done: {len(results)} ok, {len(errors)} failed", flush=True)


def speed(steps: int, threads: int) -> None:
    import tempfile

    import torch

    from headscreen.grokking.train import train_run
    from pipelines.grok import load_grok_config

    torch.set_num_threads(threads)
    _, base, _ = load_grok_config(CONFIG)
    for label, cfg in (("with defect", base.replace(steps=steps)),
                       ("without defect", base.replace(steps=steps, defect_every=0))):
        with tempfile.TemporaryDirectory() as tmp:
            load0 = open("/proc/loadavg").read().strip()
            t = time.perf_counter()
            train_run(cfg, tmp, progress=False)
            dt = time.perf_counter() - t
            print(f"{label}: {steps} steps in {dt:.1f} s = {steps / dt:.1f} steps/s at {threads} thread(s); "
                  f"loadavg before {load0}, after {open('/proc/loadavg').read().strip()}")
    print("published code (README, quiet 2-core host): 4200 steps with the defect in 174 s = 24.1 steps/s at 2 threads")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("run", "report", "speed"))
    ap.add_argument("--out", default="results/curv_published")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.part == "run":
        run(out, args.workers, [int(s) for s in args.stages.split(",")])
    elif args.part == "speed":
        speed(args.steps, args.threads)
    else:
        from headscreen.grokking.compare import print_sweep_report

        print_sweep_report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
