"""The `headscreen` command: one subcommand per workflow, each also a Python function in pipelines/."""

from __future__ import annotations

import argparse
import sys

from pipelines.common import positive_int

# The workflow modules import torch, so they are imported only after the CPU plan set OpenMP's wait
# policy (headscreen/compute/cpu.py): this module imports nothing heavy at the top.


def commands():
    """(name, module, one-line help). A workflow is listed only once it works end to end."""
    from pipelines import attention, demo, grok, report, screen, series_info, train, validate

    return [
        ("demo", demo, "the embedded default end to end: train, screen, validate, report"),
        ("series", series_info, "list the checkpoints of a series and its attention geometry"),
        ("train", train, "train a synthetic recipe (model_configs/synthetic-*.yaml) into a checkpoint series"),
        ("screen", screen, "fingerprint and screen every head of every checkpoint (one pass)"),
        ("attention", attention, "store the circuit and BOS heads' attention patterns of a screened run (report viewer)"),
        ("validate", validate, "ablate and patch a screened run's circuits against matched-random nulls"),
        ("grok", grok, "train a toy grokking task with its trajectory captured, and analyse it; or a sweep"),
        ("report", report, "render HTML / Markdown / JSON circuit reports from run directories"),
    ]


def _threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: chosen from the idle cores at start, and OpenMP threads "
                        "sleep instead of spinning when the machine is busy; see headscreen/compute/cpu.py)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="headscreen",
        description="Screen every attention head of a checkpoint series: spectral fingerprints, "
        "selectivity screens, causal validation, circuit reports.",
    )
    _threads_flag(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_ in commands():
        sp = sub.add_parser(name, help=help_, description=(module.__doc__ or help_).strip())
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input and environment faults end in one line on stderr and exit code 2,
    Ctrl-C in exit code 130 (every finished record is kept: rerun the command to resume)."""
    cpu = _plan_cpu(argv)  # before anything imports torch
    from headscreen.compute.executors import WorkerDied
    from headscreen.compute.runtime import tune_allocator
    from headscreen.config import ConfigError
    from headscreen.rundir.store import StoreError
    from headscreen.series import SeriesError

    args = build_parser().parse_args(argv)
    args.cpu = cpu
    tune_allocator()
    try:
        if getattr(args, "device", None) is not None:  # --device: a missing GPU fails before any work
            from headscreen.compute.device import resolve_device

            resolve_device(args.device)
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        print(f"headscreen {args.command}: interrupted; finished records are kept — rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    except (SeriesError, StoreError, ConfigError, ValueError, FileExistsError, FileNotFoundError, WorkerDied) as e:
        print(f"headscreen {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a fault of the environment (disk, permissions) outside the run store's own writes
        where = f"{e.filename}: " if e.filename else ""
        print(f"headscreen {args.command}: error: {where}{e.strerror or e}; fix this and rerun the same command",
              file=sys.stderr)
        return 2


def _plan_cpu(argv):
    """Choose threads and OpenMP's wait policy (headscreen/compute/cpu.py) from --threads and the idle cores.
    In a process that already imported torch (a library caller, the tests) an automatic choice
    changes nothing: the caller's thread setting stands, and the wait policy could not change anyway."""
    import sys

    from headscreen.compute.cpu import CpuPlan, apply_cpu, plan_cpu

    pre = argparse.ArgumentParser(prog="headscreen", add_help=False)
    _threads_flag(pre)
    known, _ = pre.parse_known_args(argv)
    if known.threads is None and "torch" in sys.modules:
        import torch

        return CpuPlan(threads=torch.get_num_threads(), cores=0, idle=float("nan"), wait_policy=None, auto=False)
    plan = plan_cpu(known.threads)
    apply_cpu(plan)
    return plan


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
