"""Helpers shared by the workflow modules: resolving a series argument, threads, printing."""

from __future__ import annotations

import argparse
from pathlib import Path

from headscreen.config import ConfigError, config_series, load_config, require_remote_code_flag

__all__ = ["positive_int", "require_remote_code_flag", "resolve_series", "set_threads"]


def positive_int(text: str) -> int:
    """argparse type of a count flag (--threads, --probe-every): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def set_threads(n: int | None) -> None:
    """Torch intra-op threads; None leaves torch's default. On busy 2-core hosts 1 can beat 2."""
    if n is not None:
        import torch

        if n < 1:
            raise ValueError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def resolve_series(spec: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                   cache_dir: str | None = None):
    """(series, config or None) for a series folder, a model config name, or a YAML path.

    A path that exists is a local series (no hub call is made). Otherwise `spec` names a config
    from model_configs/ (e.g. `pythia-160m`) whose source says where the checkpoints are.
    Remote code is granted by `trust_remote_code` alone (a config asking for it without it is refused).
    """
    from headscreen.series import LocalSeries

    path = Path(spec)
    if path.is_dir():
        return LocalSeries(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), None
    if path.suffix in (".yaml", ".yml") or not path.exists():
        try:
            cfg = load_config(spec)
        except ConfigError as e:
            raise ConfigError(f"{spec!r} is neither a checkpoint folder nor a model config: {e}") from e
        return config_series(cfg, cache_dir=cache_dir, trust_remote_code=trust_remote_code), cfg
    raise ConfigError(f"{spec!r} is a file; give a folder of checkpoints or a model config name")
