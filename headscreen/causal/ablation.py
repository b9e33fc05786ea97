"""Head ablations through `blocks.{L}.attn.hook_z`, many conditions per forward (docs/methods.md#causal-validation).

An ablation replaces hook_z[:, :, h] ([batch, pos, head, d_head]) of the chosen heads by

- `zero`: zeros (equivalently, the head's slice of the o_proj input);
- `mean`: the position-wise mean over a reference batch, hook_z[:, p, h].mean(batch) (the
  reference must have the probe's seq_len);
- `resample`: the same head's activation on a corrupted batch, aligned by example (row i takes
  corrupted row i).

Vectorised conditions: C head sets (e.g. 100 matched-random draws) are stacked along the batch
dimension, [set0 ex0..ex(n-1), set1 ex0.., ...], and each hook_z hook replaces, per row, the heads
of that row's set. This gives the same numbers as one forward per set (the test and
`benchmarks/bench_nulls.py` compare against `ablate_head_sets_loop`). The firing check runs per set:
every set must change hook_z at each of its layers, so a batched forward is as strict as single ones.
Blocks below the lowest ablated layer compute the same clean activations for every set: they run
once per example chunk, and the stacked forwards start from their output (`hooks.blocks_from`).
When every set lies in the last block, the stacked forwards run that block on the query rows only
(`_Prefix`): the sets differ only after its hook_z, where everything is position-wise.

Memory bound: one forward holds at most `max_rows` rows of [seq_len] tokens, i.e. about
max_rows * seq_len * (a few * d_model + n_heads * seq_len) floats of activations, plus
[max_rows, vocab] query logits (the full [rows, seq, vocab] logits are never materialised).
Query-row forwards (one position per row) take up to MAX_TOKENS rows, fewer when their
[rows, vocab] logits would pass PATTERN_BYTES.
By default max_rows = MAX_TOKENS // seq_len (8192 tokens per forward), fewer when one layer's
[rows, heads, seq, seq] attention pattern would pass PATTERN_BYTES: on a CPU the cost per row is
flat from ~4k to ~8k tokens per forward and grows beyond (2L d128 at seq 128: 3.1 ms/row at 64
rows, 5.4 ms/row at 512 rows, as the attention leaves the cache), and blocks above glibc's 32 MiB
mmap ceiling are page-faulted in afresh by every forward (see headscreen.compute.runtime).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int

from headscreen.causal.conditions import Head
from headscreen.causal.hooks import (
    Intervention,
    can_start_at_block,
    capture,
    replace_heads,
    run_with_interventions,
    z_name,
)
from headscreen.causal.metrics import METRICS, query_metrics
from headscreen.probes.batch import ProbeBatch

ABLATIONS = ("zero", "mean", "resample")
MAX_TOKENS = 8192  # default tokens per forward (rows * seq_len), see the module docstring
PATTERN_BYTES = 24 * 2**20  # default cap on one layer's [rows, heads, seq, seq] float32 attention pattern


def rows_per_forward(max_rows: int | None, seq_len: int, n_heads: int | None = None, vocab: int | None = None) -> int:
    """`max_rows`, or by default MAX_TOKENS // seq_len rows, fewer if one layer's attention pattern
    (or, given `vocab`, the [rows, vocab] query logits) would exceed PATTERN_BYTES (under glibc's
    32 MiB mmap ceiling, see headscreen.compute.runtime); >= 1."""
    if max_rows is not None:
        return int(max_rows)
    rows = MAX_TOKENS // seq_len
    if n_heads:
        rows = min(rows, PATTERN_BYTES // (4 * n_heads * seq_len * seq_len))
    if vocab:
        rows = min(rows, PATTERN_BYTES // (4 * vocab))
    return max(1, rows)


@dataclass(frozen=True)
class AblationConfig:
    """How to ablate: `kind` in ABLATIONS, `n_null` matched-random draws, `seed`, rows per forward."""

    kind: str = "zero"
    n_null: int = 100
    seed: int = 123
    max_rows: int | None = None  # rows (examples x conditions) per forward; None: MAX_TOKENS // seq_len

    def __post_init__(self):
        if self.kind not in ABLATIONS:
            raise ValueError(f"AblationConfig.kind={self.kind!r} is not one of {ABLATIONS}; pick one of them")
        if self.n_null < 1:
            raise ValueError(f"AblationConfig.n_null={self.n_null} must be >= 1; 100 or more for a p-value")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(
                f"AblationConfig.max_rows={self.max_rows} must be >= 1; it bounds rows (examples x conditions) "
                f"per forward, or None for {MAX_TOKENS} tokens per forward"
            )


@dataclass(frozen=True)
class ZSource:
    """What replaces hook_z: nothing stored for zero, else per layer [S, pos, head, d_head] (S = 1 or n)."""

    kind: str
    z: dict[int, Float[torch.Tensor, "src pos head d_head"]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scoring:
    """The prompts an ablation runs on and where it is scored."""

    tokens: Int[torch.Tensor, "n pos"]
    query_pos: Int[torch.Tensor, " n"]
    target: Int[torch.Tensor, " n"]

    @classmethod
    def of(cls, batch: ProbeBatch) -> Scoring:
        if batch.target_token is None:
            raise ValueError(
                f"probe {batch.name!r} has no target_token; ablation metrics need the token expected at query_pos"
            )
        return cls(batch.tokens, batch.query_pos.to(torch.long), batch.target_token.to(torch.long))

    @property
    def n(self) -> int:
        return self.tokens.shape[0]


@dataclass
class FiringLog:
    """Per hook over all forwards: the smallest and the largest per-condition max |delta|."""

    min_delta: dict[str, float] = field(default_factory=dict)
    max_delta: dict[str, float] = field(default_factory=dict)

    def add(self, hook_name: str, deltas: torch.Tensor) -> None:
        if deltas.numel() == 0:
            return
        lo, hi = float(deltas.min()), float(deltas.max())
        self.min_delta[hook_name] = min(lo, self.min_delta.get(hook_name, lo))
        self.max_delta[hook_name] = max(hi, self.max_delta.get(hook_name, hi))

    def to_json(self) -> dict:
        return {k: {"min_condition_max_abs_delta": self.min_delta[k], "max_abs_delta": self.max_delta[k]}
                for k in sorted(self.min_delta)}


def check_eval_raw(bridge) -> None:
    """Refuse a bridge in training mode or in compatibility mode (folded value biases change hook_z ablations)."""
    if any(m.training for m in bridge.modules()):
        raise ValueError("the bridge is in training mode (dropout would make ablations random); call bridge.eval()")
    if getattr(bridge, "compatibility_mode", False):
        raise ValueError(
            "the bridge is in compatibility mode: with folded value biases a hook_z ablation is not the o_proj "
            "slice ablation (docs/methods.md#checkpoints-and-loading); boot a fresh bridge and keep the raw mode"
        )


def _capture_chunks(bridge, tokens: torch.Tensor, names: list[str], stop: int | None, max_rows: int | None):
    """capture() in micro-batches of max_rows prompts, yielding {name: [rows, ...]} per chunk."""
    max_rows = rows_per_forward(max_rows, tokens.shape[1], bridge.cfg.n_heads)
    for i0 in range(0, tokens.shape[0], max_rows):
        yield capture(bridge, tokens[i0:i0 + max_rows], names, stop_at_layer=stop)


def ablation_source(
    bridge,
    batch: ProbeBatch,
    layers: Sequence[int],
    kind: str,
    *,
    reference: ProbeBatch | None = None,
    corrupted: ProbeBatch | None = None,
    max_rows: int | None = None,
) -> ZSource:
    """The replacement hook_z of `layers` for `kind` (`reference` defaults to `batch` for mean).

    The mean is accumulated in float64 over micro-batches and cast back, so a constant activation
    gives back exactly itself (and its ablation is reported as changing nothing).
    """
    if kind == "zero":
        return ZSource("zero")
    layers = sorted(set(layers))
    names = [z_name(layer) for layer in layers]
    stop = max(layers) + 1 if max(layers) + 1 < bridge.cfg.n_layers else None
    if kind == "mean":
        ref = batch if reference is None else reference
        if ref.seq_len != batch.seq_len:
            raise ValueError(
                f"mean-ablation reference {ref.name!r} has seq_len {ref.seq_len}, the probe {batch.seq_len}; "
                f"the position-wise mean needs the same length"
            )
        sums: dict[str, torch.Tensor] = {}
        dtype = None
        for acts in _capture_chunks(bridge, ref.tokens, names, stop, max_rows):
            for name, a in acts.items():
                dtype = a.dtype
                part = a.double().sum(0, keepdim=True)
                sums[name] = part if name not in sums else sums[name] + part
        return ZSource("mean", {layer: (sums[z_name(layer)] / ref.n).to(dtype) for layer in layers})
    if kind == "resample":
        if corrupted is None:
            raise ValueError(f"resample ablation of probe {batch.name!r} needs a corrupted batch (corrupted=...)")
        if corrupted.tokens.shape != batch.tokens.shape:
            raise ValueError(
                f"corrupted batch {tuple(corrupted.tokens.shape)} must match probe {batch.name!r} "
                f"{tuple(batch.tokens.shape)}: resampling is aligned by example"
            )
        chunks = list(_capture_chunks(bridge, corrupted.tokens, names, stop, max_rows))
        return ZSource("resample", {layer: torch.cat([c[z_name(layer)] for c in chunks]) for layer in layers})
    raise ValueError(f"ablation kind {kind!r} is not one of {ABLATIONS}")


def clean_metrics(bridge, scoring: Scoring, *, max_rows: int | None = None) -> dict[str, Float[torch.Tensor, " n"]]:
    """Per-example metrics of the unablated model (no intervention), in micro-batches of max_rows."""
    max_rows = rows_per_forward(max_rows, scoring.tokens.shape[1], bridge.cfg.n_heads)
    parts: list[dict[str, torch.Tensor]] = []
    for i0 in range(0, scoring.n, max_rows):
        sl = slice(i0, i0 + max_rows)
        with torch.no_grad():
            logits, _ = run_with_interventions(bridge, scoring.tokens[sl], [], query_pos=scoring.query_pos[sl])
        parts.append(query_metrics(logits, scoring.target[sl]))
    return {m: torch.cat([p[m] for p in parts]) for m in METRICS}


def _set_masks(head_sets: Sequence[Sequence[Head]], n_layers: int, n_heads: int) -> torch.Tensor:
    """[set, layer, head] bool: which heads each set ablates."""
    masks = torch.zeros(len(head_sets), n_layers, n_heads, dtype=torch.bool)
    for c, heads in enumerate(head_sets):
        for layer, h in heads:
            masks[c, layer, h] = True
    return masks


@dataclass(frozen=True)
class _Prefix:
    """Clean activations that every stacked set shares on one example chunk (no set ablates below `start`).

    `resid` [e, pos, d_model] enters block `start`; the stacked forwards start there (`blocks_from`).
    Query-row tail (`z` given): every set ablates heads of the last block only. That block's
    attention (pattern and values) is then clean for every set, and everything after its hook_z is
    position-wise (o_proj, residual, MLP or MoE, final norm, unembedding), so only the query rows
    matter: `resid` is the query row entering the block ([e, 1, d_model]) and `z` the clean hook_z
    at that row ([e, 1, head, d_head]). The block runs on one position per row, its own hook_z is
    discarded for `z` (`Intervention.baseline`), and the ablation and its firing check act on `z`.
    """

    start: int
    resid: torch.Tensor
    z: torch.Tensor | None = None


def _clean_prefix(bridge, scoring: Scoring, ex: slice, lowest: int) -> _Prefix:
    """The clean `_Prefix` of examples `ex` for sets whose lowest ablated layer is `lowest` (> 0)."""
    with torch.no_grad():
        resid = bridge(scoring.tokens[ex], stop_at_layer=lowest)  # [e, pos, d_model]
    if lowest < bridge.cfg.n_layers - 1:
        return _Prefix(lowest, resid)
    z = capture(bridge, resid, [z_name(lowest)], start_at_layer=lowest)[z_name(lowest)]  # [e, pos, H, D]
    rows, qpos = torch.arange(resid.shape[0]), scoring.query_pos[ex]
    return _Prefix(lowest, resid[rows, qpos].unsqueeze(1), z[rows, qpos].unsqueeze(1))


def _forward_sets(
    bridge, scoring: Scoring, ex: slice, masks: torch.Tensor, source: ZSource, names: Sequence[str],
    rtol: float | None, log: FiringLog, prefix: _Prefix | None = None, allow_unchanged: bool = False,
) -> dict[str, torch.Tensor]:
    """One forward: the sets of `masks` [c, L, H] on examples `ex`, stacked condition-major. -> metric [c, e].

    `prefix`: the clean activations below the lowest ablated block (`_Prefix`); None: whole forwards.
    `allow_unchanged`: a set whose edit changed nothing gets NaN metrics instead of raising.
    """
    c = masks.shape[0]
    e = scoring.tokens[ex].shape[0]
    groups = torch.arange(c).repeat_interleave(e)
    tail = prefix is not None and prefix.z is not None
    qpos = scoring.query_pos[ex]
    ivs = []
    for layer in masks.any(2).any(0).nonzero()[:, 0].tolist():
        row_mask = masks[:, layer].repeat_interleave(e, dim=0)  # [c*e, H]
        src = source.z.get(layer)
        if src is not None and src.shape[0] > 1:
            src = src[ex]
        baseline = None
        if tail:  # the source and the clean z at the query rows only: [e, 1, H, D]
            if src is not None:
                src = src.expand(e, *src.shape[1:])[torch.arange(e), qpos].unsqueeze(1)
            baseline = prefix.z.repeat(c, 1, 1, 1)
        ivs.append(Intervention(z_name(layer), replace_heads(row_mask, src), expect=masks[:, layer].any(1),
                                baseline=baseline))
    if prefix is None:
        start, inputs = None, scoring.tokens[ex].repeat(c, 1)
    else:
        start, inputs = prefix.start, prefix.resid.repeat(c, 1, 1)
    query = torch.zeros(c * e, dtype=torch.long) if tail else qpos.repeat(c)
    logits, report = run_with_interventions(
        bridge, inputs, ivs, groups=groups, group_names=list(names),
        query_pos=query, rtol=rtol, start_at_layer=start, allow_unchanged=allow_unchanged,
    )
    bad = torch.zeros(c, dtype=torch.bool)
    for flags in report.unchanged.values():
        bad |= flags.cpu()
    for iv in ivs:
        firing = report.firings[iv.hook_name]
        log.add(iv.hook_name, firing.group_delta[iv.expect & ~bad])
    metrics = query_metrics(logits, scoring.target[ex].repeat(c))
    out = {m: v.view(c, e) for m, v in metrics.items()}
    for v in out.values():
        v[bad] = float("nan")
    return out


def ablate_head_sets(
    bridge,
    scoring: Scoring,
    head_sets: Sequence[Sequence[Head]],
    source: ZSource,
    *,
    max_rows: int | None = None,
    names: Sequence[str] | None = None,
    rtol: float | None = None,
    log: FiringLog | None = None,
    dedupe: bool = True,
    skip_prefix: bool = True,
    allow_unchanged: bool = False,
) -> dict[str, Float[torch.Tensor, "set n"]]:
    """Per-example metrics with each head set ablated, many sets per forward. -> {metric: [set, n]}.

    Sets are packed condition-major into forwards of at most `max_rows` rows (examples are split
    too when n > max_rows). With `dedupe`, a head set that occurs several times is run once and
    its rows copied to every occurrence: the same computation, so the same numbers. With
    `skip_prefix`, the blocks below the lowest ablated layer L are run once per example chunk
    (clean) instead of once per set: the stacked forwards start at block L (`blocks_from`). When L
    is the last block, the stacked forwards run it on the query rows only (`_Prefix`). Every set
    must contain at least one head; `names` label the sets in firing errors. With `allow_unchanged`,
    a set whose edit changes nothing (a dead head, a source equal to the run) gets NaN metrics
    instead of raising `InterventionDidNotFire` (scans such as head patching).
    """
    if not head_sets or any(len(s) == 0 for s in head_sets):
        raise ValueError("every head set must ablate at least one head (the clean run is clean_metrics)")
    if source.kind != "zero":
        missing = {layer for s in head_sets for layer, _ in s} - set(source.z)
        if missing:
            raise ValueError(f"the {source.kind} source lacks hook_z of layers {sorted(missing)}; build it with those layers")
    names = list(names) if names is not None else [f"head set {i} {list(s)}" for i, s in enumerate(head_sets)]
    keys = [tuple(sorted({(int(layer), int(h)) for layer, h in s})) for s in head_sets]
    if dedupe:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        unique = sorted(first.values())
    else:
        unique = list(range(len(keys)))
    where = {k: j for j, i in enumerate(unique) for k in [keys[i]]}
    cfg = bridge.cfg
    masks = _set_masks([keys[i] for i in unique], cfg.n_layers, cfg.n_heads)
    u_names = [names[i] for i in unique]
    log = FiringLog() if log is None else log
    rows = rows_per_forward(max_rows, scoring.tokens.shape[1], bridge.cfg.n_heads)  # full-length rows
    e_size = min(scoring.n, rows)
    out = {m: torch.empty(len(unique), scoring.n) for m in METRICS}
    lowest = int(masks.any(2).any(0).nonzero()[0, 0])  # the lowest layer any set ablates
    shared = skip_prefix and lowest > 0 and can_start_at_block(bridge)
    tail = None
    if shared and lowest == cfg.n_layers - 1:  # query rows of every example, from full-length chunks
        parts = [_clean_prefix(bridge, scoring, slice(i, i + e_size), lowest) for i in range(0, scoring.n, e_size)]
        tail = _Prefix(lowest, torch.cat([p.resid for p in parts]), torch.cat([p.z for p in parts]))
        rows = rows_per_forward(max_rows, 1, cfg.n_heads, cfg.d_vocab)  # the stacked rows are one position long
        e_size = min(scoring.n, rows)
    c_size = max(1, rows // e_size)
    for i0 in range(0, scoring.n, e_size):
        ex = slice(i0, min(i0 + e_size, scoring.n))
        if tail is not None:
            prefix = _Prefix(lowest, tail.resid[ex], tail.z[ex])
        else:
            prefix = _clean_prefix(bridge, scoring, ex, lowest) if shared else None
        for c0 in range(0, len(unique), c_size):
            cs = slice(c0, min(c0 + c_size, len(unique)))
            part = _forward_sets(bridge, scoring, ex, masks[cs], source, u_names[cs], rtol, log, prefix,
                                 allow_unchanged)
            for m in METRICS:
                out[m][cs, ex] = part[m]
    if not dedupe:
        return out
    index = torch.tensor([where[k] for k in keys])
    return {m: v[index] for m, v in out.items()}


def ablate_head_sets_loop(
    bridge, scoring: Scoring, head_sets: Sequence[Sequence[Head]], source: ZSource, *, rtol: float | None = None
) -> dict[str, Float[torch.Tensor, "set n"]]:
    """Reference implementation: one plain, whole forward per head set. Same output as ablate_head_sets."""
    per_set = []
    for heads in head_sets:
        per_set.append(ablate_head_sets(bridge, scoring, [heads], source, max_rows=scoring.n, rtol=rtol,
                                        dedupe=False, skip_prefix=False))
    return {m: torch.cat([p[m] for p in per_set]) for m in METRICS}
