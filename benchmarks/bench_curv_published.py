"""Benchmark: the reproduction of the published grokking results (issue 22) on the published preset.

    python benchmarks/bench_curv_published.py run    [--out results/curv_published] [--workers 2] [--stages 1,2,3]
                                                     [--priority]
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


PRIORITY = ("sub_wd1_lr0.001_seed137", "sub_wd1_lr0.001_seed2024", "add_wd0_lr0.001_seed42", "add_wd1_lr0.01_seed42",
            "sub_wd1_lr0.01_seed42", "mul_wd1_lr0.001_seed42", "sq_wd1_lr0.001_seed42", "x2_xy_y2_wd1_lr0.001_seed42",
            "x3_xy_wd1_lr0.001_seed42")


def priority_order(stages: list[int]) -> dict:
    """Every run of `stages`, the PRIORITY runs first (the controls and one run per setting before the
    remaining seeds: what a time-limited session most needs), then the rest in stage order."""
    runs = {}
    for stage in stages:
        runs.update(stage_runs(stage))
    first = {n: runs[n] for n in PRIORITY if n in runs}
    return {**first, **{n: c for n, c in runs.items() if n not in first}}


def run(out: Path, workers: int, stages: list[int], priority: bool = False) -> None:
    if priority:
        from headscreen.compute.executors import make_executor
        from pipelines.grok import run_many

        configs = priority_order(stages)
        print(f"[{time.strftime('%H:%M:%S')}] {len(configs)} runs, priority order; load {os.getloadavg()}", flush=True)
        with make_executor("process", workers=workers) as ex:
            results, errors = run_many(configs, out / "runs", workers=workers, progress=False, analyse=False,
                                       executor=ex)
        print(f"[{time.strftime('%H:%M:%S')}] done: {len(results)} ok, errors {errors}", flush=True)
        return
    from headscreen.compute.executors import make_executor
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

    from headscreen.grokking.training.train import train_run
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
    ours, ref = update_loop_ratio(steps)
    print(f"bare update loop (batch 512, AdamW, clip), same process: ours {ours:.1f} steps/s, torch "
          f"nn.TransformerEncoder model {ref:.1f} steps/s, ratio {ours / ref:.2f}; loadavg "
          f"{open('/proc/loadavg').read().strip()}")


def update_loop_ratio(steps: int) -> tuple[float, float]:
    """Steps/s of a bare training loop on our encoder and on an equivalent model built from torch's
    nn.TransformerEncoder (the published architecture), same batches, interleaved in blocks of 50 steps."""
    import math

    import torch
    from torch import nn

    from headscreen.grokking.models.transformer import PRESETS, build_model

    class TorchModel(nn.Module):
        def __init__(self, p=97, d=128):
            super().__init__()
            self.tok, self.pos = nn.Embedding(p, d), nn.Parameter(torch.randn(2, d) / math.sqrt(d))
            layer = nn.TransformerEncoderLayer(d, 4, 256, 0.0, activation="gelu", batch_first=True, norm_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, p)

        def forward(self, x):
            return self.head(self.ln(self.enc(self.tok(x[:, :2]) + self.pos)[:, 0])).unsqueeze(1)

    torch.manual_seed(0)
    models = {"ours": build_model(PRESETS["published"], 97, ["add"], 0), "torch": TorchModel()}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98)) for k, m in models.items()}
    x = torch.randint(0, 97, (512, 3))
    y = (x[:, 0] + x[:, 1]) % 97
    spent = dict.fromkeys(models, 0.0)
    for _ in range(max(steps // 50, 1)):
        for k, m in models.items():
            t = time.perf_counter()
            for _ in range(50):
                loss = nn.functional.cross_entropy(m(x)[:, 0], y)
                opts[k].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opts[k].step()
            spent[k] += time.perf_counter() - t
    n = max(steps // 50, 1) * 50
    return n / spent["ours"], n / spent["torch"]


def report(out: Path) -> None:
    import pandas as pd

    from headscreen.grokking.published.compare import print_sweep_report
    from headscreen.grokking.published.thesis_edge import counts, sweep_table

    print(f"loadavg {open('/proc/loadavg').read().strip()} (step counts do not depend on load)\n")
    print_sweep_report(out)
    table = sweep_table(out)
    if table.empty:
        return
    pd.set_option("display.width", 250)
    print("\nspectral edge, thesis Table 7 criteria (g23 early = peak before grokking; declined = early/grok > 1.5):")
    cols = ["run", "vector", "grok_step", "early_step", "g23_early", "g23_first", "g23_grok", "decline",
            "declined", "monotone", "kstar_term", "gap_open_step", "complete"]
    print(table[cols].to_string(index=False))
    print("\ncounts (published THESIS: gap dynamics before grokking in 24/24 runs with weight decay, 0/24 without;"
          " AdamW k* = 2):")
    print(counts(table).to_string(index=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("run", "report", "speed"))
    ap.add_argument("--out", default="results/curv_published")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--priority", action="store_true", help="controls and one run per setting first (PRIORITY)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.part == "run":
        run(out, args.workers, [int(s) for s in args.stages.split(",")], args.priority)
    elif args.part == "speed":
        speed(args.steps, args.threads)
    else:
        report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
