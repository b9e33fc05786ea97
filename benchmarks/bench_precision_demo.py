"""bfloat16 against float32 boots on a trained series: classes, circuits and selectivities of two screens.

    PYTHONPATH=$PWD python benchmarks/bench_precision_demo.py SERIES_DIR [OUT_PREFIX]

Screens SERIES_DIR (e.g. the demo's series/) twice with the synthetic-tiny config, into
OUT_PREFIX_float32 and OUT_PREFIX_bfloat16, and prints what differs (docs/methods.md, "Boot precision").
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import pandas as pd
import torch

from headscreen.config import load_config
from headscreen.series.precision import BootSettings
from pipelines.screen import ScreenSettings, screen


def main() -> None:
    torch.set_num_threads(1)
    root, prefix = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "/tmp/headscreen-precision-demo")
    cfg = load_config("synthetic-tiny")
    base = ScreenSettings.from_config(cfg)
    runs = {}
    for dt in ("float32", "bfloat16"):
        t = time.perf_counter()
        runs[dt] = f"{prefix}_{dt}"
        screen(root, runs[dt], config=cfg, settings=dataclasses.replace(base, boot=BootSettings(dtype=dt)),
               progress=False, force=True)
        print(dt, "screened in", round(time.perf_counter() - t, 1), "s; load", open("/proc/loadavg").read().strip())
    a, b = (pd.read_parquet(f"{runs[d]}/classes.parquet") for d in runs)
    for col in a.columns:
        if not a[col].equals(b[col]):
            print(f"classes.{col}: {(a[col] != b[col]).sum()} of {len(a)} rows differ")
    ca, cb = (json.load(open(f"{runs[d]}/circuits.json")) for d in runs)
    diff = [(s, p, k) for s in ca["steps"] for p in ca["steps"][s] for k in ca["steps"][s][p]
            if ca["steps"][s][p][k] != cb["steps"][s][p][k]]
    print("circuit entries that differ:", diff, "; emergence equal:", ca["emergence"] == cb["emergence"],
          "; lead times equal:", ca.get("lead_times") == cb.get("lead_times"))
    sa, sb = (pd.read_parquet(f"{runs[d]}/selectivity.parquet") for d in runs)
    rel = (sa.selectivity - sb.selectivity).abs() / sa.selectivity.abs()
    print(f"max relative selectivity difference: {rel.max():.4f} (over selectivity >= 10: {rel[sa.selectivity >= 10].max():.4f}, "
          f"99th percentile {rel[sa.selectivity >= 10].quantile(0.99):.4f})")


if __name__ == "__main__":
    main()
