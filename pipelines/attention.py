"""The screen's last step: attention patterns of the circuit and BOS heads into attention.safetensors.

Emergence is known only once the whole series is summarised, so this runs after the tables: it reads
circuits.json, boots the last screened checkpoint and each emergence checkpoint of those heads (the
series' own `boot`, with its checks), rebuilds the run's probe batches (`ProbeSuite.build`, as the screen
does) and stores the full patterns of those heads on the first `rows` rows of every probe
(headscreen/probes/attention.py). The report and the notebook view read the file; no model is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from headscreen.attention_file import FILE, AttentionIndex, pattern_key, write_attention
from headscreen.probes.attention import head_patterns, token_strings, which_heads
from headscreen.store import RunStore

DEFAULT_ROWS = 3  # rows of each probe shown per head


def record_attention(store: RunStore, series, settings, *, device: str = "cpu", rows: int = DEFAULT_ROWS,
                     progress: bool = True) -> Path | None:
    """Write `store`'s attention.safetensors for its current circuits.json; returns its path (None, and
    the old file removed, when the run has no circuits.json). `settings`: the screen's ScreenSettings
    (its probes and micro-batch)."""
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
            print(f"screen: attention of {len(heads)} head(s) at step {step}", file=sys.stderr)
        bridge = series.boot(series.checkpoint(step), device=device)
        batches = settings.probes.build(n_ctx=bridge.cfg.n_ctx, d_vocab=bridge.cfg.d_vocab,
                                        tokenizer=getattr(bridge, "tokenizer", None))
        for probe, batch in batches.items():
            if probe not in tokens:
                tokens[probe] = batch.tokens[:rows].clone()
                index.probes[probe] = _probe_entry(batch, rows, getattr(bridge, "tokenizer", None))
            with torch.no_grad():
                found = head_patterns(bridge, batch, list(heads), rows=rows, micro_batch=settings.probes.micro_batch)
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
