"""Per-head update-Gram fingerprints (METHODS §6b), their onsets, and a streaming head sketcher.

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
from .sketch import ExactProjector, GaussianSketch, make_projector

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
    """Wide fingerprint; see the module docstring. Raises if T < W + 1 (naming both)."""
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
    ws = rolling_window_stats(vectors, w, min_sigma_frac=config.min_sigma_frac, zero_tol=config.zero_tol,
                              dtype=config.compute_dtype)
    st = ws.stats
    end = ws.end_index
    if update_norms is not None:
        un = torch.as_tensor(update_norms, dtype=torch.float64)
        if tuple(un.shape) != (t, n_layers, n_heads):
            raise ValueError(f"update_norms must be [T, layer, head] = {(t, n_layers, n_heads)}; "
                             f"got {tuple(un.shape)}")
        un = un[end]
        if not torch.isfinite(un).all():
            raise ValueError("update_norms has NaN/inf at a window end (only row 0 may be NaN); "
                             "pass the norms HeadSketcher returned for every checkpoint")
    else:
        un = ws.update_norm
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
    sketch: Float[Tensor, "layer head d"]  # Φ θ_t per head (compute dtype)
    update_norm: Float[Tensor, "layer head"]  # exact ‖θ_t − θ_{t−1}‖ (float64); NaN for the first


class HeadSketcher:
    """Streams checkpoints, oldest first: sketch each head's θ_t and the exact update norm.

    `update(weights, step)` takes one checkpoint's `HeadWeights` (or an [L, H, P] tensor of head
    vectors) and returns its `SketchStep`. Only the previous checkpoint's head vectors are kept.

    Memory bound (L layers, H heads, P = head-vector length, d = sketch dim, T checkpoints so far),
    beyond the caller's HeadWeights:
      * the current checkpoint's head vectors (from `HeadWeights.head_vectors`) and the previous
        ones: 2·L·H·P·4 bytes (float32; float64 input stays float64);
      * Φ cache: ≤ config.cache_bytes (d·P·4 bytes when it fits; blocks are regenerated otherwise);
      * temporaries: one Φ block (d·block_size·8 bytes), one [L·H, block_size] float64 slice, and for
        the exact norm one layer's two float64 copies (2·H·P·8 bytes; done layer by layer);
      * history (if keep_history): T·L·H·(d+1)·8 bytes; in exact mode d = P, so the history is the
        whole per-head trajectory: use exact mode only for toy models.
    Pythia-1B-like (16 layers, 8 heads, d_model 2048, d_head 256 → P = 2.1M): 2 × 1.07 GB of head
    vectors, 270 MB for the layer-wise norm, Φ (840 MB) only partly cached at the default 256 MiB,
    history ≈ 100 kB per checkpoint. Projection speed measured here: 33.5M parameters (128 heads ×
    P = 262k) in 1.3 s uncached / 0.6 s cached on one CPU thread (float64), i.e. ~10 s per 1B-model
    checkpoint.

    To resume after an interruption, `prime(weights_of_last_recorded_checkpoint, step)` restores the
    previous vectors without producing a record.
    """

    def __init__(self, config: SpectralConfig | None = None, *, keep_history: bool = True) -> None:
        self.config = config or SpectralConfig()
        self.keep_history = keep_history
        self.projector: GaussianSketch | ExactProjector | None = None
        self._prev: Tensor | None = None
        self._prev_step: int | None = None
        self._steps: list[int] = []
        self._sketches: list[Tensor] = []
        self._norms: list[Tensor] = []

    # -- input handling
    def _vectors(self, weights, step: int) -> tuple[Tensor, bool]:
        """(head vectors [L, H, P], whether they may alias the caller's memory)."""
        if isinstance(weights, Tensor):
            v = weights
        elif hasattr(weights, "head_vectors"):
            dtype = torch.float64 if weights.W_Q.dtype == torch.float64 else torch.float32
            v = weights.head_vectors(dtype=dtype)
        else:
            raise TypeError(f"step {step}: expected HeadWeights or an [L, H, P] tensor; got {type(weights).__name__}")
        if v.ndim != 3:
            raise ValueError(f"step {step}: head vectors must be [layer, head, P]; got shape {tuple(v.shape)}")
        if not v.is_floating_point():
            raise ValueError(f"step {step}: head vectors must be floating point; got {v.dtype}")
        aliased = v is weights
        if v.dtype not in (torch.float32, torch.float64):
            v, aliased = v.to(torch.float32), False
        if not torch.isfinite(v).all():
            layer, head = (~torch.isfinite(v)).any(-1).nonzero()[0].tolist()
            raise ValueError(f"step {step}: NaN/inf weights in layer {layer} head {head}; the checkpoint "
                             "is corrupt or diverged")
        if self._prev is not None and v.shape != self._prev.shape:
            raise ValueError(f"step {step}: head vectors have shape {tuple(v.shape)} but earlier checkpoints "
                             f"had {tuple(self._prev.shape)}; a series must keep one architecture")
        if self._prev_step is not None and step <= self._prev_step:
            raise ValueError(f"step {step} is not after the previous step {self._prev_step}; "
                             "feed checkpoints oldest first")
        return v, aliased

    def _norm(self, v: Tensor) -> Tensor:
        out = torch.empty(v.shape[:2], dtype=torch.float64)
        for layer in range(v.shape[0]):
            d = v[layer].to(torch.float64) - self._prev[layer].to(torch.float64)
            out[layer] = d.pow(2).sum(-1).sqrt()
        return out

    def prime(self, weights, step: int) -> None:
        """Set the previous checkpoint (for resuming) without recording it."""
        step = int(step)
        v, aliased = self._vectors(weights, step)
        self._prev, self._prev_step = (v.detach().clone() if aliased else v), step

    def update(self, weights, step: int) -> SketchStep:
        step = int(step)
        v, aliased = self._vectors(weights, step)
        if self.projector is None:
            self.projector = make_projector(self.config, v.shape[-1])
        elif self.projector.in_dim != v.shape[-1]:
            raise ValueError(f"step {step}: P={v.shape[-1]} differs from the series' P={self.projector.in_dim}")
        sketch = self.projector.project(v)
        if self._prev is None:
            norm = torch.full(v.shape[:2], math.nan, dtype=torch.float64)
        else:
            norm = self._norm(v)
        self._prev, self._prev_step = (v.detach().clone() if aliased else v), step  # never alias the caller
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
        return {"config": self.config.to_dict(),
                "projector": self.projector.provenance() if self.projector is not None else None}
