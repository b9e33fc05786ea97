"""`headscreen train`: train a model config's synthetic recipe into a local checkpoint series."""

from __future__ import annotations

import argparse
from pathlib import Path

from headscreen.config import ConfigError, ModelConfig, load_config
from pipelines.common import add_device_argument, auto_threads

_UNSET = object()


def train(config: str | Path | ModelConfig, out: str | Path, *, threads: int | None = None,
          overwrite: bool = False, progress: bool = True, max_threads: int | None = None, device: str | None = "auto",
          corpus=_UNSET, seed: int | None = None, overrides: dict | None = None) -> Path:
    """Train the `train:` recipe of `config` into `out` (resumes a partial series of the same recipe).
    `threads` replaces the recipe's thread count; `max_threads` only caps it (the CLI's automatic
    choice on a busy machine, headscreen/compute/cpu.py). `device`: headscreen/compute/device.py. `corpus` replaces the
    recipe's text corpus (a local file, a hub name, or None for the built-in stories), `seed` its seed,
    and `overrides` any other TrainConfig fields (e.g. {"steps": 2}); all of them change the recipe's
    identity (a series of the unchanged recipe in `out` is not resumed)."""
    import dataclasses

    from headscreen.synthetic import TrainConfig, train_series

    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    if "train" not in cfg.sections:
        raise ConfigError(f"config {cfg.name!r} has no train: section; only synthetic recipes can be trained here")
    fields = dict(cfg.section("train"))
    for key in ("corpus", "tokenizer"):  # a relative local path in the YAML is relative to the YAML's folder
        value = fields.get(key)
        if isinstance(value, str) and cfg.path and not Path(value).is_absolute() and (cfg.path.parent / value).exists():
            fields[key] = str((cfg.path.parent / value).resolve())
    if corpus is not _UNSET:
        fields["corpus"] = None if corpus is None else str(Path(corpus).resolve() if Path(corpus).exists() else corpus)
    if seed is not None:
        fields["seed"] = seed
    fields.update(overrides or {})
    tcfg = TrainConfig.from_dict(fields)
    if threads is not None:
        tcfg = dataclasses.replace(tcfg, threads=threads)
    elif max_threads is not None and tcfg.threads > max_threads:
        tcfg = dataclasses.replace(tcfg, threads=max_threads)
    return train_series(tcfg, out, progress=progress, overwrite=overwrite, name=cfg.name, device=device)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="synthetic-tiny", help="model config with a train: section (default synthetic-tiny)")
    p.add_argument("--out", required=True, help="series directory to write (step folders + series.json + tokenizer)")
    p.add_argument("--overwrite", action="store_true", help="replace a series of a different recipe in --out")
    p.add_argument("--corpus", default=None,
                   help="text corpus instead of the recipe's: a local .txt/.jsonl/.parquet/.arrow file or folder, a "
                        "hub dataset name, or 'builtin' for the built-in story grammar (headscreen/synthetic/corpora.py)")
    p.add_argument("--seed", type=int, default=None, help="seed instead of the recipe's (synthetic-51m: 42, 123, 149, 256)")
    add_device_argument(p, what="training")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from headscreen.rundir.kind import require_kind

    require_kind(args.out, "series", "`headscreen train`")  # never into a run directory
    corpus = _UNSET if args.corpus is None else (None if args.corpus == "builtin" else args.corpus)
    out = train(args.config, args.out, threads=args.threads, overwrite=args.overwrite, progress=not args.no_progress,
                max_threads=auto_threads(args), device=args.device, corpus=corpus, seed=args.seed)
    print(f"series written to {out}")
    return 0
