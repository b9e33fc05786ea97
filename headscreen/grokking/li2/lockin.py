"""The stage-III lock-in detector on a per-epoch r₂₃ series, and its calibration on controls.

Definition (docs/methods.md, "Li₂ network and the stage-III lock-in detector"): given r₂₃ per window
(window = the W updates ending at epoch e, from `headscreen.spectral.gram_stats`), the detector fires
at the first epoch e ≥ `skip` with r₂₃(e) > τ that is a local peak: r₂₃(e) ≥ r₂₃ of the `half_width`
windows on each side (windows past the end do not count). τ is calibrated on control runs so that
none of them fires: τ = margin × the largest r₂₃ any control reaches in the epochs ≥ skip.
The rank of the updates at lock-in is k* (argmax σ_j/σ_{j+1}) of the window at the firing epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from headscreen.config.core import ConfigError, from_mapping
from headscreen.grokking.li2.network import critical_fraction
from headscreen.spectral import gram_stats


@dataclass(frozen=True)
class Li2Controls:
    """The `li2_controls:` section of model_configs/grok-li2.yaml: the control runs τ is calibrated on.

    subcritical_train_frac: train fraction of the sub-critical control (below 2.7482·ln M / M of the li2 M).
    calibration_seeds:      seeds of the calibration controls (apart from the studied seeds).
    margin:                 τ = margin × the calibration controls' largest r₂₃ (`calibrate_tau`).
    """

    subcritical_train_frac: float
    calibration_seeds: tuple[int, ...]
    margin: float = 1.05

    def __post_init__(self) -> None:
        if not 0.0 < self.subcritical_train_frac < 1.0:
            raise ConfigError(f"subcritical_train_frac = {self.subcritical_train_frac!r} is invalid: use a fraction "
                              "in (0, 1) below the critical fraction 2.7482 ln M / M")
        if not self.calibration_seeds or any(s < 0 for s in self.calibration_seeds):
            raise ConfigError(f"calibration_seeds = {list(self.calibration_seeds)!r} is invalid: list one or more "
                              "seeds >= 0, e.g. [100, 101, 102]")
        if not self.margin >= 1.0:
            raise ConfigError(f"margin = {self.margin!r} is invalid: use a margin >= 1 so that the controls stay "
                              "below tau, e.g. 1.05")

    @classmethod
    def from_dict(cls, data: dict, where: str = "li2_controls") -> Li2Controls:
        return from_mapping(cls, data, where)

    def check_subcritical(self, m: int, where: str = "li2_controls") -> None:
        """The sub-critical control must lie below the critical fraction of modulus `m`."""
        critical = critical_fraction(m)
        if not self.subcritical_train_frac < critical:
            raise ConfigError(f"{where}: subcritical_train_frac = {self.subcritical_train_frac} is not below the "
                              f"critical fraction {critical:.3f} of M = {m}; lower it")


@dataclass(frozen=True)
class LockIn:
    fired: bool
    epoch: int | None  # window end epoch where it fired
    r23: float | None  # r23 there
    rank: int | None  # k* of the window there


def r23_series(grams: Float[Tensor, "n_win W W"]) -> tuple[np.ndarray, np.ndarray]:
    """(r₂₃, k*) per window, through headscreen.spectral.gram_stats."""
    st = gram_stats(grams)
    return st.r_23.numpy(), st.kstar.numpy()


def first_peak_above(r23: np.ndarray, tau: float, *, skip: int = 0, half_width: int = 2) -> int | None:
    """Index of the first window ≥ skip with r23 > tau that is a local maximum over ±half_width."""
    r = np.nan_to_num(np.asarray(r23, dtype=np.float64), nan=-np.inf)
    n = r.size
    for i in range(max(skip, 0), n):
        if r[i] > tau and r[i] >= r[max(0, i - half_width): i + half_width + 1].max():
            return i
    return None


def detect_lockin(r23: np.ndarray, kstar: np.ndarray, epochs: np.ndarray, tau: float, *, skip: int = 0,
                  half_width: int = 2) -> LockIn:
    i = first_peak_above(r23, tau, skip=skip, half_width=half_width)
    if i is None:
        return LockIn(False, None, None, None)
    return LockIn(True, int(epochs[i]), float(r23[i]), int(kstar[i]))


def calibrate_tau(controls: Sequence[np.ndarray], *, skip: int = 0, margin: float = 1.05) -> float:
    """τ = margin × max r₂₃ over the controls' windows ≥ skip: no control fires at this τ."""
    if not controls:
        raise ValueError("calibrate_tau needs at least one control r23 series")
    if not margin >= 1.0:
        raise ValueError(f"margin={margin} must be >= 1 so that the controls stay below tau; use 1.05")
    peaks = [np.nanmax(np.asarray(c, dtype=np.float64)[skip:]) for c in controls if np.asarray(c)[skip:].size]
    if not peaks:
        raise ValueError(f"skip={skip} leaves no control window; lower skip")
    return float(margin * max(peaks))


def update_rank(grams: Float[Tensor, "n_win W W"], index: int) -> int:
    """k* of one window's Gram (the rank of the updates in that window)."""
    return int(gram_stats(grams[index : index + 1]).kstar[0])


def stack_gram_windows(deltas: Float[Tensor, "n P"], window: int) -> Float[Tensor, "n_win W W"]:
    """Every window Gram of a stored update sequence (for tests and small trajectories)."""
    from headscreen.spectral.gram import rolling_grams

    return rolling_grams(deltas.to(torch.float64), window)
