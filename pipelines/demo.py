"""`headscreen demo`: the embedded default, end to end — train, screen, validate, report.

Trains the `synthetic-tiny` recipe (a small Llama-format model on a synthetic corpus in which
induction heads form within minutes on a CPU), screens the saved checkpoint series, validates the
induction circuit causally at the last checkpoint, and writes the report. Every stage resumes: a
rerun with the same --out reuses what is finished.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from headscreen.config import load_config
from pipelines.common import auto_threads


def demo(out: str | Path = "results/demo", *, config: str = "synthetic-tiny", threads: int | None = None,
         progress: bool = True, max_threads: int | None = None) -> dict[str, Path]:
    """Run the whole demo into `out` (series/, run/, run/report/); returns the report paths."""
    from pipelines.report import report
    from pipelines.screen import screen
    from pipelines.train import train
    from pipelines.validate import validate

    out = Path(out)
    cfg = load_config(config)
    timings: dict[str, float] = {}

    def stage(name: str, fn):
        print(f"[demo] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        print(f"[demo] {name} done in {timings[name]:.1f} s", flush=True)
        return result

    series_dir = stage("train", lambda: train(cfg, out / "series", threads=threads, progress=progress,
                                                     max_threads=max_threads))
    run_dir = stage("screen", lambda: screen(series_dir, out / "run", config=cfg, progress=progress))
    stage("validate", lambda: validate(run_dir, progress=progress))
    paths = stage("report", lambda: report([run_dir]))
    total = sum(timings.values())
    print("[demo] " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s")
    return paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/demo", help="demo directory (default results/demo)")
    p.add_argument("--config", default="synthetic-tiny", help="synthetic recipe to train (default synthetic-tiny)")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    paths = demo(args.out, config=args.config, threads=args.threads, progress=not args.no_progress,
                 max_threads=auto_threads(args))
    print(f"report: {paths['html']}")
    return 0
