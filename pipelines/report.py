"""`headscreen report`: HTML, Markdown and JSON circuit reports rendered from run directories alone."""

from __future__ import annotations

import argparse
from pathlib import Path


def report(runs: list[str | Path], *, out: str | Path | None = None, step: int | None = None,
           probe: str | None = None, say=None) -> dict[str, Path]:
    """Render the report of one run (or a comparison of several); returns {"html", "md", "json"} paths.

    Two steps: first the analyses the report needs and the runs lack are run (pipelines/report_prep.py; each
    says so through `say`, default stderr), then the report package renders from the run files and those
    results (it computes nothing itself)."""
    from headscreen.report import build_report
    from headscreen.report.build import check_out_dir, default_out_dir
    from pipelines.report_prep import prepare

    paths = [Path(r) for r in runs]
    if not paths:
        raise ValueError("no run directory given; pass at least one, e.g. results/<config>/<run>/.")
    target = Path(out) if out else default_out_dir(paths)
    check_out_dir(target)  # before any analysis runs
    inputs = prepare(paths, probe=probe, **({"say": say} if say else {}))
    return build_report(paths, target, step, probe=probe, inputs=inputs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (written by `headscreen screen` / `demo`)")
    p.add_argument("--out", help="report directory (default: <run>/report, or results/comparison for several runs)")
    p.add_argument("--step", type=int, help="checkpoint of the per-step sections (default: the last)")
    p.add_argument("--probe", help="probe whose circuits are shown (default: retrieval)")


def main(args: argparse.Namespace) -> int:
    paths = report(args.runs, out=args.out, step=args.step, probe=args.probe)
    for kind, path in paths.items():
        print(f"{kind:>4}: {path}")
    return 0
