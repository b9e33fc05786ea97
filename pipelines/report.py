"""`headscreen report`: HTML, Markdown and JSON circuit reports rendered from run directories alone."""

from __future__ import annotations

import argparse
from pathlib import Path


def report(runs: list[str | Path], *, out: str | Path | None = None, step: int | None = None,
           probe: str | None = None) -> dict[str, Path]:
    """Render the report of one run (or a comparison of several); returns {"html", "md", "json"} paths."""
    from headscreen.report import build_report

    return build_report([Path(r) for r in runs], Path(out) if out else None, step, probe=probe)


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
