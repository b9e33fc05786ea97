"""Per-head update-Gram fingerprints (docs/methods.md#per-head-update-gram-fingerprint), their onsets, and a streaming head sketcher.

Input: per-checkpoint per-head vectors or sketches stacked as [T, layer, head, d], the training steps
[T], and optionally the exact update norms [T, layer, head] from `HeadSketcher`.

Output: a long table `step, layer, head, metric, value`; `step` is the step of the window's last
checkpoint (window end). Metrics, for each window of W updates:

  sigma_1..sigma_W, ratio_12, ratio_23, kstar, kstar_weighted, gap_norm, g_23, update_norm

`update_norm` is ‖δ‖ of the window's newest update (exact when given, else from the sketch): it peaks
at emergence and does not suffer the boxcar effect of the window statistics. `kstar` is NaN for an
all-zero window (frozen head). Each metric also comes as

* `<metric>_z`: against the head's own baseline, leaving out the first `transient` windows (the
  early-training transient; default W). `baseline="robust"` (default): (x − median)/(1.4826·MAD)
  over all windows after the transient; a short event barely moves median or MAD, so one series
  gives its own baseline. If MAD = 0 the scale falls back to 1.2533·mean|x − median|; if that is 0
  too (a constant metric) the z-scores of that head and metric are NaN. Limitation: an event that
  lasts more than half of the post-transient windows *becomes* the baseline; then use
  `baseline="leading"`: the same median/MAD statistics over only the `baseline_windows` windows right
  after the transient (an early, pre-event baseline). With fewer than 3 baseline windows, z is NaN
  and a warning says how many checkpoints are needed.
* `<metric>_rel`: against the other heads *at the same window*, which removes a network-wide
  reorganisation (at a phase change r_12 rises in every head): value / median over the heads of the
  network (`rel_scope="network"`, default) or of the head's layer (`"layer"`). For `kstar` and
  `kstar_weighted` (positions, not scales) it is value − median. Network scope is the default
  because in small models most heads of one layer can belong to the circuit, so a layer median
  would cancel the signal; `"layer"` removes the layer confound in deep models.

A circuit head shows up as a high `update_norm_rel` / `ratio_12_rel` / `gap_norm_rel` at its
emergence; a network-wide reorganisation shows up in `_z` for every head but not in `_rel`.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .config import SpectralConfig
from .gram import check_series_length, rolling_window_stats
from .sketch import CountSketch, ExactProjector, GaussianSketch, make_projector

SCALAR_METRICS = ("ratio_12", "ratio_23", "kstar", "kstar_weighted", "gap_norm", "g_23", "update_norm")
POSITION_METRICS = ("kstar", "kstar_weighted")  # `_rel` is a difference for these
COLUMNS = ("step", "layer", "head", "metric", "value")
ONSET_BASELINE_WINDOWS = 3  # windows after the transient whose median is the early baseline of `onsets`


def metric_names(window: int) -> tuple[str, ...]:
    """Base metric names of a fingerprint with window W, in table order."""
    return tuple(f"sigma_{j}" for j in range(1, window + 1)) + SCALAR_METRICS


def _as_steps(steps, t: int) -> np.ndarray:
    s = np.asarray(steps.tolist() if isinstance(steps, Tensor) else steps)
    if s.ndim != 1 or s.shape[0] != t:
        raise ValueError(f"steps must be a 1-d sequence with one step per checkpoint (T={t}); got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.integer):
        if not np.all(np.isfinite(s.astype(float))) or np.any(s != np.round(s)):
            raise ValueError(f"steps must be integers (training steps); got {s[:5].tolist()}...")
        s = s.astype(np.int64)
    if np.any(np.diff(s) <= 0):
        i = int(np.argmax(np.diff(s) <= 0))
        raise ValueError(f"steps must be strictly increasing; step[{i}]={s[i]} >= step[{i + 1}]={s[i + 1]}")
    return s.astype(np.int64)


def _robust_center_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-based scale along axis 1 (windows) of [M, n, ...]; NaN where undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(x, axis=1, keepdims=True)
        dev = np.abs(x - med)
        scale = 1.4826 * np.nanmedian(dev, axis=1, keepdims=True)
        fallback = 1.2533 * np.nanmean(dev, axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, fallback)
    scale = np.where(scale > 0, scale, np.nan)
    return med, scale


@dataclass(frozen=True)
class Fingerprint:
    """Wide form of a fingerprint: arrays [metric, window, layer, head] (float64)."""

    steps: np.ndarray  # [n_win] step of each window's last checkpoint
    metrics: tuple[str, ...]
    raw: np.ndarray
    z: np.ndarray
    rel: np.ndarray
    config: SpectralConfig = field(default_factory=SpectralConfig)

    def metric(self, name: str) -> np.ndarray:
        """[n_win, layer, head] array of one metric; accepts `<m>`, `<m>_z` and `<m>_rel`."""
        for suffix, arr in (("_z", self.z), ("_rel", self.rel)):
            if name.endswith(suffix) and name[: -len(suffix)] in self.metrics:
                return arr[self.metrics.index(name[: -len(suffix)])]
        if name not in self.metrics:
            raise KeyError(f"unknown metric {name!r}; have {self.metrics} (+ _z, _rel)")
        return self.raw[self.metrics.index(name)]

    def to_frame(self) -> pd.DataFrame:
        """Long table with columns step, layer, head, metric, value (metric-major row order)."""
        m, n, n_layers, n_heads = self.raw.shape
        names = list(self.metrics) + [f"{k}_z" for k in self.metrics] + [f"{k}_rel" for k in self.metrics]
        values = np.concatenate([self.raw, self.z, self.rel], axis=0)  # [3M, n, L, H]
        per = n * n_layers * n_heads
        step = np.broadcast_to(self.steps[:, None, None], (n, n_layers, n_heads)).reshape(-1)
        layer = np.broadcast_to(np.arange(n_layers)[None, :, None], (n, n_layers, n_heads)).reshape(-1)
        head = np.broadcast_to(np.arange(n_heads)[None, None, :], (n, n_layers, n_heads)).reshape(-1)
        k = len(names)
        return pd.DataFrame({
            "step": np.tile(step, k).astype(np.int64),
            "layer": np.tile(layer, k).astype(np.int64),
            "head": np.tile(head, k).astype(np.int64),
            "metric": np.repeat(np.asarray(names, dtype=object), per),
            "value": values.reshape(-1).astype(np.float64),
        })


def compute_fingerprint(
    vectors: Float[Tensor, "T layer head d"],
    steps,
    *,
    config: SpectralConfig | None = None,
    update_norms: Float[Tensor, "T layer head"] | None = None,
) -> Fingerprint:
    """Wide fingerprint; see the module docstring. Raises if T < W + 1 (naming both).

    With exact `update_norms` and `config.gram_estimator == "norm_corrected"`, the window Grams use
    the sketched cosines with the exact norms (see `rolling_window_stats`); otherwise the raw Gram.
    """
    config = config or SpectralConfig()
    w = config.window
    if vectors.ndim != 4:
        raise ValueError(
            f"vectors must be [T, layer, head, d] (stacked per-head vectors or sketches); got shape "
            f"{tuple(vectors.shape)}; add a layer dim with .unsqueeze(1) for a single-layer stack"
        )
    t, n_layers, n_heads, _ = vectors.shape
    check_series_length(t, w)
    step_arr = _as_steps(steps, t)
    if update_norms is not None:
        norms = torch.as_tensor(update_norms, dtype=torch.float64)
        if tuple(norms.shape) != (t, n_layers, n_heads):
            raise ValueError(f"update_norms must be [T, layer, head] = {(t, n_layers, n_heads)}; "
                             f"got {tuple(norms.shape)}")
        if not torch.isfinite(norms[1:]).all():
            raise ValueError("update_norms has NaN/inf after row 0 (only the first checkpoint has no update); "
                             "pass the norms HeadSketcher returned for every checkpoint")
    correct = update_norms is not None and config.gram_estimator == "norm_corrected"
    ws = rolling_window_stats(vectors, w, min_sigma_frac=config.min_sigma_frac, zero_tol=config.zero_tol,
                              dtype=config.compute_dtype, update_norms=norms[1:] if correct else None)
    st = ws.stats
    end = ws.end_index
    un = norms[end] if update_norms is not None else ws.update_norm
    kstar = torch.where(st.kstar > 0, st.kstar.double(), torch.nan)
    kstar_w = torch.where(st.kstar_weighted > 0, st.kstar_weighted.double(), torch.nan)
    per = [st.sigma[..., j] for j in range(w)] + [st.r_12, st.r_23, kstar, kstar_w, st.gap_norm, st.g_23, un]
    raw = torch.stack([p.to(torch.float64) for p in per]).numpy()  # [M, n_win, L, H]
    names = metric_names(w)
    return Fingerprint(steps=step_arr[end.numpy()], metrics=names, raw=raw,
                       z=_zscores(raw, config), rel=_relative(raw, names, config.rel_scope), config=config)


def _zscores(raw: np.ndarray, config: SpectralConfig) -> np.ndarray:
    n = raw.shape[1]
    lo = config.transient
    need = 3
    base = raw[:, lo:] if config.baseline == "robust" else raw[:, lo : lo + config.n_baseline]
    if base.shape[1] < need:
        warnings.warn(
            f"only {max(base.shape[1], 0)} of {n} windows lie after the {lo}-window transient; the "
            f"'{config.baseline}' z-score baseline needs {need}, so every *_z is NaN. Provide at least "
            f"{config.window + lo + need} checkpoints or lower SpectralConfig.transient_windows",
            stacklevel=3,
        )
        return np.full_like(raw, np.nan)
    center, scale = _robust_center_scale(base)
    return (raw - center) / scale


def _relative(raw: np.ndarray, names: tuple[str, ...], scope: str) -> np.ndarray:
    axes = (2, 3) if scope == "network" else (3,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(raw, axis=axes, keepdims=True)
        ratio = np.where(med != 0, raw / np.where(med != 0, med, 1.0), np.nan)
    out = ratio
    for i, name in enumerate(names):
        if name in POSITION_METRICS:
            out[i] = raw[i] - med[i]
    return out


def fingerprint(
    vectors: Float[Tensor, "T layer head d"],
    steps,
    *,
    config: SpectralConfig | None = None,
    update_norms: Float[Tensor, "T layer head"] | None = None,
) -> pd.DataFrame:
    """Long fingerprint table `step, layer, head, metric, value` (see the module docstring)."""
    return compute_fingerprint(vectors, steps, config=config, update_norms=update_norms).to_frame()


# ----------------------------------------------------------------------------------------------
# Reading a long table


def _pivot(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"the table lacks columns {sorted(missing)}; expected {COLUMNS}")
    sub = df[df["metric"] == metric]
    if sub.empty:
        have = sorted(df["metric"].unique().tolist())[:12]
        raise ValueError(f"metric {metric!r} is not in the table; some available: {have}")
    return sub.pivot_table(index="step", columns=["layer", "head"], values="value", aggfunc="first",
                           dropna=False).sort_index()


def onsets(
    df: pd.DataFrame,
    metric: str,
    margin: float,
    *,
    direction: Literal["up", "down", "both"] = "up",
    relative: bool = False,
    reference: Literal["early", "zero"] = "early",
    transient_windows: int | None = None,
    baseline_windows: int = ONSET_BASELINE_WINDOWS,
    consecutive: int = 1,
    config: SpectralConfig | None = None,
) -> pd.DataFrame:
    """First window at which `metric` leaves its early baseline by `margin`, per head.

    The first `transient_windows` windows (default config.transient = W) are ignored. The baseline is
    the median of the next `baseline_windows` (default 3) windows (`reference="early"`), or 0
    (`reference="zero"`, for metrics that are already z-scores). The default is short on purpose: a
    51-checkpoint series with W = 10 has only ~4 windows between the transient and a mid-run
    emergence, and an event inside the baseline raises the baseline and hides itself. A window
    departs when x − base > thr (`up`), base − x > thr (`down`) or |x − base| > thr (`both`), with
    thr = margin, or margin·|base| when `relative`. The search starts right after the transient (an
    event inside the baseline period counts; the median keeps the baseline robust to it) and the onset
    is the first of `consecutive` departing windows in a row.

    Returns columns layer, head, metric, onset_step (float; NaN if the head never departs).
    """
    config = config or SpectralConfig()
    skip = config.transient if transient_windows is None else transient_windows
    nb = baseline_windows
    if direction not in ("up", "down", "both"):
        raise ValueError(f"direction={direction!r} is unknown; use 'up', 'down' or 'both'")
    if reference not in ("early", "zero"):
        raise ValueError(f"reference={reference!r} is unknown; use 'early' or 'zero'")
    if not margin >= 0:
        raise ValueError(f"margin={margin!r} must be >= 0")
    if consecutive < 1 or skip < 0 or nb < 1:
        raise ValueError(f"consecutive={consecutive}, transient_windows={skip} and baseline_windows={nb} "
                         "must be >= 1, >= 0 and >= 1")
    wide = _pivot(df, metric)
    x = wide.to_numpy(dtype=np.float64)  # [n_win, heads]
    n = x.shape[0]
    if reference == "early" and n < skip + nb:
        raise ValueError(f"metric {metric!r} has {n} windows but the transient ({skip}) plus the early "
                         f"baseline ({nb}) need {skip + nb}; lower baseline_windows/transient_windows or "
                         "add checkpoints")
    if n <= skip:
        raise ValueError(f"metric {metric!r} has {n} windows, all inside the {skip}-window transient; "
                         "lower transient_windows or add checkpoints")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base = np.nanmedian(x[skip : skip + nb], axis=0) if reference == "early" else np.zeros(x.shape[1])
    thr = margin * np.abs(base) if relative else np.full_like(base, margin)
    dev = {"up": x - base, "down": base - x, "both": np.abs(x - base)}[direction]
    hit = np.nan_to_num(dev, nan=-np.inf) > thr
    hit[:skip] = False
    run = hit.copy()
    for k in range(1, consecutive):
        run[: n - k] &= hit[k:]
        run[n - k :] = False
    first = np.where(run.any(axis=0), run.argmax(axis=0), -1)
    steps = wide.index.to_numpy()
    onset = np.where(first >= 0, steps[np.clip(first, 0, None)].astype(np.float64), np.nan)
    return pd.DataFrame({
        "layer": wide.columns.get_level_values("layer").astype(np.int64),
        "head": wide.columns.get_level_values("head").astype(np.int64),
        "metric": metric,
        "onset_step": onset,
    })


def rank_heads(
    df: pd.DataFrame,
    metric: str,
    *,
    reduce: Literal["max", "mean", "median"] = "max",
    transient_windows: int | None = None,
    config: SpectralConfig | None = None,
) -> pd.DataFrame:
    """Heads ranked by `reduce` of `metric` over the windows after the transient (rank 1 = highest).

    Returns columns layer, head, score, rank, sorted by rank.
    """
    config = config or SpectralConfig()
    skip = config.transient if transient_windows is None else transient_windows
    if reduce not in ("max", "mean", "median"):
        raise ValueError(f"reduce={reduce!r} is unknown; use 'max', 'mean' or 'median'")
    wide = _pivot(df, metric)
    if wide.shape[0] <= skip:
        raise ValueError(f"metric {metric!r} has {wide.shape[0]} windows, all inside the {skip}-window "
                         "transient; lower transient_windows or add checkpoints")
    x = wide.iloc[skip:]
    score = getattr(x, reduce)(axis=0, skipna=True)
    out = pd.DataFrame({
        "layer": wide.columns.get_level_values("layer").astype(np.int64),
        "head": wide.columns.get_level_values("head").astype(np.int64),
        "score": score.to_numpy(dtype=np.float64),
    })
    out["rank"] = out["score"].rank(ascending=False, method="min", na_option="bottom").astype(np.int64)
    return out.sort_values(["rank", "layer", "head"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Streaming: one checkpoint at a time


@dataclass(frozen=True)
class SketchStep:
    step: int
    sketch: Float[Tensor, "layer head d"]  # s_t ≈ Φθ_t per head (float64; exact mode: θ_t itself)
    update_norm: Float[Tensor, "layer head"]  # ‖θ_t − θ_{t−1}‖ (float64); NaN for the first


_NORM_CHUNK = 256  # ‖δ‖² = Σ of float32 partial sums over 256 entries, added in float64


def _sq_norms(x: Tensor) -> Tensor:
    """Σ x² along the last dim of a contiguous [n, P] tensor, float64-accurate at float32 speed."""
    p = x.shape[-1]
    main = p // _NORM_CHUNK * _NORM_CHUNK
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    if main:
        part = torch.linalg.vector_norm(x[:, :main].reshape(x.shape[0], -1, _NORM_CHUNK), dim=-1)
        out += part.to(torch.float64).pow(2).sum(-1)
    if main < p:
        out += x[:, main:].to(torch.float64).pow(2).sum(-1)
    return out


#: Columns of the head vectors processed together. All L·H heads of a segment are differenced, normed
#: and projected at once, so each block of Φ is read once per checkpoint and the working set (two
#: [L·H, SEGMENT] float32 buffers and a Φ block) stays in cache. Not part of any definition.
SEGMENT = 4096


class _Checkpoint:
    """One checkpoint's head vectors, read a segment of columns at a time (no [L, H, P] copy).

    A head vector is concat(W_Q[h], W_K[g(h)], W_V[g(h)], W_O[h]) flattened (`HeadWeights.head_vectors`);
    `parts` lists (first column, width, view [L, G, width], G) with G = H for W_Q/W_O and the K/V heads
    for W_K/W_V (each broadcast over its group of H/G query heads).
    """

    def __init__(self, weights, step: int) -> None:
        self.step = step
        if isinstance(weights, Tensor):
            if weights.ndim != 3:
                raise ValueError(f"step {step}: head vectors must be [layer, head, P]; got shape {tuple(weights.shape)}")
            if not weights.is_floating_point():
                raise ValueError(f"step {step}: head vectors must be floating point; got {weights.dtype}")
            self.shape = tuple(weights.shape)
            self.dtype = weights.dtype
            self.tensors: tuple[Tensor, ...] = (weights,)
            self.parts = [(0, self.shape[2], weights)]
        elif hasattr(weights, "head_vectors") and hasattr(weights, "W_Q"):
            self.tensors = (weights.W_Q, weights.W_K, weights.W_V, weights.W_O)
            for t in self.tensors:
                if not t.is_floating_point():
                    raise ValueError(f"step {step}: head weights must be floating point; got {t.dtype}")
            n_layers, n_heads = weights.n_layers, weights.n_heads
            n = weights.d_model * weights.d_head
            self.shape = (n_layers, n_heads, 4 * n)
            self.dtype = functools.reduce(torch.promote_types, [t.dtype for t in self.tensors])
            self.parts = [(i * n, n, t.reshape(n_layers, t.shape[1], n)) for i, t in enumerate(self.tensors)]
        else:
            raise TypeError(f"step {step}: expected HeadWeights or an [L, H, P] tensor; got {type(weights).__name__}")
        # vectors are formed in float32 (float64 stays float64): exact for fp16/bf16/fp32 weights
        self.work_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32

    def segments(self):
        """Column ranges [lo, hi) of width SEGMENT (the last one shorter); independent of the layout."""
        p = self.shape[2]
        for lo in range(0, p, SEGMENT):
            yield lo, min(lo + SEGMENT, p)

    def columns(self, lo: int, hi: int, out: Tensor) -> Tensor:
        """Columns [lo, hi) of every head vector, as [L·H, hi − lo] (written into `out`)."""
        n_layers, n_heads, _ = self.shape
        dst = out[: n_layers * n_heads, : hi - lo]
        for base, width, view in self.parts:
            a, b = max(lo, base), min(hi, base + width)
            if a >= b:
                continue
            groups = view.shape[1]
            dst[:, a - lo : b - lo].view(n_layers, groups, n_heads // groups, b - a).copy_(
                view[:, :, None, a - base : b - base])
        return dst

    def check_finite(self) -> None:
        # a sum is non-finite if any entry is (or if it overflows: then the exact check decides)
        if all(torch.isfinite(t.sum()).item() for t in self.tensors):
            return
        n_layers, n_heads, _ = self.shape
        bad = torch.zeros(n_layers * n_heads, dtype=torch.bool)
        buf = torch.empty(n_layers * n_heads, SEGMENT, dtype=self.work_dtype)
        for lo, hi in self.segments():
            bad |= ~torch.isfinite(self.columns(lo, hi, buf)).all(-1)
        if bad.any():
            layer, head = divmod(int(bad.nonzero()[0, 0]), n_heads)
            raise ValueError(f"step {self.step}: NaN/inf weights in layer {layer} head {head}; the "
                             "checkpoint is corrupt or diverged")


class HeadSketcher:
    """Streams checkpoints, oldest first: sketch each head's trajectory and its exact update norms.

    `update(weights, step)` takes one checkpoint's `HeadWeights` (or an [L, H, P] tensor of head
    vectors) and returns its `SketchStep`. Only the previous checkpoint's head vectors are kept, in
    the dtype they came in (fp16 weights stay fp16).

    What is sketched. With θ_t a head's vector at checkpoint t, the record is s_t = Φθ_t — but it is
    computed as a running sum, s_0 = Φθ_0 (float64) and s_t = s_{t−1} + Φδ_t with the exact update
    δ_t = θ_t − θ_{t−1}, projected in `config.projection_dtype` (float32 by default) and summed in
    float64. Sketching θ_t directly would need float64: in float32, Φθ_t − Φθ_{t−1} loses δ_t to
    cancellation once ‖δ‖/‖θ‖ ≲ 1e-4 (a relative error of ~1e-7·‖θ‖/‖δ‖ per sketch entry). δ_t is
    formed from the weights themselves (exact for fp16/bf16/fp32 weights), so the float32 sketch of
    δ_t is accurate to ~1e-6 of ‖δ_t‖ however small the update, and s_t − s_{t−1} recovers it from
    the float64 sum. Records keep their meaning (Φθ_t, float64, [L, H, d]) and stay comparable with
    ones made by sketching θ_t in float64. The cost: s_t depends on s_{t−1}, so resuming needs the
    last record's sketch as well as its weights: `prime(weights, step, sketch=recorded_sketch)`
    (without `sketch=`, s_{t−1} is recomputed as Φθ_{t−1} in float64, which agrees to rounding but
    is not bit-identical). In exact mode the record is θ_t itself (compute dtype) and nothing is summed.

    The update norm ‖δ_t‖ is exact up to float32 rounding of 256-entry partial sums (relative error
    ~1e-7; the partial sums are added in float64).

    Processing goes over segments of `SEGMENT` columns: the segment of every head's vector is
    assembled (float32), differenced against the stored previous vectors, normed, projected with
    the matching columns of Φ, and written over the stored previous vectors. Each Φ block is read
    once per checkpoint (projecting layer by layer instead read all of Φ once per layer: 3× slower
    at this model size, memory-bound). Memory bound (L layers, H heads, P = head-vector length,
    d = sketch dim, b = bytes per element of the weights as given, T checkpoints so far), beyond
    the caller's weights:
      * the previous checkpoint's head vectors: L·H·P·b bytes (fp16 weights: 2 bytes);
      * two float32 [L·H, SEGMENT] work buffers and one [L·H, d] accumulator;
      * the running sum L·H·d·8 bytes; Φ cache ≤ config.cache_bytes (d·P·4 bytes when it fits;
        blocks are regenerated otherwise, at ~12 ms per 16384×100 block here);
      * history (if keep_history): T·L·H·(d+1)·8 bytes; in exact mode d = P, so the history is the
        whole per-head trajectory: use exact mode only for toy models.
    Pythia-1B-like (16 layers, 8 heads, d_model 2048, d_head 256 → P = 2.1M, fp16): 537 MB of
    previous vectors, 2 × 2 MB of work buffers, Φ (840 MB) only partly cached at the default
    256 MiB, history ≈ 100 kB per checkpoint.

    Speed, measured with benchmarks/bench_extraction.py (GPT-NeoX 100M, 8 layers × 12 heads,
    P = 196,608, 19M attention parameters per checkpoint, fp16; 1 thread, shared 2-core AMD EPYC at
    load 1.7–3): per checkpoint, reading the attention tensors 16–54 ms, assembling head-vector
    segments 7–15 ms, the difference 8–18 ms, the norm 5–10 ms, storing θ 3–6 ms, and the d = 100
    projection 47–83 ms in float32 (2·d flops per parameter at ~75 GFLOP/s; float64: 2.1–2.4× that;
    layer by layer instead of by column segment: 1.5–1.8×) or ~15–30 ms as a CountSketch (independent
    of d). End to end 126–180 ms per checkpoint (Gaussian) and ~100 ms (CountSketch) against
    1.2–2.2 s for booting a TransformerBridge per checkpoint: 9–13× and 19–20× in the same runs. A
    Φ larger than `cache_bytes` (d = 500 here: 393 MB) is regenerated per checkpoint: ~2 s each.
    """

    def __init__(self, config: SpectralConfig | None = None, *, keep_history: bool = True) -> None:
        self.config = config or SpectralConfig()
        self.keep_history = keep_history
        self.projector: GaussianSketch | CountSketch | ExactProjector | None = None
        self._prev: Tensor | None = None  # [L, H, P] in the dtype the weights came in
        self._prev_step: int | None = None
        self._sum: Tensor | None = None  # s_{t−1} [L, H, d] float64 (sketch mode)
        self._buf: tuple[Tensor, Tensor] | None = None  # [L·H, SEGMENT] work buffers (θ_t, δ_t)
        self._steps: list[int] = []
        self._sketches: list[Tensor] = []
        self._norms: list[Tensor] = []

    # -- input handling
    def _open(self, weights, step: int) -> _Checkpoint:
        ck = _Checkpoint(weights, step)
        if self._prev is not None and ck.shape != tuple(self._prev.shape):
            raise ValueError(f"step {step}: head vectors have shape {ck.shape} but earlier checkpoints "
                             f"had {tuple(self._prev.shape)}; a series must keep one architecture")
        if self._prev_step is not None and step <= self._prev_step:
            raise ValueError(f"step {step} is not after the previous step {self._prev_step}; "
                             "feed checkpoints oldest first")
        ck.check_finite()
        if self.projector is None:
            self.projector = make_projector(self.config, ck.shape[-1])
        elif self.projector.in_dim != ck.shape[-1]:
            raise ValueError(f"step {step}: P={ck.shape[-1]} differs from the series' P={self.projector.in_dim}")
        return ck

    def _buffers(self, ck: _Checkpoint) -> tuple[Tensor, Tensor]:
        rows = ck.shape[0] * ck.shape[1]
        if self._buf is None or self._buf[0].dtype != ck.work_dtype or self._buf[0].shape[0] != rows:
            self._buf = tuple(torch.empty(rows, SEGMENT, dtype=ck.work_dtype) for _ in range(2))
        return self._buf

    def _new_prev(self, ck: _Checkpoint) -> Tensor:
        """Where θ_t is stored for the next update, in the dtype it came in (so it is stored exactly):
        the old buffer when that dtype is the same (each segment is overwritten only after use)."""
        if self._prev is not None and self._prev.dtype == ck.dtype:
            return self._prev
        return torch.empty(ck.shape, dtype=ck.dtype)

    def _ingest(self, ck: _Checkpoint, *, record: bool, project_theta: bool) -> tuple[Tensor | None, Tensor]:
        """One pass over the columns: (sketch or None, norms); stores θ_t as the previous vectors.

        project_theta: return Φθ_t (float64) instead of s_{t−1} + Φδ_t (first checkpoint, priming).
        """
        n_layers, n_heads, p = ck.shape
        rows = n_layers * n_heads
        cur_buf, delta_buf = self._buffers(ck)
        new_prev = self._new_prev(ck)
        prev_flat = None if self._prev is None else self._prev.view(rows, p)
        new_flat = new_prev.view(rows, p)
        exact = isinstance(self.projector, ExactProjector)
        sq = torch.zeros(rows, dtype=torch.float64)
        want = record or project_theta
        if exact and want:
            out = torch.empty(rows, p, dtype=self.config.compute_dtype)
        elif want:
            pdt = torch.float64 if project_theta else self.projector.dtype
            out = torch.zeros(rows, self.projector.dim, dtype=pdt)
        for lo, hi in ck.segments():
            cur = ck.columns(lo, hi, cur_buf)
            if prev_flat is not None:
                delta = delta_buf[:, : hi - lo]
                delta.copy_(prev_flat[:, lo:hi])
                torch.sub(cur, delta, out=delta)
                sq += _sq_norms(delta)
            if exact and want:
                out[:, lo:hi] = cur
            elif want and project_theta:
                out += self.projector.project(cur, col_offset=lo, dtype=torch.float64)
            elif want:
                out += self.projector.project(delta, col_offset=lo)
            new_flat[:, lo:hi] = cur
        self._prev = new_prev
        norm = sq.sqrt() if prev_flat is not None else torch.full((rows,), math.nan, dtype=torch.float64)
        norm = norm.view(n_layers, n_heads)
        if not want:
            return None, norm
        out = out.view(n_layers, n_heads, -1)
        if exact or project_theta:
            return out, norm
        return self._sum + out.to(torch.float64), norm

    def prime(self, weights, step: int, *, sketch: Tensor | None = None) -> None:
        """Set the previous checkpoint (for resuming) without recording it.

        `sketch`: that checkpoint's recorded `SketchStep.sketch`, so that the running sum continues
        bit-identically. Without it, Φθ is recomputed in float64 (equal up to rounding).
        """
        step = int(step)
        ck = self._open(weights, step)
        gaussian = not isinstance(self.projector, ExactProjector)
        shape = (*ck.shape[:2], self.projector.dim)
        if sketch is not None and gaussian and tuple(sketch.shape) != shape:
            raise ValueError(f"step {step}: the recorded sketch has shape {tuple(sketch.shape)} but this "
                             f"sketcher makes {shape}; resume with the settings the run was recorded with")
        self._prev, self._prev_step = None, None  # priming replaces any state
        theta, _ = self._ingest(ck, record=False, project_theta=gaussian and sketch is None)
        self._prev_step = step
        if gaussian:
            self._sum = sketch.to(torch.float64).clone() if sketch is not None else theta

    def update(self, weights, step: int) -> SketchStep:
        step = int(step)
        ck = self._open(weights, step)
        exact = isinstance(self.projector, ExactProjector)
        sketch, norm = self._ingest(ck, record=True, project_theta=not exact and self._prev is None)
        self._prev_step = step
        if not exact:
            self._sum = sketch
        if self.keep_history:
            self._steps.append(step)
            self._sketches.append(sketch)
            self._norms.append(norm)
        return SketchStep(step=step, sketch=sketch, update_norm=norm)

    # -- history
    def _need_history(self) -> None:
        if not self.keep_history:
            raise RuntimeError("keep_history=False: stack the SketchStep records yourself")
        if not self._steps:
            raise ValueError(f"no checkpoint has been fed yet; need at least {self.config.window + 1}")

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    @property
    def sketches(self) -> Float[Tensor, "T layer head d"]:
        self._need_history()
        return torch.stack(self._sketches)

    @property
    def update_norms(self) -> Float[Tensor, "T layer head"]:
        self._need_history()
        return torch.stack(self._norms)

    def fingerprint(self) -> pd.DataFrame:
        """Long fingerprint of everything fed so far (exact update norms); needs ≥ W+1 checkpoints."""
        self._need_history()
        check_series_length(len(self._steps), self.config.window)
        return fingerprint(self.sketches, self._steps, config=self.config, update_norms=self.update_norms)

    def provenance(self) -> dict:
        exact = isinstance(self.projector, ExactProjector) or self.config.exact
        record = ("theta_t (exact mode)" if exact else
                  f"s_t = s_(t-1) + P delta_t (P delta_t in {self.config.projection_dtype}, sum in float64), "
                  "s_0 = P theta_0 in float64")
        return {"config": self.config.to_dict(), "record": record,
                "projector": self.projector.provenance() if self.projector is not None else None}
