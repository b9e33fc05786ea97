"""Full attention patterns of chosen heads on the first rows of each probe batch (for the report's viewer).

The screen's forward pass (`forward.run_probe`) keeps only the query rows it scores; the viewer needs the
whole query × key pattern of a few heads on a few rows. `head_patterns` runs those rows through the same
`run_probe` (one batched forward per probe, only the layers needed, stopping after the last of them) with a
reducer that keeps the full pattern, then picks the requested heads.

`which_heads` reads circuits.json: the heads that are in the induction circuit, the previous-token circuit
or the BOS class at the last screened checkpoint (on any probe), and the checkpoints at which to show them
(the last one, and each head's emergence step for each class it holds there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float

from headscreen.heads import Head, head_label
from headscreen.probes.batch import ProbeBatch
from headscreen.probes.forward import run_probe

#: circuits.json's per-step circuit key -> the emergence class that circuit is read from
CIRCUIT_CLASSES = {"induction": "induction", "previous": "previous", "bos": "bos"}


def first_rows(batch: ProbeBatch, rows: int) -> ProbeBatch:
    """The first `rows` rows of `batch` (every per-row field cut alike)."""
    cut = {f: getattr(batch, f)[:rows] for f in ("tokens", "query_pos", "target_token", "a_pos")
           if getattr(batch, f) is not None}
    return dataclasses.replace(batch, **cut)


def head_patterns(bridge, batch: ProbeBatch, heads: Sequence[Head], *, rows: int,
                  micro_batch: int = 16) -> dict[Head, Float[torch.Tensor, "row query key"]]:
    """{(layer, head): pattern [row, query, key] float32} of `heads` on the first `rows` rows of `batch`."""
    heads = sorted({(int(layer), int(h)) for layer, h in heads})
    if not heads:
        return {}
    n_heads = int(bridge.cfg.n_heads)
    bad = [h for h in heads if not (0 <= h[0] < int(bridge.cfg.n_layers) and 0 <= h[1] < n_heads)]
    if bad:
        raise ValueError(f"heads {[head_label(h) for h in bad]} are not in this model "
                         f"({bridge.cfg.n_layers} layers x {n_heads} heads)")
    layers = sorted({layer for layer, _ in heads})
    fwd = run_probe(bridge, first_rows(batch, rows), micro_batch=micro_batch, layers=layers, want_z=False,
                    reducers={"pattern": lambda pat, toks, q: pat})  # [b, head, q, k] per layer
    full = fwd.reduced["pattern"]  # [row, layer (of `layers`), head, query, key]
    return {(layer, h): full[:, layers.index(layer), h].contiguous() for layer, h in heads}


def which_heads(circuits: Mapping) -> dict[int, dict[Head, list[str]]]:
    """{step: {head: [why, ...]}} from circuits.json: at the last screened step every head of the
    induction / previous-token circuit or BOS class on any probe; at each of those heads' emergence
    steps (for that class and probe), the head again. Empty when nothing was screened or found."""
    steps = sorted(int(s) for s in (circuits.get("steps") or {}))
    if not steps:
        return {}
    last = steps[-1]
    plan: dict[int, dict[Head, list[str]]] = {}

    def add(step: int, head: Head, why: str) -> None:
        reasons = plan.setdefault(step, {}).setdefault(head, [])
        if why not in reasons:
            reasons.append(why)

    chosen: set[tuple[str, str, Head]] = set()
    for probe, found in sorted((circuits["steps"][str(last)] or {}).items()):
        for key, cls in CIRCUIT_CLASSES.items():
            for layer, h in found.get(key) or []:
                head = (int(layer), int(h))
                chosen.add((probe, cls, head))
                add(last, head, f"{key} ({probe}) at the last checkpoint")
    for rec in circuits.get("emergence") or []:
        head = (int(rec["layer"]), int(rec["head"]))
        step = rec.get("emergence_step")
        if (rec["probe"], rec["class"], head) in chosen and step is not None and step == step:  # NaN: none
            add(int(step), head, f"{rec['class']} ({rec['probe']}) emerged")
    return dict(sorted(plan.items()))


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each id as the text it decodes to (the id itself, as text, without a tokenizer)."""
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    cache: dict[int, str] = {}
    out = []
    for i in ids:
        i = int(i)
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        out.append(cache[i])
    return out
