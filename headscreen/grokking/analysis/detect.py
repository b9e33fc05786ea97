"""Event detection on training curves: grokking, memorisation, defect onset, lead time, power law.

All functions take plain sequences (steps and values, one measurement per step) and return a step
(int) or None when the event never happens. Definitions and defaults: docs/methods.md, "Grokking
analyses". Rules shared by all detectors:

* `steps` must be strictly increasing integers and as long as `values`; otherwise ValueError.
* A NaN measurement never counts as crossing a threshold (it neither triggers nor breaks a baseline:
  baselines use the finite values among their measurements).
* A series too short for its baseline raises a ValueError that names the counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from headscreen.spectral.fingerprint import check_steps

GROK_THRESHOLD = 0.95  # test accuracy (THESIS scripts; CURV uses 0.90)
MEMORISATION_THRESHOLD = 0.99  # train accuracy
RATIO_FACTOR, RATIO_FLOOR, RATIO_BASELINE = 10.0, 20.0, 3
Z_SIGMAS, Z_BASELINE, Z_CONSECUTIVE = 3.0, 10, 2
PUBLISHED_ONSET = {"search_from": 2, "baseline_floor": 0.1}  # onset_ratio as the published study's code runs it


class SeriesTooShort(ValueError):
    """A series holds fewer measurements than a rule's baseline needs."""


def _series(steps: Sequence[int], values: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(steps)
    v = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or v.ndim != 1 or s.shape != v.shape:
        raise ValueError(f"{what}: steps and values must be 1-d and of equal length; got {s.shape} and {v.shape}")
    if s.size == 0:
        raise ValueError(f"{what}: the series is empty; give at least one measurement")
    s = check_steps(s, what)
    return s, v


def _first_run(hit: np.ndarray, consecutive: int) -> int | None:
    """Index of the first of `consecutive` True values in a row, or None."""
    if consecutive < 1:
        raise ValueError(f"consecutive={consecutive} must be >= 1")
    run = hit.copy()
    n = hit.size
    for k in range(1, consecutive):
        run[: n - k] &= hit[k:]
        run[max(n - k, 0):] = False
    idx = np.flatnonzero(run)
    return int(idx[0]) if idx.size else None


def threshold_step(steps: Sequence[int], values: Sequence[float], threshold: float, *,
                   consecutive: int = 1, what: str = "series") -> int | None:
    """First step with value >= threshold (held for `consecutive` measurements); None if never."""
    s, v = _series(steps, values, what)
    if not math.isfinite(threshold):
        raise ValueError(f"{what}: threshold must be finite; got {threshold}")
    i = _first_run(np.nan_to_num(v, nan=-np.inf) >= threshold, consecutive)
    return None if i is None else int(s[i])


def grok_step(steps, test_acc, threshold: float = GROK_THRESHOLD, *, consecutive: int = 1) -> int | None:
    """First evaluation step with test accuracy >= threshold (default 0.95); None: never groks."""
    return threshold_step(steps, test_acc, threshold, consecutive=consecutive, what="test accuracy")


def memorisation_step(steps, train_acc, threshold: float = MEMORISATION_THRESHOLD) -> int | None:
    """First evaluation step with train accuracy >= threshold (default 0.99); None if never."""
    return threshold_step(steps, train_acc, threshold, what="train accuracy")


def onset_ratio(steps, defect, *, factor: float = RATIO_FACTOR, floor: float = RATIO_FLOOR,
                n_baseline: int = RATIO_BASELINE, search_from: int | None = None,
                baseline_floor: float = 0.0) -> int | None:
    """Ratio rule: first step with D > factor × max(median(first n_baseline D), baseline_floor) and D > floor.

    The search starts at measurement index `search_from` (None: n_baseline, i.e. the baseline
    measurements themselves are not candidates: our reading of the thesis). The published study's code
    starts at index 2 (the third measurement, part of its baseline) with baseline_floor 0.1
    (`PUBLISHED_ONSET`).
    """
    s, d = _series(steps, defect, "defect")
    if n_baseline < 1:
        raise ValueError(f"n_baseline={n_baseline} must be >= 1")
    if d.size <= n_baseline:
        raise SeriesTooShort(f"the ratio onset rule needs more than {n_baseline} defect measurements (the baseline "
                         f"plus at least one); got {d.size}: measure the defect more often or train longer")
    base = d[:n_baseline]
    if not np.isfinite(base).any():
        raise ValueError(f"the first {n_baseline} defect measurements are all NaN; no baseline for the ratio rule")
    start = n_baseline if search_from is None else search_from
    if start < 0:
        raise ValueError(f"search_from={search_from} must be >= 0")
    thr = max(factor * max(float(np.nanmedian(base)), baseline_floor), floor)
    hit = np.nan_to_num(d, nan=-np.inf) > thr
    hit[:start] = False
    i = _first_run(hit, 1)
    return None if i is None else int(s[i])


def onset_z(steps, defect, *, n_sigma: float = Z_SIGMAS, n_baseline: int = Z_BASELINE,
            consecutive: int = Z_CONSECUTIVE) -> int | None:
    """z rule: the first of `consecutive` measurements in a row with D > mean + n_sigma·std of the first
    n_baseline measurements (std with ddof = 1; the search starts after the baseline)."""
    s, d = _series(steps, defect, "defect")
    if n_baseline < 2:
        raise ValueError(f"n_baseline={n_baseline} must be >= 2 (a standard deviation needs two values)")
    if d.size < n_baseline + consecutive:
        raise SeriesTooShort(f"the z onset rule needs at least {n_baseline + consecutive} defect measurements "
                         f"({n_baseline} baseline + {consecutive} consecutive); got {d.size}")
    base = d[:n_baseline]
    base = base[np.isfinite(base)]
    if base.size < 2:
        raise ValueError(f"the first {n_baseline} defect measurements hold {base.size} finite values; "
                         "the z rule needs at least 2")
    thr = float(base.mean() + n_sigma * base.std(ddof=1))
    hit = np.nan_to_num(d, nan=-np.inf) > thr
    hit[:n_baseline] = False
    i = _first_run(hit, consecutive)
    return None if i is None else int(s[i])


def lead_time(t_grok: int | None, t_onset: int | None) -> int | None:
    """ℓ = t_grok − t_onset (negative when the onset comes after grokking); None if either is None."""
    if t_grok is None or t_onset is None:
        return None
    return int(t_grok) - int(t_onset)


@dataclass(frozen=True)
class PowerLaw:
    """ℓ ≈ prefactor · t_grok^alpha, fitted by least squares in log–log space."""

    alpha: float
    prefactor: float
    r2: float
    n: int  # points used (both values finite and > 0)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "prefactor": self.prefactor, "r2": self.r2, "n": self.n}


MIN_FIT_POINTS = 3


def fit_power_law(t_grok: Sequence[float], lead: Sequence[float]) -> PowerLaw:
    """Fit log ℓ = α log t_grok + c over the pairs where both are finite and > 0.

    Pairs with a non-positive or missing lead time (no onset, onset after grokking, never grokked)
    cannot enter a log–log fit and are left out; `n` says how many were used. Raises a ValueError if
    fewer than 3 remain (two points always fit with R² = 1) or all t_grok are equal.
    """
    t = np.asarray(t_grok, dtype=np.float64)
    ell = np.asarray(lead, dtype=np.float64)
    if t.shape != ell.shape or t.ndim != 1:
        raise ValueError(f"t_grok and lead must be 1-d and of equal length; got {t.shape} and {ell.shape}")
    ok = np.isfinite(t) & np.isfinite(ell) & (t > 0) & (ell > 0)
    n = int(ok.sum())
    if n < MIN_FIT_POINTS:
        raise ValueError(f"the power-law fit needs at least {MIN_FIT_POINTS} runs with a positive lead time and a "
                         f"grokking step; got {n} of {t.size}: add runs to the sweep")
    x, y = np.log(t[ok]), np.log(ell[ok])
    if np.ptp(x) == 0:
        raise ValueError("all runs grokked at the same step; the exponent is undefined: widen the sweep")
    alpha, c = np.polyfit(x, y, 1)
    resid = y - (alpha * x + c)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return PowerLaw(alpha=float(alpha), prefactor=float(math.exp(c)), r2=r2, n=n)


# ----------------------------------------------------------------------------------------------
# Table-level helpers (curves.parquet / defect.parquet of a run directory)


def curve_events(curves: pd.DataFrame, *, grok_threshold: float = GROK_THRESHOLD,
                 memorisation_threshold: float = MEMORISATION_THRESHOLD) -> dict[str, dict]:
    """Per task: grok_step, memorisation_step, final_train_acc, final_test_acc (from curves.parquet)."""
    need = {"step", "task", "train_acc", "test_acc"}
    missing = need - set(curves.columns)
    if missing:
        raise ValueError(f"curves table lacks columns {sorted(missing)}; expected step, task, train_loss, "
                         "test_loss, train_acc, test_acc")
    out = {}
    for task, df in curves.sort_values("step").groupby("task", sort=True):
        out[str(task)] = {
            "grok_step": grok_step(df["step"], df["test_acc"], grok_threshold),
            "memorisation_step": memorisation_step(df["step"], df["train_acc"], memorisation_threshold),
            "final_train_acc": float(df["train_acc"].iloc[-1]),
            "final_test_acc": float(df["test_acc"].iloc[-1]),
        }
    if not out:
        raise ValueError("curves table is empty; the run has no evaluation yet")
    return out


def defect_onsets(defect: pd.DataFrame, column: str = "defect_median") -> dict[str, int | None]:
    """Both onset rules on defect.parquet; a series too short for a rule gives None for that rule."""
    df = defect.sort_values("step")
    out: dict[str, int | None] = {}
    for name, rule in (("ratio", onset_ratio), ("z", onset_z)):
        try:
            out[name] = rule(df["step"].to_numpy(), df[column].to_numpy())
        except SeriesTooShort:
            out[name] = None
    return out
