"""The `headscreen` command: one subcommand per workflow, each also a Python function in pipelines/."""

from __future__ import annotations

import argparse
import sys

from pipelines import demo, grok, report, screen, series_info, train, validate
from pipelines.common import positive_int

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
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_ in COMMANDS:
        sp = sub.add_parser(name, help=help_, description=(module.__doc__ or help_).strip())
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input and environment faults end in one line on stderr and exit code 2,
    Ctrl-C in exit code 130 (every finished record is kept: rerun the command to resume)."""
    from headscreen.config import ConfigError
    from headscreen.runtime import tune_allocator
    from headscreen.series import SeriesError
    from headscreen.store import StoreError
    from pipelines.common import set_threads

    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    tune_allocator()
    try:
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        print(f"headscreen {args.command}: interrupted; finished records are kept — rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    except (SeriesError, StoreError, ConfigError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"headscreen {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a fault of the environment (disk, permissions) outside the run store's own writes
        where = f"{e.filename}: " if e.filename else ""
        print(f"headscreen {args.command}: error: {where}{e.strerror or e}; fix this and rerun the same command",
              file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
