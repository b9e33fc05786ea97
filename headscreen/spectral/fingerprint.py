"""Per-head update-Gram fingerprints (docs/methods.md#per-head-update-gram-fingerprint) and their onsets (the streaming `HeadSketcher` is in sketcher.py).

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

SCALAR_METRICS = ("ratio_12", "ratio_23", "kstar", "kstar_weighted", "gap_norm", "g_23", "update_norm")
POSITION_METRICS = ("kstar", "kstar_weighted")  # `_rel` is a difference for these
COLUMNS = ("step", "layer", "head", "metric", "value")
ONSET_BASELINE_WINDOWS = 3  # windows after the transient whose median is the early baseline of `onsets`


def metric_names(window: int) -> tuple[str, ...]:
    """Base metric names of a fingerprint with window W, in table order."""
    return tuple(f"sigma_{j}" for j in range(1, window + 1)) + SCALAR_METRICS


def check_steps(steps, what: str | None = None) -> np.ndarray:
    """Training steps as int64 [T]: 1-d, integer-valued, strictly increasing (a list, array or tensor).

    `what` prefixes the error message (the series being checked).
    """
    pre = f"{what}: " if what else ""
    s = np.asarray(steps.tolist() if isinstance(steps, Tensor) else steps)
    if s.ndim != 1:
        raise ValueError(f"{pre}steps must be a 1-d sequence; got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.integer):
        if not np.all(np.isfinite(s.astype(float))) or np.any(s != np.round(s)):
            raise ValueError(f"{pre}steps must be integers (training steps); got {s[:5].tolist()}...")
    s = s.astype(np.int64)
    if np.any(np.diff(s) <= 0):
        i = int(np.argmax(np.diff(s) <= 0))
        raise ValueError(f"{pre}steps must be strictly increasing; step[{i}]={s[i]} >= step[{i + 1}]={s[i + 1]}")
    return s


def _as_steps(steps, t: int) -> np.ndarray:
    s = np.asarray(steps.tolist() if isinstance(steps, Tensor) else steps)
    if s.ndim != 1 or s.shape[0] != t:
        raise ValueError(f"steps must be a 1-d sequence with one step per checkpoint (T={t}); got shape {s.shape}")
    return check_steps(s)


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
