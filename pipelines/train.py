"""`headscreen train`: train a model config's synthetic recipe into a local checkpoint series."""

from __future__ import annotations

import argparse
from pathlib import Path

from headscreen.config import ConfigError, ModelConfig, load_config
from pipelines.common import auto_threads


def train(config: str | Path | ModelConfig, out: str | Path, *, threads: int | None = None,
          overwrite: bool = False, progress: bool = True, max_threads: int | None = None) -> Path:
    """Train the `train:` recipe of `config` into `out` (resumes a partial series of the same recipe).
    `threads` replaces the recipe's thread count; `max_threads` only caps it (the CLI's automatic
    choice on a busy machine, headscreen/cpu.py)."""
    import dataclasses

    from headscreen.synthetic import TrainConfig, train_series

    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    if "train" not in cfg.sections:
        raise ConfigError(f"config {cfg.name!r} has no train: section; only synthetic recipes can be trained here")
    tcfg = TrainConfig.from_dict(cfg.section("train"))
    if threads is not None:
        tcfg = dataclasses.replace(tcfg, threads=threads)
    elif max_threads is not None and tcfg.threads > max_threads:
        tcfg = dataclasses.replace(tcfg, threads=max_threads)
    return train_series(tcfg, out, progress=progress, overwrite=overwrite, name=cfg.name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="synthetic-tiny", help="model config with a train: section (default synthetic-tiny)")
    p.add_argument("--out", required=True, help="series directory to write (step folders + series.json + tokenizer)")
    p.add_argument("--overwrite", action="store_true", help="replace a series of a different recipe in --out")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    out = train(args.config, args.out, threads=args.threads, overwrite=args.overwrite, progress=not args.no_progress,
                max_threads=auto_threads(args))
    print(f"series written to {out}")
    return 0
