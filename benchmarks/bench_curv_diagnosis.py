"""Benchmark: which factor of the published recipe moves the defect's onset ahead of grokking (issue 22, item 6).

    nice -n 10 python benchmarks/bench_curv_diagnosis.py run    [--out results/curv_diagnosis] [--workers 3]
    nice -n 10 python benchmarks/bench_curv_diagnosis.py report [--out results/curv_diagnosis]
               [--published-run results/curv_published/runs/add_wd1_lr0.001_seed42]

Training factors (one training run each; add, p 97, lr 1e-3, wd 1, AdamW (0.9, 0.98), clip 1, batch 512,
seed 42, evaluation and snapshots every 100 steps, stop 500 steps after 3 evaluations at test acc >= 0.98,
no in-run defect):
  R0 curv:     our recipe (model_configs/grok-curv.yaml: causal 3-token decoder read at '=', N(0, (0.8/√d)²)
               init, torch-permutation split 0.3, batches without replacement)
  R1 +model:   the published encoder read at position 0 with the published initialisation
  R2 +split:   R1 with the published python-shuffle split at 0.5
  R3 +batches: R2 with batches drawn with replacement = the published preset (the sweep's add/seed-42
               run, whose stream also feeds its in-run defect)
Measurement factors (recomputed on every run's snapshots, same batches for each setting, diagnose.py):
  defect exact K 9 × 128 (ours) / exact K 5 × 512 (published batch and K) / float32_direct K 5 × 512
  (the published evaluation); grokking threshold 0.95 (ours) / 0.9 (published).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFECTS = {"exact K9x128": (9, 128, "exact"), "exact K5x512": (5, 512, "exact"),
           "float32 K5x512": (5, 512, "float32_direct")}


def configs() -> dict:
    from pipelines.grok import load_grok_config

    _, curv, _ = load_grok_config("grok-curv")
    base = curv.replace(seed=42, steps=6000, eval_every=100, snapshot_every=100, defect_every=0, stop_acc=0.98,
                        stop_patience=3, stop_after=500)
    from headscreen.grokking.config import model_spec

    r1 = base.replace(model=model_spec("published"))
    r2 = r1.replace(train_frac=0.5, split="python_shuffle")
    return {"R0_curv": base, "R1_model": r1, "R2_split": r2}


def run(out: Path, workers: int) -> None:
    from headscreen.compute.executors import make_executor
    from pipelines.grok import run_many

    print(f"[{time.strftime('%H:%M:%S')}] training {list(configs())}; load {os.getloadavg()}", flush=True)
    with make_executor("process", workers=workers) as ex:
        _, errors = run_many(configs(), out / "runs", workers=workers, progress=False, analyse=False, executor=ex)
    print(f"[{time.strftime('%H:%M:%S')}] done; errors {errors}", flush=True)


def report(out: Path, published_run: Path | None) -> None:
    import pandas as pd

    from headscreen.grokking.published.diagnose import onsets_by_setting, recompute_defect

    runs = {name: out / "runs" / name for name in configs()}
    if published_run is not None:
        runs["R3_batches (published preset)"] = published_run
    tables = []
    for name, run in runs.items():
        if not (run / "curves.parquet").is_file():
            print(f"{name}: not trained yet")
            continue
        series = {}
        for label, (k, bs, form) in DEFECTS.items():
            cache = run / f"diag_defect_{form}_{k}x{bs}.parquet"
            if not cache.is_file():
                recompute_defect(run, pairs=k, batch_size=bs, form=form).to_parquet(cache, index=False)
            series[label] = pd.read_parquet(cache)
        if (run / "defect.parquet").is_file() and len(pd.read_parquet(run / "defect.parquet")):
            series["in-run (published stream)"] = pd.read_parquet(run / "defect.parquet")
        t = onsets_by_setting(pd.read_parquet(run / "curves.parquet"), series)
        t.insert(0, "run", name)
        tables.append(t)
        g = series["float32 K5x512"]
        e = series["exact K5x512"]
        print(f"\n{name}: defect at selected steps (exact K5x512 / float32 K5x512 / median grad norm)")
        for s in [0, 500, 1000, 1500, 2000, 2500, 3000]:
            if s in set(g["step"]):
                print(f"  step {s:5d}: {e.set_index('step').defect_median[s]:8.2f} {g.set_index('step').defect_median[s]:8.2f}"
                      f" {g.set_index('step').grad_norm[s]:8.3f}")
    if tables:
        table = pd.concat(tables, ignore_index=True)
        print("\n" + table.to_string(index=False))
        table.to_csv(out / "diagnosis.csv", index=False)
    print(f"\nloadavg {open('/proc/loadavg').read().strip()} (step counts do not depend on load)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("run", "report"))
    ap.add_argument("--out", default="results/curv_diagnosis")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--published-run", default="results/curv_published/runs/add_wd1_lr0.001_seed42")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.part == "run":
        run(out, args.workers)
    else:
        pub = Path(args.published_run)
        report(out, pub if (pub / "manifest.json").is_file() else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
