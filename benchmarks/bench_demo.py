"""Time the embedded demo end to end (train, screen, validate, report) and print each stage's share.

    python benchmarks/bench_demo.py [--threads N] [--out DIR]

The figures depend on the host: the load average before and after is printed beside them, since a
busy 2-core host can slow 2-thread training several-fold (use --threads 1 there).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    p.add_argument("--out", default=None, help="demo directory (default: a fresh temporary one)")
    a = p.parse_args()
    from headscreen.compute.runtime import tune_allocator
    from pipelines.common import set_threads
    from pipelines.demo import demo

    set_threads(a.threads)
    tune_allocator()  # as the CLI does
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="headscreen-demo-")) / "demo"
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    demo(out, threads=a.threads, progress=False)
    wall = time.perf_counter() - t0
    print(f"demo wall time {wall:.0f} s ({wall / 60:.1f} min) with threads={a.threads or 'recipe default'}; "
          f"load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after; budget 300 s -> "
          f"{wall / 300:.2f}x of budget")


if __name__ == "__main__":
    main()
