"""`headscreen series`: list a checkpoint series, check every checkpoint, and report its attention geometry.

For a hub series nothing is downloaded: the listing says whether the hub answers and how many revisions
the local cache already holds, and exits with code 2 when neither source can serve a screen.

Every checkpoint of a local series passes the same checks as before a screen (config.json, weight
headers, claimed shapes against config.json; headscreen.series.checks) and, unless `quick`, its
attention tensors are read and checked for NaN/Inf (one checkpoint in memory at a time). Checkpoints are grouped by
geometry: a series whose checkpoints do not share one geometry is flagged, with each group's steps.
A series with a bad checkpoint or more than one geometry exits with code 2 after the listing.
"""

from __future__ import annotations

import argparse
import sys

from headscreen.series import SeriesError, read_head_weights
from headscreen.series.hub import HubSeries
from pipelines.common import resolve_series


def series_info(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False, quick: bool = False) -> dict:
    """A description of the series `spec` (folder or config): checkpoints and, for local series, the
    geometry groups (`geometries`: one entry per distinct geometry with its steps) and `problems`
    (one line per bad checkpoint, and one when the geometry is not the same throughout)."""
    series, cfg = resolve_series(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                 command="`headscreen series`", trajectories=True)
    info = series.describe()
    info["checkpoints"] = [{"step": c.step, "tokens": c.tokens, "name": c.name, **c.meta} for c in series]
    info["problems"] = []
    if series.source_kind == "hub":
        info["hub_revisions"] = series.hub_reconcile if isinstance(series, HubSeries) else None
        avail = series.availability()
        info["availability"] = avail
        if avail["hub"] is not None and not avail["cached"]:
            info["problems"].append(
                f"{series.repo}: the hub cannot be used ({avail['hub']}) and the cache ({avail['cache']}) holds none "
                f"of the {len(series)} revisions: a screen would stop at the first one. Reach the hub (network, "
                "HF_ENDPOINT, unset HF_HUB_OFFLINE) or point the config's source.local_path at a local copy")
    if series.source_kind != "local":
        return info
    groups: dict[tuple, list[int]] = {}
    for ckpt in series:
        try:
            g = series.check(ckpt)
            if not quick:
                src = series.tensor_source(ckpt)
                try:
                    read_head_weights(src, g, dtype=None)
                finally:
                    src.close()
        except SeriesError as e:
            info["problems"].append(str(e))
            continue
        groups.setdefault(tuple(sorted(g.__dict__.items())), []).append(ckpt.step)
    info["geometries"] = [{**dict(key), "steps": steps} for key, steps in
                          sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    if info["geometries"]:
        info["geometry"] = {k: v for k, v in info["geometries"][0].items() if k != "steps"}  # the most common
    if len(groups) > 1:
        odd = [s for g in info["geometries"][1:] for s in g["steps"]]
        info["problems"].append(
            f"series {series.name!r}: checkpoints differ in geometry ({len(groups)} groups); steps {odd} differ "
            f"from the {len(info['geometries'][0]['steps'])} others — a screen needs one geometry: split the series")
    info["tokenizer_dir"] = str(series.tokenizer_dir()) if series.tokenizer_dir() else None
    return info


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("series", help="a folder of checkpoints, or a model config (name in model_configs/ or YAML path)")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin/.pt checkpoints (weights_only=True)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="accept a config whose source asks for remote code (listing never runs it)")
    p.add_argument("--quick", action="store_true", help="check headers and shapes only; do not read attention tensors")


def _geometry_line(g: dict) -> str:
    return (f"{g['architecture']}: {g['n_layers']} layers x {g['n_heads']} heads ({g['n_kv_heads']} K/V), "
            f"d_model {g['d_model']}, d_head {g['d_head']}")


def main(args: argparse.Namespace) -> int:
    info = series_info(args.series, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                       quick=args.quick)
    print(f"{info['name']} ({info['source']}): {info['n_checkpoints']} checkpoints")
    geometries = info.get("geometries") or []
    for g in geometries:
        steps = g["steps"]
        which = "" if len(geometries) == 1 else f"  [steps {steps if len(steps) <= 8 else steps[:4] + ['...']}]"
        print(f"  {_geometry_line(g)}{which}")
    if "availability" in info:
        a = info["availability"]
        hub = f"reachable at {a['endpoint']}" if a["hub"] is None else f"not usable ({a['hub']})"
        print(f"  hub: {hub}; cached: {len(a['cached'])} of {info['n_checkpoints']} revisions (config.json) in {a['cache']}")
    rec = info.get("hub_revisions")
    if rec and "error" not in rec:
        from headscreen.series.hub_refs import describe

        for line in describe(rec):
            print(f"  {line}")
    elif rec:
        print(f"  hub branches: not listed ({rec['error']})")
    if "tokenizer_dir" in info:
        print(f"  tokenizer: {info['tokenizer_dir'] or 'none (token-id probes only)'}")
    rows = info["checkpoints"]
    shown = rows if len(rows) <= 12 else rows[:6] + [None] + rows[-5:]
    for r in shown:
        print("  ..." if r is None else f"  step {r['step']:>9}  tokens {r['tokens'] if r['tokens'] is not None else '?':>14}  {r['name']}")
    for line in info["problems"]:
        print(f"headscreen series: error: {' '.join(line.split())}", file=sys.stderr)
    return 2 if info["problems"] else 0
