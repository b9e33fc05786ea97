"""`headscreen attention` and the screen's last step: attention patterns of the circuit and BOS heads into
attention.safetensors.

Emergence is known only once the whole series is summarised, so this runs after the tables: it reads
circuits.json, boots the last screened checkpoint and each emergence checkpoint of those heads (the
series' own `boot`, with its checks), rebuilds the run's probe batches (`ProbeSuite.build`, as the screen
does) and stores the full patterns of those heads on the first `rows` rows of every probe
(headscreen/probes/attention.py). The report and the notebook view read the file; no model is needed.

`headscreen attention RUN` does the same for a run screened before the file existed (or to change the
number of rows), from the run's manifest (its series and probe settings), without touching its tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from headscreen.probes.attention import head_patterns, token_strings, which_heads
from headscreen.probes.suite import ProbeSuite
from headscreen.rundir.attention_file import FILE, AttentionIndex, pattern_key, write_attention
from headscreen.rundir.store import RunStore, SeriesChanged
from pipelines.common import add_device_argument, positive_int

DEFAULT_ROWS = 3  # rows of each probe shown per head


def record_attention(store: RunStore, series, probes: ProbeSuite, *, device: str = "cpu", rows: int = DEFAULT_ROWS,
                     progress: bool = True, check=None) -> Path | None:
    """Write `store`'s attention.safetensors for its current circuits.json; returns its path (None, and
    the old file removed, when the run has no circuits.json). `probes`: the screen's probe settings (as
    fitted to the model). `check(ckpt)`, if given, runs before each checkpoint is booted."""
    if rows < 1:
        raise ValueError(f"rows={rows} must be >= 1 (rows of each probe to store)")
    circuits = store.read_json("circuits")
    store.remove_outputs((FILE,))  # an older file describes older tables
    if circuits is None:
        return None
    plan = which_heads(circuits)
    tables_id = ((store.manifest() or {}).get("tables") or {}).get("id")
    index = AttentionIndex(tables_id=tables_id, rows=rows, probes={})
    tokens: dict[str, torch.Tensor] = {}
    patterns: dict[str, torch.Tensor] = {}
    for step, heads in plan.items():
        if progress:
            print(f"attention: {len(heads)} head(s) at step {step}", file=sys.stderr)
        ckpt = series.checkpoint(step)
        if check is not None:
            check(ckpt)
        bridge = series.boot(ckpt, device=device)
        batches = probes.build(n_ctx=bridge.cfg.n_ctx, d_vocab=bridge.cfg.d_vocab,
                                        tokenizer=getattr(bridge, "tokenizer", None))
        for probe, batch in batches.items():
            if probe not in tokens:
                tokens[probe] = batch.tokens[:rows].clone()
                index.probes[probe] = _probe_entry(batch, rows, getattr(bridge, "tokenizer", None))
            with torch.no_grad():
                found = head_patterns(bridge, batch, list(heads), rows=rows, micro_batch=probes.micro_batch)
            for head, pat in found.items():
                key = pattern_key(probe, step, head)
                patterns[key] = pat
                index.entries.append({"probe": probe, "step": int(step), "layer": head[0], "head": head[1],
                                      "key": key, "why": heads[head]})
        del bridge
    return write_attention(store.root / FILE, index, tokens, patterns)


def _probe_entry(batch, rows: int, tokenizer) -> dict:
    def cut(t):
        return None if t is None else [int(v) for v in t[:rows]]

    return {"seq_len": int(batch.seq_len), "has_bos": bool(batch.has_bos), "query_pos": cut(batch.query_pos),
            "a_pos": cut(batch.a_pos), "text": [token_strings(tokenizer, row.tolist()) for row in batch.tokens[:rows]]}


def probes_of_manifest(manifest: dict) -> ProbeSuite:
    """The run's probe settings as the screen used them (the "auto" fields fitted to the model)."""
    recorded = (manifest.get("config") or {}).get("probes") or {}
    return ProbeSuite(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})


def attention(run_dir: str | Path, *, device: str | None = "cpu", rows: int = DEFAULT_ROWS, trust_remote_code: bool = False,
              progress: bool = True) -> Path | None:
    """(Re)write attention.safetensors of a screened run from its manifest and circuits.json, under the
    run's lock; refuses stale tables and a checkpoint changed since the screen (as validate does)."""
    from headscreen.compute.device import plan_device
    from headscreen.rundir.binding import checkpoint_refusal
    from headscreen.series.identity import checkpoint_identity
    from pipelines.validate import _series_of

    plan = plan_device(device, mixed_precision=False)
    with RunStore.locked(run_dir, "attention", kind="screen", command="`headscreen attention`") as store:
        store.check_tables_current("storing attention patterns")
        manifest = store.manifest()
        probes = probes_of_manifest(manifest)
        series = _series_of(manifest, trust_remote_code=trust_remote_code)

        def check(ckpt):
            refusal = checkpoint_refusal(store.root, manifest, checkpoint_identity(series, ckpt))
            if refusal:
                raise SeriesChanged(refusal)

        return record_attention(store, series, probes, device=plan.device, rows=rows, progress=progress, check=check)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `headscreen screen`")
    p.add_argument("--rows", type=positive_int, default=DEFAULT_ROWS, help="rows of each probe to store (default 3)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with the checkpoints (the manifest cannot grant it)")
    add_device_argument(p, what="the forward passes")


def main(args: argparse.Namespace) -> int:
    path = attention(args.run, device=args.device, rows=args.rows, trust_remote_code=args.trust_remote_code)
    print(f"attention patterns written to {path}" if path else f"{args.run} has no circuits.json: nothing stored")
    return 0
