"""The all-head screen of one checkpoint, and the summary of a screened series.

`screen_checkpoint` runs each probe batch once (forward.run_probe) and returns the per-checkpoint
rows of `selectivity`, `head_scores`, `participation` and `copying` with exactly the columns of
docs/run-format.md. `summarise_series` turns the concatenated rows of all checkpoints into the
`classes` table (classify) and the `circuits.json` content.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from headscreen.probes import selectivity as sel
from headscreen.probes.batch import ProbeBatch
from headscreen.probes.classify import DEFAULT_THRESHOLDS, ScreenThresholds, circuits, classify
from headscreen.probes.copying import copy_losses, copying_row
from headscreen.probes.emergence import bos_layers01, emergence_steps, lead_times
from headscreen.probes.forward import ProbeForward, run_probe
from headscreen.probes.participation import head_participation, pr_integral
from headscreen.rundir.jsonsafe import records

SELECTIVITY_COLUMNS = ["step", "layer", "head", "probe", "class", "selectivity", "null_z"]
HEAD_SCORE_COLUMNS = ["step", "layer", "head", "probe", "metric", "value"]
PARTICIPATION_COLUMNS = ["step", "tokens", "layer", "head", "probe", "pr"]
COPYING_COLUMNS = [
    "step",
    "loss_first",
    "loss_second",
    "loss_gap",
    "max_induction_selectivity",
    "noncanonical_copying",
]


def _is_repeated(batch: ProbeBatch) -> bool:
    return batch.meta.get("generator") == "repeated_tokens_probe"


def _selectivity_ok(batch: ProbeBatch) -> bool:
    T = batch.seq_len
    if batch.a_pos is None:
        return False
    return bool(
        (batch.query_pos == T - 1).all() and (batch.a_pos >= 0).all() and (batch.a_pos + 1 <= T - 7).all()
    )


def _named(batches: Mapping[str, ProbeBatch] | Sequence[ProbeBatch]) -> dict[str, ProbeBatch]:
    if isinstance(batches, ProbeBatch):
        batches = [batches]
    items = list(batches.items()) if isinstance(batches, Mapping) else [(b.name, b) for b in batches]
    names = [k for k, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"probe names must be unique, got {names}; pass a dict {{name: batch}}")
    return dict(items)


class _Detect:
    """Reducers for the detect_head-style scores. Caches the detection patterns of one micro-batch,
    and the three scores of the last attention pattern (computed in one pass, read per kind)."""

    def __init__(self) -> None:
        self._key: torch.Tensor | None = None
        self._pats: dict[str, torch.Tensor] = {}
        self._pattern: torch.Tensor | None = None  # held, so that `is` cannot match a different tensor
        self._scores: dict[str, torch.Tensor] = {}
        self._scores_key: torch.Tensor | None = None  # the token batch the cached scores belong to

    def patterns(self, toks: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._key is None or self._key.shape != toks.shape or not torch.equal(self._key, toks):
            self._key = toks.clone()
            self._pats = sel.detection_patterns(toks.cpu())
        return self._pats

    def reducer(self, kind: str):
        def fn(pat: torch.Tensor, toks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            pats = self.patterns(toks)
            if self._pattern is not pat or self._scores_key is not self._key:
                self._pattern, self._scores_key = pat, self._key
                self._scores = sel.detect_scores(pat.cpu(), pats)
            return self._scores[kind]

        return fn


def _reducers(batch: ProbeBatch) -> dict:
    det = _Detect()
    red = {
        "sink_alpha": lambda pat, toks, q: sel.sink_alpha(pat),
        "detect_previous": det.reducer("previous"),
        "detect_duplicate": det.reducer("duplicate"),
        "detect_induction": det.reducer("induction"),
    }
    if _is_repeated(batch):
        span, s1 = int(batch.meta["span"]), int(batch.meta["first_start"])
        red["prefix_matching"] = lambda pat, toks, q: sel.prefix_matching(pat, span, s1)
        red["offsets"] = lambda pat, toks, q: sel.offset_attention(pat, span, s1)
    return red


def _head_frame(values: torch.Tensor, layers: Sequence[int], **cols) -> pd.DataFrame:
    """[layer, head] tensor -> long rows `layer`, `head`, `value` plus constant columns."""
    n_l, n_h = values.shape
    return pd.DataFrame(
        {
            "layer": [layers[i] for i in range(n_l) for _ in range(n_h)],
            "head": [h for _ in range(n_l) for h in range(n_h)],
            "value": values.reshape(-1).double().numpy(),
            **cols,
        }
    )


def _score_rows(fwd: ProbeForward, batch: ProbeBatch, th: ScreenThresholds, probe: str) -> list[pd.DataFrame]:
    r, L = fwd.reduced, fwd.layers
    out = [
        _head_frame(r["sink_alpha"].mean(0), L, metric="sink_alpha1"),
        _head_frame(sel.sink_rate(r["sink_alpha"], th.sink_eps), L, metric="sink_rate"),
    ]
    for kind in ("previous", "duplicate", "induction"):
        out.append(_head_frame(r[f"detect_{kind}"].mean(0), L, metric=f"detect_{kind}"))
    if _is_repeated(batch):
        span = int(batch.meta["span"])
        out.append(_head_frame(r["prefix_matching"].mean(0), L, metric="prefix_matching"))
        offsets = r["offsets"].mean(0)  # [layer, head, offset]
        out.append(_head_frame(offsets[..., span], L, metric="duplicate_score"))
        for k in range(offsets.shape[-1]):
            out.append(_head_frame(offsets[..., k], L, metric=f"offset_{k}"))
    return [f.assign(probe=probe) for f in out]


def _selectivity_rows(fwd: ProbeForward, batch: ProbeBatch, th: ScreenThresholds, probe: str) -> pd.DataFrame:
    kw = dict(n_null_positions=th.n_null_positions, null_seed=th.null_position_seed)
    s = sel.selectivity(fwd.query_rows, batch.query_pos, batch.a_pos, **kw)
    lo, hi = int(batch.a_pos.min()), int(batch.a_pos.max()) + 2
    # a pair range narrower than 10 keys (e.g. the repeated probe's fixed a_pos) leaves too few null
    # targets: draw from every non-special position instead
    window = None if th.null_window == "all" or hi - lo < 10 else (lo, hi)
    null = sel.null_selectivity(
        fwd.query_rows,
        batch.query_pos,
        batch.a_pos,
        n_draws=th.n_null_draws,
        seed=th.null_draw_seed,
        window=window,
        **kw,
    )
    z = sel.null_z(s, null)
    frames = []
    for c in sel.CLASSES:
        f = _head_frame(s[c], fwd.layers).rename(columns={"value": "selectivity"})
        f["null_z"] = z[c].reshape(-1).double().numpy()
        frames.append(f.assign(probe=probe, **{"class": c}))
    return pd.concat(frames, ignore_index=True)


def screen_checkpoint(
    bridge,
    batches: Mapping[str, ProbeBatch] | Sequence[ProbeBatch],
    thresholds: ScreenThresholds = DEFAULT_THRESHOLDS,
    *,
    micro_batch: int = 16,
    step: int | None = None,
    tokens: float | None = None,
) -> dict[str, pd.DataFrame]:
    """Screen every head of one checkpoint on every probe batch (one batched forward per batch).

    Per probe: selectivity + null z (when the batch has a_pos with a_pos+1 <= T-7 and q = T-1),
    head scores (Gu sink α₁ and rate, detect_head-style previous / duplicate / induction scores; on
    the repeated probe also prefix matching, the duplicate score and the attention mass per offset),
    the participation ratio of hook_z at the query. With a repeated probe (at most one), the copying
    row. `step` / `tokens` fill those columns (the caller may overwrite them).

    Returns {"selectivity", "head_scores", "participation", "copying"} DataFrames (classify the
    selectivity rows for a checkpoint's classes; `summarise_series` does it for a series).
    """
    named = _named(batches)
    if sum(_is_repeated(b) for b in named.values()) > 1:
        raise ValueError(
            "screen_checkpoint takes at most one repeated-tokens probe (copying has one row per step)"
        )
    sel_frames, score_frames, pr_frames = [], [], []
    copy_rows = []
    for probe, batch in named.items():
        fwd = run_probe(
            bridge,
            batch,
            micro_batch=micro_batch,
            want_z=True,
            want_losses=_is_repeated(batch),
            reducers=_reducers(batch),
        )
        score_frames += _score_rows(fwd, batch, thresholds, probe)
        pr = head_participation(fwd.z_query)
        pr_frames.append(_head_frame(pr, fwd.layers).rename(columns={"value": "pr"}).assign(probe=probe))
        if _selectivity_ok(batch):
            sel_frames.append(_selectivity_rows(fwd, batch, thresholds, probe))
        elif batch.a_pos is not None:
            warnings.warn(
                f"probe {probe!r}: no selectivity (needs q = T-1 and a_pos+1 <= T-7); "
                f"use a longer span / seq_len",
                stacklevel=2,
            )
        if _is_repeated(batch):
            copy_rows.append(
                copy_losses(fwd.token_losses, int(batch.meta["span"]), int(batch.meta["first_start"]))
            )
    return _checkpoint_tables(sel_frames, score_frames, pr_frames, copy_rows, thresholds, step=step, tokens=tokens)


def _checkpoint_tables(sel_frames: list[pd.DataFrame], score_frames: list[pd.DataFrame],
                       pr_frames: list[pd.DataFrame], copy_rows: list, thresholds: ScreenThresholds, *,
                       step: int | None, tokens: float | None) -> dict[str, pd.DataFrame]:
    """screen_checkpoint's four tables from its per-probe frames (the copying row needs the max induction
    selectivity over every probe)."""
    selectivity = (
        pd.concat(sel_frames, ignore_index=True)
        if sel_frames
        else pd.DataFrame(columns=SELECTIVITY_COLUMNS[1:])
    )
    max_ind = (
        selectivity.loc[selectivity["class"] == "induction", "selectivity"].max()
        if len(selectivity)
        else math.nan
    )
    copying = pd.DataFrame(
        [
            copying_row(
                a,
                b,
                float(max_ind),
                gap_min=thresholds.copying_gap,
                induction_min=thresholds.induction_circuit,
            )
            for a, b in copy_rows
        ],
        columns=COPYING_COLUMNS[1:],
    )
    participation = pd.concat(pr_frames, ignore_index=True).assign(tokens=tokens)
    head_scores = pd.concat(score_frames, ignore_index=True)
    out = {
        "selectivity": selectivity,
        "head_scores": head_scores,
        "participation": participation,
        "copying": copying,
    }
    cols = {
        "selectivity": SELECTIVITY_COLUMNS,
        "head_scores": HEAD_SCORE_COLUMNS,
        "participation": PARTICIPATION_COLUMNS,
        "copying": COPYING_COLUMNS,
    }
    return {name: df.assign(step=step)[cols[name]].reset_index(drop=True) for name, df in out.items()}


# outputs that are finite for any finite forward pass (ratios such as selectivity may legitimately be
# inf or NaN when an attention baseline underflows to 0, so they are not listed)
_MUST_BE_FINITE = {"copying": ("loss_first", "loss_second"), "head_scores": ("sink_alpha1",)}


def non_finite_outputs(tables: Mapping[str, pd.DataFrame]) -> str | None:
    """A description of the first non-finite forward output (token losses, attention mass) in
    `screen_checkpoint` tables, or None when every one is finite."""
    for name, columns in _MUST_BE_FINITE.items():
        df = tables.get(name)
        if df is None or not len(df):
            continue
        if name == "head_scores":
            df = df[df["metric"].isin(columns)]
            columns = ("value",)
        for col in columns:
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            bad = int((~np.isfinite(values)).sum())
            if bad:
                return f"{bad} non-finite value(s) in {name}.{col if name != 'head_scores' else 'sink_alpha1'}"
    return None


def summarise_series(
    tables: Mapping[str, pd.DataFrame], thresholds: ScreenThresholds = DEFAULT_THRESHOLDS
) -> tuple[pd.DataFrame, dict]:
    """From the concatenated per-checkpoint rows of a series (with `step` filled) to
    (classes_df, circuits_dict).

    `tables` needs "selectivity"; optional "participation" (PR integral ranking) and "onsets"
    (onsets.parquet: `layer`, `head`, `metric`, `onset_step`) for lead times. The dict is the
    circuits.json content: thresholds; `steps` -> {step: {probe: {induction, previous, bos}}};
    `emergence`; `lead_times`; `bos_layers01`; `pr_integral` per probe.
    """
    selectivity = tables["selectivity"]
    if selectivity["step"].isna().any():
        raise ValueError("selectivity rows have no step; fill the `step` column before summarising")
    classes = classify(selectivity, thresholds)
    per_step: dict[str, dict] = {}
    for (step, probe), g in classes.groupby(["step", "probe"], sort=True):
        per_step.setdefault(str(int(step)), {})[probe] = circuits(g)
    emergence = emergence_steps(classes)
    onsets = tables.get("onsets")
    leads = lead_times(onsets, emergence) if onsets is not None and len(onsets) else pd.DataFrame()
    ranking = {}
    part = tables.get("participation")
    if part is not None and len(part):
        for probe, g in part.groupby("probe", sort=True):
            ranking[probe] = records(
                pr_integral(g, rule=thresholds.pr_rule, top_fraction=thresholds.pr_top_fraction)
            )
    summary = {
        "thresholds": thresholds.to_dict(),
        "steps": per_step,
        "emergence": records(emergence),
        "lead_times": records(leads),
        "bos_layers01": records(bos_layers01(classes)),
        "pr_integral": ranking,
    }
    return classes, summary
