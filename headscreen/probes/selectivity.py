"""Attention selectivity and head scores: pure functions on attention-pattern tensors (docs/methods.md#selectivity-screen).

Shapes: `rows` are query rows A(q_i, :) of shape [batch, *heads, key] (e.g. [b, layer, head, T]);
full patterns are [batch, *heads, query, key]. Outputs drop the batch dimension: [*heads].

FP selectivity: sel_c = E_i[A(q_i, target_c,i)] / base, with q = T-1 and
base = mean of A(q, p) over examples and over 50 fixed null positions p in [1, T-6) drawn with
numpy RandomState(0) (so {0, T-6..T-1} are excluded). Class targets:

| class     | key position(s)          |
|-----------|--------------------------|
| induction | a_pos + 1                |
| duplicate | a_pos                    |
| previous  | q - 1 (= T-2)            |
| self      | q (= T-1)                |
| first     | 0 (BOS when has_bos)     |
| local     | mean of q-5 .. q-2 (T-6..T-3) |
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int

CLASSES: tuple[str, ...] = ("induction", "duplicate", "previous", "self", "first", "local")
LOCAL_OFFSETS: tuple[int, ...] = (5, 4, 3, 2)  # local = keys q-5 .. q-2
_TAIL = 6  # null positions exclude T-6 .. T-1


def null_positions(seq_len: int, n: int = 50, seed: int = 0) -> np.ndarray:
    """The fixed base positions: `n` distinct ids in [1, T-6), drawn with np.random.RandomState(seed)."""
    candidates = np.arange(1, seq_len - _TAIL)
    if candidates.size == 0:
        raise ValueError(f"seq_len={seq_len} leaves no null positions in [1, T-6); use seq_len >= 8")
    rs = np.random.RandomState(seed)
    return np.sort(rs.choice(candidates, size=min(n, candidates.size), replace=False))


def _flat(rows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """[b, *heads, T] -> ([b, n_heads_flat, T], heads_shape)."""
    b, T = rows.shape[0], rows.shape[-1]
    return rows.reshape(b, -1, T).double(), tuple(rows.shape[1:-1])


def _check_layout(rows: torch.Tensor, query_pos: torch.Tensor, a_pos: torch.Tensor | None) -> int:
    T = rows.shape[-1]
    if not bool((query_pos == T - 1).all()):
        raise ValueError(
            f"selectivity needs the query at T-1 = {T - 1} for every example (docs/methods.md#selectivity-screen); "
            f"got query positions {sorted(set(query_pos.tolist()))[:5]}: build probes with query_pos = T-1"
        )
    if a_pos is not None and not bool(((a_pos >= 0) & (a_pos + 1 <= T - 7)).all()):
        raise ValueError(
            f"selectivity needs 0 <= a_pos and a_pos+1 <= T-7 = {T - 7} so that the induction target stays "
            f"clear of the local window; got a_pos in [{int(a_pos.min())}, {int(a_pos.max())}]"
        )
    return T


def _gather(rows_flat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """rows_flat [b, h, T], pos [b] -> A(q_i, pos_i) [b, h]."""
    idx = pos.long().view(-1, 1, 1).expand(-1, rows_flat.shape[1], 1)
    return rows_flat.gather(-1, idx).squeeze(-1)


def class_attention(
    rows: Float[torch.Tensor, "b *heads T"],
    query_pos: Int[torch.Tensor, " b"],
    a_pos: Int[torch.Tensor, " b"],
) -> dict[str, Float[torch.Tensor, " b *heads"]]:
    """Per-example attention from the query to each class target."""
    _check_layout(rows, query_pos, a_pos)
    flat, hs = _flat(rows)
    b = flat.shape[0]
    q = query_pos.long()
    out = {
        "induction": _gather(flat, a_pos + 1),
        "duplicate": _gather(flat, a_pos),
        "previous": _gather(flat, q - 1),
        "self": _gather(flat, q),
        "first": flat[:, :, 0],
        "local": torch.stack([_gather(flat, q - k) for k in LOCAL_OFFSETS]).mean(0),
    }
    return {k: v.reshape(b, *hs) for k, v in out.items()}


def baseline(rows: Float[torch.Tensor, "b *heads T"], positions: np.ndarray) -> Float[torch.Tensor, "*heads"]:
    """base = mean over examples and over the fixed null positions of A(q, p)."""
    flat, hs = _flat(rows)
    return flat[:, :, torch.as_tensor(positions, dtype=torch.long)].mean(dim=(0, 2)).reshape(hs)


def selectivity(
    rows: Float[torch.Tensor, "b *heads T"],
    query_pos: Int[torch.Tensor, " b"],
    a_pos: Int[torch.Tensor, " b"],
    *,
    n_null_positions: int = 50,
    null_seed: int = 0,
) -> dict[str, Float[torch.Tensor, "*heads"]]:
    """sel_c = E_i[A(q, target_c)] / base for every class in CLASSES (docs/methods.md#selectivity-screen, FP's definition)."""
    T = _check_layout(rows, query_pos, a_pos)
    base = baseline(rows, null_positions(T, n_null_positions, null_seed))
    att = class_attention(rows, query_pos, a_pos)
    return {c: att[c].mean(0) / base for c in CLASSES}


def _random_positions(
    allowed: torch.Tensor, n_draws: int, k: int, gen: torch.Generator
) -> Int[torch.Tensor, "draws k b"]:
    """Uniform draws among each row's allowed key positions (allowed: bool [b, T])."""
    counts = allowed.sum(1)  # [b]
    if bool((counts == 0).any()):
        raise ValueError(
            "a probe row has no non-special key position to draw null targets from; use a longer seq_len"
        )
    u = torch.rand(n_draws, k, allowed.shape[0], generator=gen, dtype=torch.float64)
    r = (u * counts).floor().long().clamp(max=counts - 1)  # rank among allowed positions
    csum = allowed.long().cumsum(1)  # [b, T]
    # position = first index where cumsum exceeds r
    return (csum[None, None] <= r[..., None]).sum(-1)


def null_selectivity(
    rows: Float[torch.Tensor, "b *heads T"],
    query_pos: Int[torch.Tensor, " b"],
    a_pos: Int[torch.Tensor, " b"],
    *,
    n_draws: int = 20,
    seed: int = 1,
    n_null_positions: int = 50,
    null_seed: int = 0,
    window: tuple[int, int] | None = None,
) -> dict[str, Float[torch.Tensor, " draws *heads"]]:
    """Selectivity of random non-special targets, `n_draws` draws, matched to each class's shape.

    Each draw picks, per example, a key position uniformly among the non-special positions: in
    [1, T-6) (or in `window` = [lo, hi) when given, e.g. the range the class targets are drawn from)
    and not a_pos, a_pos+1. Single-position classes get one such position; "local" (a mean of four
    keys) gets the mean of four. Returns the null selectivities per class, [draws, *heads].
    """
    T = _check_layout(rows, query_pos, a_pos)
    base = baseline(rows, null_positions(T, n_null_positions, null_seed))
    flat, hs = _flat(rows)
    b = flat.shape[0]
    lo, hi = (1, T - _TAIL) if window is None else (max(1, int(window[0])), min(T - _TAIL, int(window[1])))
    pos = torch.arange(T)
    allowed = ((pos >= lo) & (pos < hi))[None].expand(b, T).clone()
    ar = torch.arange(b)
    allowed[ar, a_pos.long()] = False
    allowed[ar, a_pos.long() + 1] = False
    gen = torch.Generator().manual_seed(int(seed))
    single = _random_positions(allowed, n_draws, 1, gen)[:, 0]  # [draws, b]
    quad = _random_positions(allowed, n_draws, len(LOCAL_OFFSETS), gen)  # [draws, 4, b]
    one = torch.stack([_gather(flat, single[d]).mean(0) for d in range(n_draws)])  # [draws, h]
    four = torch.stack(
        [
            torch.stack([_gather(flat, quad[d, j]) for j in range(quad.shape[1])]).mean(0).mean(0)
            for d in range(n_draws)
        ]
    )
    one = (one / base.reshape(1, -1)).reshape(n_draws, *hs)
    four = (four / base.reshape(1, -1)).reshape(n_draws, *hs)
    return {c: (four if c == "local" else one) for c in CLASSES}


def null_z(
    sel: dict[str, torch.Tensor], null: dict[str, torch.Tensor]
) -> dict[str, Float[torch.Tensor, "*heads"]]:
    """Per-head z-score of each class's selectivity against its null draws (sample sd, ddof=1)."""
    out = {}
    for c, s in sel.items():
        mu = null[c].mean(0)
        sd = null[c].std(0, unbiased=True)
        out[c] = (s - mu) / sd
    return out


# --------------------------------------------------------------------------------------------------
# Full-pattern reducers: pattern [b, *heads, q, k] -> per-example scores [b, *heads]


def sink_alpha(pattern: Float[torch.Tensor, "b *heads q k"]) -> Float[torch.Tensor, " b *heads"]:
    """Gu's α₁ per example: mean over all queries i of A(i, 0)."""
    return pattern[..., :, 0].mean(-1)


def sink_rate(alpha1: Float[torch.Tensor, " b *heads"], eps: float = 0.3) -> Float[torch.Tensor, "*heads"]:
    """Per head, the share of examples with α₁ > eps (Gu's Sink^ε restricted to one head)."""
    return (alpha1 > eps).double().mean(0)


def prefix_matching(
    pattern: Float[torch.Tensor, "b *heads q k"], span: int, first_start: int
) -> Float[torch.Tensor, " b *heads"]:
    """Olsson prefix matching on [BOS?, r_1..r_n, r_1..r_n]: mean over q in [s2, s2+n) of A(q, q-n+1)."""
    s2 = first_start + span
    q = torch.arange(s2, s2 + span)
    return pattern[..., q, q - span + 1].mean(-1)


def offset_attention(
    pattern: Float[torch.Tensor, "b *heads q k"], span: int, first_start: int, max_offset: int | None = None
) -> Float[torch.Tensor, "b *heads offset"]:
    """Attention mass per offset k = q - key, averaged over the second-copy queries q in [s2, s2+n).

    Offsets 0..max_offset (default `span`): offset n is the duplicate, n-1 the induction target.
    """
    s2 = first_start + span
    max_offset = span if max_offset is None else max_offset
    if max_offset > s2:
        raise ValueError(f"max_offset={max_offset} reaches before position 0 for the first query {s2}")
    q = torch.arange(s2, s2 + span)
    ks = torch.arange(max_offset + 1)
    return pattern[..., q[None, :], q[None, :] - ks[:, None]].mean(-1)  # [..., offset]


def detection_patterns(
    tokens: Int[torch.Tensor, "b T"],
) -> dict[str, Float[torch.Tensor, "b T T"]]:
    """TransformerLens head_detector patterns, batched: previous, duplicate and induction [q, k]."""
    b, T = tokens.shape
    tril = torch.tril(torch.ones(T, T, dtype=torch.bool))
    eye = torch.eye(T, dtype=torch.bool)
    prev = torch.zeros(T, T, dtype=torch.bool)
    prev[1:, :-1] = torch.eye(T - 1, dtype=torch.bool)
    dup = (tokens[:, :, None] == tokens[:, None, :]) & tril & ~eye  # [b, q, k]: same token, k < q
    ind = torch.zeros_like(dup)
    ind[:, :, 1:] = dup[:, :, :-1]  # shift one key right: tokens[k-1] == tokens[q]
    ind &= tril
    return {
        "previous": prev[None].expand(b, T, T).float(),
        "duplicate": dup.float(),
        "induction": ind.float(),
    }


def detect_scores(
    pattern: Float[torch.Tensor, "b *heads T T"],
    detections: dict[str, Float[torch.Tensor, "b T T"]],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> dict[str, Float[torch.Tensor, " b *heads"]]:
    """detect_head's "mul" score per example for each detection pattern: Σ(A ⊙ P) / ΣA.

    One pass over the attention: [b, heads, T·T] @ [b, T·T, k + 1], the last column all ones
    (ΣA). fp32 products and sums: |error| < 1e-6 against TransformerLens (tests/test_probes.py).
    """
    a = pattern.float()
    b, T = a.shape[0], a.shape[-1]
    hs = a.shape[1:-2]
    if exclude_bos or exclude_current_token:
        keep = torch.ones(T, T, dtype=a.dtype, device=a.device)
        if exclude_bos:
            keep[:, 0] = 0
        if exclude_current_token:
            keep.fill_diagonal_(0)
        a = a * keep
    flat = a.reshape(b, -1, T * T)  # [b, h, T*T]
    cols = [d.to(a.dtype).reshape(b, T * T) for d in detections.values()]
    cols.append(torch.ones(b, T * T, dtype=a.dtype, device=a.device))
    out = torch.bmm(flat, torch.stack(cols, -1))  # [b, h, k + 1]
    den = out[..., -1].double()
    return {name: (out[..., i].double() / den).reshape(b, *hs) for i, name in enumerate(detections)}


def detect_score(
    pattern: Float[torch.Tensor, "b *heads T T"],
    detection: Float[torch.Tensor, "b T T"],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Float[torch.Tensor, " b *heads"]:
    """detect_head's "mul" score per example for one detection pattern (`detect_scores`)."""
    return detect_scores(pattern, {"score": detection}, exclude_bos=exclude_bos,
                         exclude_current_token=exclude_current_token)["score"]
