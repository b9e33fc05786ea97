"""Helpers shared by the workflow modules: resolving a series argument, threads, printing."""

from __future__ import annotations

import argparse
from pathlib import Path

from headscreen.config import ConfigError, config_series, load_config, require_remote_code_flag

__all__ = ["add_device_argument", "add_executor_arguments", "auto_threads", "executor_from_args", "positive_int", "require_remote_code_flag",
           "resolve_series", "set_threads"]


def positive_int(text: str) -> int:
    """argparse type of a count flag (--threads, --probe-every): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def add_device_argument(p: argparse.ArgumentParser, *, what: str) -> None:
    """--device cuda|cpu|auto (headscreen/compute/device.py), shared by train, screen, validate and grok."""
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help=f"where {what} runs: a CUDA GPU, the CPU, or auto (the GPU when torch sees one; the "
                        "default). cuda where there is none is an error")


def auto_threads(args: argparse.Namespace) -> int | None:
    """The CLI's automatic thread choice (headscreen/compute/cpu.py) when --threads was not given, else None."""
    cpu = getattr(args, "cpu", None)
    return cpu.threads if cpu is not None and cpu.auto and getattr(args, "threads", None) is None else None


def set_threads(n: int | None) -> None:
    """Torch intra-op threads; None leaves torch's default. On busy 2-core hosts 1 can beat 2."""
    if n is not None:
        import torch

        if n < 1:
            raise ValueError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def resolve_series(spec: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                   cache_dir: str | None = None, command: str = "`headscreen screen`", trajectories: bool = False):
    """(series, config or None) for a series folder, a model config name, or a YAML path.

    A path that exists is a local series (no hub call is made). Otherwise `spec` names a config
    from model_configs/ (e.g. `pythia-160m`) whose source says where the checkpoints are.
    Remote code is granted by `trust_remote_code` alone (a config asking for it without it is refused).
    A run directory (and, unless `trajectories`, a grok run's trajectory) is refused in one line naming
    what it is (headscreen/rundir/kind.py); `command` names the command in that line.
    """
    from headscreen.rundir.kind import directory_kind, refuse_run_as_series
    from headscreen.series import LocalSeries

    path = Path(spec)
    if path.is_symlink() and not path.exists():  # a loop or a dangling link: named as such, not as a config
        return LocalSeries(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), None
    if path.is_dir():
        if not (trajectories and directory_kind(path) == "grok-trajectory"):
            refuse_run_as_series(path, command)
        return LocalSeries(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), None
    if path.suffix in (".yaml", ".yml") or not path.exists():
        try:
            cfg = load_config(spec)
        except ConfigError as e:
            raise ConfigError(f"{spec!r} is neither a checkpoint folder nor a model config: {e}") from e
        return config_series(cfg, cache_dir=cache_dir, trust_remote_code=trust_remote_code), cfg
    raise ConfigError(f"{spec!r} is a file; give a folder of checkpoints or a model config name")


def add_executor_arguments(p: argparse.ArgumentParser, *, default: str = "local",
                           default_workers: str = "1 (local) or 2") -> None:
    """--executor, --workers, --address (headscreen/compute/executors.py)."""
    p.add_argument("--executor", choices=("local", "process", "ray"), default=default,
                   help=f"where the work runs: this process (local), a process pool, or a Ray cluster "
                        f"(default: {default})")
    p.add_argument("--workers", type=positive_int, default=None,
                   help=f"parallel workers, each with --threads torch threads (default 1) (default: {default_workers})")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto': the running one); default: start a local one")


def executor_from_args(args: argparse.Namespace):
    """The executor the flags ask for; each worker gets --threads torch threads (1 when not given)."""
    from headscreen.compute.executors import make_executor

    return make_executor(args.executor, workers=args.workers, address=args.address,
                         threads=getattr(args, "threads", None) or 1)
