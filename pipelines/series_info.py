"""`headscreen series`: list a checkpoint series and its attention geometry."""

from __future__ import annotations

import argparse

from pipelines.common import resolve_series


def series_info(spec: str, *, allow_pickle: bool = False) -> dict:
    """A description of the series `spec` (folder or config): checkpoints and, for local series, geometry."""
    series, cfg = resolve_series(spec, allow_pickle=allow_pickle)
    info = series.describe()
    info["checkpoints"] = [{"step": c.step, "tokens": c.tokens, "name": c.name, **c.meta} for c in series]
    if series.source_kind == "local":
        g = series.geometry()
        info["geometry"] = g.__dict__
        info["tokenizer_dir"] = str(series.tokenizer_dir()) if series.tokenizer_dir() else None
    return info


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("series", help="a folder of checkpoints, or a model config (name in model_configs/ or YAML path)")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt checkpoints (weights_only=True)")


def main(args: argparse.Namespace) -> int:
    info = series_info(args.series, allow_pickle=args.allow_pickle)
    print(f"{info['name']} ({info['source']}): {info['n_checkpoints']} checkpoints")
    if "geometry" in info:
        g = info["geometry"]
        print(f"  {g['architecture']}: {g['n_layers']} layers x {g['n_heads']} heads "
              f"({g['n_kv_heads']} K/V), d_model {g['d_model']}, d_head {g['d_head']}")
        print(f"  tokenizer: {info['tokenizer_dir'] or 'none (token-id probes only)'}")
    rows = info["checkpoints"]
    shown = rows if len(rows) <= 12 else rows[:6] + [None] + rows[-5:]
    for r in shown:
        print("  ..." if r is None else f"  step {r['step']:>9}  tokens {r['tokens'] if r['tokens'] is not None else '?':>14}  {r['name']}")
    return 0
