"""`headscreen grok li2`: train the Li₂ two-layer network with its per-epoch edge and lock-in detector.

  headscreen grok li2 --out results/grok/li2                  (x², model_configs/grok-li2.yaml)
  headscreen grok li2 --activation relu --out results/grok/li2-relu
  headscreen grok li2 --wd 0 --out results/grok/li2-wd0       (the weight-decay control)

The run directory follows the grok run conventions (manifest, trajectory/, curves.parquet, grok.json)
plus li2.parquet; `headscreen report <run>` renders it. Layout: docs/run-format.md, "A Li₂ run".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headscreen.config import ConfigError, ModelConfig, load_config

CONFIG = "grok-li2"
FLAGS = {"m": "m", "hidden": "hidden", "activation": "activation", "loss": "loss", "lr": "lr", "wd": "weight_decay",
         "train_frac": "train_frac", "epochs": "epochs", "seed": "seed", "tau": "tau", "snapshot_every": "snapshot_every"}


def load_li2_config(config: str | Path | ModelConfig = CONFIG, overrides: dict | None = None):
    from headscreen.grokking.li2.network import Li2Config

    mc = config if isinstance(config, ModelConfig) else load_config(config)
    if "li2" not in mc.sections:
        raise ConfigError(f"config {mc.name!r} has no li2: section; use {CONFIG}")
    section = {**mc.section("li2"), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return Li2Config.from_dict(section, f"{mc.name}: li2")


def li2(out: str | Path, *, config: str | Path = CONFIG, overrides: dict | None = None, progress: bool = True,
        force: bool = False) -> dict:
    """`headscreen grok li2`: one Li₂ run into `out`; returns grok.json's dict."""
    from headscreen.grokking.li2.run import run_li2

    return run_li2(load_li2_config(config, overrides), out, progress=progress, force=force)


def add_parser(sub) -> None:
    sp = sub.add_parser("li2", help=f"train the Li2 two-layer network (model_configs/{CONFIG}.yaml) with the "
                                    "per-epoch lock-in detector")
    sp.add_argument("--m", type=int, help="modulus M (prime)")
    sp.add_argument("--hidden", type=int, help="hidden nodes K")
    sp.add_argument("--activation", choices=("sqr", "relu"))
    sp.add_argument("--loss", choices=("mse", "ce"))
    sp.add_argument("--lr", type=float)
    sp.add_argument("--wd", type=float, help="coupled L2 weight decay (0: the control)")
    sp.add_argument("--train-frac", type=float)
    sp.add_argument("--epochs", type=int, help="epochs (= full-batch steps)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--tau", type=float, help="lock-in threshold on r23 (calibrate it with benchmarks/bench_li2.py)")
    sp.add_argument("--snapshot-every", type=int, help="epochs between trajectory snapshots; 0 = none")
    sp.add_argument("--config", default=CONFIG, help="a YAML path or config name with a li2: section")
    sp.add_argument("--out", required=True, help="run directory")
    sp.add_argument("--force", action="store_true", help="discard what --out holds and start over")
    sp.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    result = li2(args.out, config=args.config, overrides={f: getattr(args, k) for k, f in FLAGS.items()},
                 progress=not args.no_progress, force=args.force)
    for key in ("grok_step", "memorisation_step", "final_train_acc", "final_test_acc", "key_frequencies"):
        print(f"{key}: {result[key]}")
    print(f"lockin: {result['lockin']}")
    print(f"li2: {result['li2']}")
    print(f"run written to {args.out}", file=sys.stderr)
    return 0
