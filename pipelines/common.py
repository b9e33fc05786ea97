"""Helpers shared by the workflow modules: resolving a series argument, threads, printing."""

from __future__ import annotations

from pathlib import Path

from headscreen.config import ConfigError, config_series, load_config


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
        return config_series(cfg, cache_dir=cache_dir), cfg
    raise ConfigError(f"{spec!r} is a file; give a folder of checkpoints or a model config name")
