"""Seeded, deterministic probe-prompt generators returning `ProbeBatch` (docs/methods.md#probe-prompts).

Every generator works on token ids only and never adds an implicit BOS: pass `bos_id` to put a BOS
token at position 0 (then `has_bos=True` and the whole layout shifts right by one).

- `retrieval_probe`: filler, [A, B] at a random index, filler, A at T-1 (the FP key-retrieval layout).
- `corrupt_retrieval`: the same prompts with A and B resampled, positions kept (resample ablation,
  denoising patching).
- `repeated_tokens_probe`: Olsson's [BOS?, r_1..r_n, r_1..r_n].
- `text_probe`: windows of a natural-text corpus whose last token recurs earlier in the window.
- `check_fits`: a clear error when a probe does not fit a model's context or vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from headscreen.probes.batch import ProbeBatch

# The retrieval pair never reaches the last 7 positions, so that the induction target a_pos+1
# stays clear of the local window T-6..T-3, of the previous token T-2 and of the query T-1.
_TAIL_CLEARANCE = 7


def _check_token_range(
    token_range: tuple[int, int], need: int, field: str = "token_range"
) -> tuple[int, int]:
    lo, hi = (int(v) for v in token_range)
    if lo < 0 or hi - lo < need:
        raise ValueError(
            f"{field}={token_range!r} must be (lo, hi) with 0 <= lo and at least {need} ids in [lo, hi); "
            f"widen the range (it must stay inside the model's vocabulary)"
        )
    return lo, hi


def _offset(bos_id: int | None) -> int:
    return 0 if bos_id is None else 1


def _pair_bounds(seq_len: int, pair_range: tuple[int, int], off: int) -> tuple[int, int]:
    """Absolute [lo, hi) bounds for a_pos, the configured range shifted by the BOS offset and clipped."""
    lo, hi = (int(v) for v in pair_range)
    if lo < 0 or hi <= lo:
        raise ValueError(f"pair_range={pair_range!r} must be (lo, hi) with 0 <= lo < hi; e.g. (20, 128)")
    hi_abs = min(hi + off, seq_len - _TAIL_CLEARANCE)
    lo_abs = min(lo + off, hi_abs - 1)
    if hi_abs <= off or lo_abs < off:
        raise ValueError(
            f"seq_len={seq_len} is too short for a retrieval probe (BOS={off == 1}); "
            f"use seq_len >= {off + _TAIL_CLEARANCE + 1}"
        )
    return lo_abs, hi_abs


def _filler_excluding(rng: np.random.Generator, lo: int, hi: int, excl: np.ndarray, shape) -> np.ndarray:
    """Uniform ids in [lo, hi) minus the two per-row ids in `excl` [n, 2] (an exact bijective shift)."""
    f = rng.integers(lo, hi - 2, size=shape)
    small = excl.min(axis=1, keepdims=True)
    large = excl.max(axis=1, keepdims=True)
    f = f + (f >= small)
    f = f + (f >= large)
    return f


def _distinct_pairs(rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
    """[n, 2] pairs (A, B) with A != B, uniform over ordered distinct pairs in [lo, hi)."""
    a = rng.integers(lo, hi, size=n)
    b = rng.integers(lo, hi - 1, size=n)
    b = b + (b >= a)
    return np.stack([a, b], axis=1)


def retrieval_probe(
    n: int,
    seq_len: int,
    *,
    token_range: tuple[int, int] = (100, 10000),
    seed: int = 42,
    bos_id: int | None = None,
    pair_range: tuple[int, int] = (20, 128),
) -> ProbeBatch:
    """The key-retrieval probe (docs/methods.md#probe-prompts).

    Row layout (T = seq_len, off = 1 with BOS else 0): [BOS?] filler, A at a_pos, B at a_pos+1,
    filler, A at T-1. a_pos is uniform in [pair_range[0]+off, pair_range[1]+off), clipped so that
    a_pos+1 <= T-7. A != B; the filler is uniform over token_range minus {A, B}, so A occurs exactly
    twice and B exactly once. query_pos = T-1, target_token = B.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    off = _offset(bos_id)
    lo, hi = _check_token_range(token_range, 3)
    p_lo, p_hi = _pair_bounds(seq_len, pair_range, off)
    rng = np.random.default_rng(seed)
    ab = _distinct_pairs(rng, lo, hi, n)  # [n, 2]
    a_pos = rng.integers(p_lo, p_hi, size=n)  # [n]
    toks = _filler_excluding(rng, lo, hi, ab, (n, seq_len))  # [n, T]
    rows = np.arange(n)
    toks[rows, a_pos] = ab[:, 0]
    toks[rows, a_pos + 1] = ab[:, 1]
    toks[:, seq_len - 1] = ab[:, 0]
    if bos_id is not None:
        toks[:, 0] = bos_id
    return ProbeBatch(
        name="retrieval",
        tokens=torch.as_tensor(toks, dtype=torch.long),
        has_bos=bos_id is not None,
        seed=seed,
        query_pos=torch.full((n,), seq_len - 1, dtype=torch.long),
        target_token=torch.as_tensor(ab[:, 1], dtype=torch.long),
        a_pos=torch.as_tensor(a_pos, dtype=torch.long),
        meta={
            "generator": "retrieval_probe",
            "n": n,
            "seq_len": seq_len,
            "token_range": [lo, hi],
            "pair_range": [int(pair_range[0]), int(pair_range[1])],
            "bos_id": bos_id,
        },
    )


def corrupt_retrieval(batch: ProbeBatch, seed: int) -> ProbeBatch:
    """`batch` with A and B resampled per row (new A' != A, B' != B, A' != B'), positions kept.

    A' and B' are drawn from the batch's token range among ids absent from the row, so the corrupted
    prompt has no stray copies either.
    """
    if batch.a_pos is None or batch.target_token is None or "token_range" not in batch.meta:
        raise ValueError(
            f"corrupt_retrieval needs a retrieval batch (a_pos, target_token, meta['token_range']); "
            f"got probe {batch.name!r}: build it with retrieval_probe"
        )
    lo, hi = batch.meta["token_range"]
    rng = np.random.default_rng(seed)
    toks = batch.tokens.clone()
    n, T = toks.shape
    rows = torch.arange(n)
    a_pos = batch.a_pos
    new_a = torch.empty(n, dtype=torch.long)
    new_b = torch.empty(n, dtype=torch.long)
    for i in range(n):
        present = np.zeros(hi - lo, dtype=bool)
        row = toks[i].numpy()
        inside = row[(row >= lo) & (row < hi)] - lo
        present[inside] = True
        free = np.flatnonzero(~present) + lo
        if free.size < 2:
            raise ValueError(
                f"corrupt_retrieval: row {i} uses every id of token_range={batch.meta['token_range']}; "
                f"build the clean probe with a wider token_range or a shorter seq_len"
            )
        a_new, b_new = rng.choice(free, size=2, replace=False)
        new_a[i], new_b[i] = int(a_new), int(b_new)
    toks[rows, a_pos] = new_a
    toks[rows, a_pos + 1] = new_b
    toks[rows, batch.query_pos] = new_a
    meta = dict(batch.meta, corrupted_from_seed=batch.seed, corrupt_seed=seed)
    return ProbeBatch(
        name=f"{batch.name}_corrupt",
        tokens=toks,
        has_bos=batch.has_bos,
        seed=seed,
        query_pos=batch.query_pos.clone(),
        target_token=new_b,
        a_pos=a_pos.clone(),
        meta=meta,
    )


def repeated_tokens_probe(
    n: int,
    span: int,
    *,
    token_range: tuple[int, int] = (100, 10000),
    seed: int = 42,
    bos_id: int | None = None,
) -> ProbeBatch:
    """Olsson's repeated-random-tokens probe: [BOS?, r_1..r_span, r_1..r_span], T = off + 2*span.

    The r_i of a row are distinct (sampled without replacement), so every token of the second copy has
    exactly one earlier occurrence, at offset `span`. query_pos = T-1 (the last r_span); a_pos = its
    first occurrence T-1-span; target_token = r_1, what continuing the repetition predicts.
    meta['first_start'] / meta['second_start'] give the copies' start positions.
    """
    if n < 1 or span < 2:
        raise ValueError(f"n={n} must be >= 1 and span={span} >= 2")
    off = _offset(bos_id)
    lo, hi = _check_token_range(token_range, span)
    rng = np.random.default_rng(seed)
    # distinct ids per row: argsort of uniform keys over the range, first `span` of them
    if hi - lo <= 4096:
        keys = rng.random((n, hi - lo))
        r = np.argsort(keys, axis=1)[:, :span] + lo
    else:
        r = np.stack([rng.choice(hi - lo, size=span, replace=False) + lo for _ in range(n)])
    T = off + 2 * span
    toks = np.empty((n, T), dtype=np.int64)
    if bos_id is not None:
        toks[:, 0] = bos_id
    toks[:, off : off + span] = r
    toks[:, off + span :] = r
    return ProbeBatch(
        name="repeated",
        tokens=torch.as_tensor(toks, dtype=torch.long),
        has_bos=bos_id is not None,
        seed=seed,
        query_pos=torch.full((n,), T - 1, dtype=torch.long),
        target_token=torch.as_tensor(r[:, 0], dtype=torch.long),
        a_pos=torch.full((n,), T - 1 - span, dtype=torch.long),
        meta={
            "generator": "repeated_tokens_probe",
            "n": n,
            "span": span,
            "token_range": [lo, hi],
            "bos_id": bos_id,
            "first_start": off,
            "second_start": off + span,
        },
    )


def _as_id_stream(source, tokenizer, sep_id: int | None) -> np.ndarray:
    """Concatenate documents (strings tokenized without special tokens, or id sequences) to one stream."""
    if isinstance(source, str):
        source = [source]
    if isinstance(source, torch.Tensor) or isinstance(source, np.ndarray):
        arr = np.asarray(source.cpu() if isinstance(source, torch.Tensor) else source, dtype=np.int64)
        docs = [arr] if arr.ndim == 1 else list(arr)
    else:
        docs = list(source)
        if not docs:
            raise ValueError("text_probe: the corpus is empty; pass at least one document")
        if any(isinstance(d, str) for d in docs):
            if not all(isinstance(d, str) for d in docs):
                raise ValueError("text_probe: mix of strings and token ids; pass one kind only")
            if tokenizer is None:
                raise ValueError(
                    "text_probe was given text but this series has no tokenizer, so the text cannot be "
                    "turned into token ids. Pass pre-tokenized ids (a list of id sequences) instead, or "
                    "use the token-id probes retrieval_probe / repeated_tokens_probe"
                )
            docs = [
                np.asarray(tokenizer(d, add_special_tokens=False)["input_ids"], dtype=np.int64) for d in docs
            ]
        else:
            docs = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
    parts: list[np.ndarray] = []
    for i, d in enumerate(docs):
        if i and sep_id is not None:
            parts.append(np.array([sep_id], dtype=np.int64))
        parts.append(d)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def text_probe(
    source: Sequence[str] | Sequence[Sequence[int]] | torch.Tensor,
    tokenizer,
    seq_len: int,
    *,
    n: int | None = None,
    seed: int = 42,
    bos_id: int | None = None,
    sep_id: int | None = None,
    require_repeat: bool = True,
) -> ProbeBatch:
    """Non-overlapping windows of a natural-text corpus (docs/methods.md#probe-prompts).

    `source` is a list of strings (needs `tokenizer`) or of token-id sequences (tokenizer may be
    None). Documents are concatenated (with `sep_id` between them when given). With
    `require_repeat` (default), a window qualifies only when its last token (the query, T-1) also
    occurs earlier at a position <= T-8; a_pos is its latest such occurrence and target_token is the
    token after it (the T -> S ... T -> ? completion). Without it, a_pos is None and target_token is
    the corpus token that follows the window. Windows are picked in a seeded random order; `n=None`
    takes every qualifying window. Raises if fewer than `n` qualify.
    """
    off = _offset(bos_id)
    body = seq_len - off
    if body < _TAIL_CLEARANCE + 2:
        raise ValueError(
            f"seq_len={seq_len} is too short for a text probe; use seq_len >= {off + _TAIL_CLEARANCE + 2}"
        )
    stream = _as_id_stream(source, tokenizer, sep_id)
    need = body + (0 if require_repeat else 1)
    if stream.size < need:
        raise ValueError(
            f"text_probe: the corpus has {stream.size} tokens, fewer than one window of {need}; "
            f"pass more text or a shorter seq_len"
        )
    windows, a_list, tgt_list = _pick_windows(stream, seq_len, off, n=n, seed=seed, require_repeat=require_repeat)
    toks = np.stack(windows)  # [m, body], in the seeded pick order
    if bos_id is not None:
        toks = np.concatenate([np.full((toks.shape[0], 1), bos_id, dtype=np.int64), toks], axis=1)
    m = toks.shape[0]
    return ProbeBatch(
        name="natural",
        tokens=torch.as_tensor(toks, dtype=torch.long),
        has_bos=bos_id is not None,
        seed=seed,
        query_pos=torch.full((m,), seq_len - 1, dtype=torch.long),
        target_token=torch.as_tensor(tgt_list, dtype=torch.long),
        a_pos=torch.as_tensor(a_list, dtype=torch.long) if require_repeat else None,
        meta={
            "generator": "text_probe",
            "n": m,
            "seq_len": seq_len,
            "bos_id": bos_id,
            "sep_id": sep_id,
            "require_repeat": require_repeat,
            "corpus_tokens": int(stream.size),
        },
    )


def _pick_windows(stream: np.ndarray, seq_len: int, off: int, *, n: int | None, seed: int,
                  require_repeat: bool) -> tuple[list[np.ndarray], list[int], list[int]]:
    """text_probe's windows in a seeded random order, non-overlapping -> (windows [body] each, a_pos list
    (empty without require_repeat), target tokens); raises when fewer than `n` (or none) qualify."""
    body = seq_len - off
    need = body + (0 if require_repeat else 1)
    rng = np.random.default_rng(seed)
    starts = rng.permutation(stream.size - need + 1)
    used = np.zeros(stream.size, dtype=bool)
    windows, a_list, tgt_list = [], [], []
    last_ok = seq_len - 8  # latest allowed absolute a_pos
    for s in starts:
        if n is not None and len(windows) >= n:
            break
        if used[s : s + need].any():
            continue
        w = stream[s : s + body]
        if require_repeat:
            hits = np.flatnonzero(w[: last_ok - off + 1] == w[-1])
            if hits.size == 0:
                continue
            a = int(hits[-1]) + off
            a_list.append(a)
            tgt_list.append(int(w[a - off + 1]))
        else:
            tgt_list.append(int(stream[s + body]))
        used[s : s + need] = True
        windows.append(w)
    if not windows or (n is not None and len(windows) < n):
        raise ValueError(
            f"text_probe: only {len(windows)} qualifying windows of {seq_len} tokens "
            f"(require_repeat={require_repeat}) but n={n} were asked; pass more text, a smaller n or seq_len"
        )
    return windows, a_list, tgt_list


def check_fits(batch: ProbeBatch, n_ctx: int, d_vocab: int | None = None) -> None:
    """Raise ValueError when `batch` is longer than the model's context or uses ids beyond its vocabulary."""
    if batch.seq_len > n_ctx:
        raise ValueError(
            f"probe {batch.name!r} has seq_len {batch.seq_len} but the model's context is only {n_ctx} "
            f"tokens (n_ctx); build the probe with seq_len <= {n_ctx}"
        )
    if d_vocab is not None:
        top = int(batch.tokens.max())
        if top >= d_vocab or int(batch.tokens.min()) < 0:
            raise ValueError(
                f"probe {batch.name!r} uses token id {top} but the model's vocabulary has {d_vocab} ids "
                f"(d_vocab); build the probe with token_range inside [0, {d_vocab})"
            )
