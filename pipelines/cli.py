"""The `headscreen` command: one subcommand per workflow, each also a Python function in pipelines/."""

from __future__ import annotations

import argparse
import sys

from pipelines import demo, grok, report, screen, series_info, train, validate

# (name, module, one-line help). A workflow is listed only once it works end to end.
COMMANDS = [
    ("demo", demo, "the embedded default end to end: train, screen, validate, report"),
    ("series", series_info, "list the checkpoints of a series and its attention geometry"),
    ("train", train, "train a synthetic recipe (model_configs/synthetic-*.yaml) into a checkpoint series"),
    ("screen", screen, "fingerprint and screen every head of every checkpoint (one pass)"),
    ("validate", validate, "ablate and patch a screened run's circuits against matched-random nulls"),
    ("grok", grok, "train a toy grokking task with its trajectory captured, and analyse it; or a sweep"),
    ("report", report, "render HTML / Markdown / JSON circuit reports from run directories"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="headscreen",
        description="Screen every attention head of a checkpoint series: spectral fingerprints, "
        "selectivity screens, causal validation, circuit reports.",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_ in COMMANDS:
        sp = sub.add_parser(name, help=help_, description=(module.__doc__ or help_).strip())
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    from headscreen.config import ConfigError
    from headscreen.runtime import tune_allocator
    from headscreen.series import SeriesError
    from headscreen.store import StoreError
    from pipelines.common import offline_default, set_threads

    args = build_parser().parse_args(argv)
    offline_default()
    set_threads(args.threads)
    tune_allocator()
    try:
        return int(args._module.main(args) or 0)
    except (SeriesError, StoreError, ConfigError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"headscreen {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
