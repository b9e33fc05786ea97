"""Null-distribution statistics of a circuit ablation against matched-random draws.

For one metric: observed = the circuit's drop (positive = worse, see `metrics.metric_drop`),
null = the drops of the n matched-random draws.

- effect ratio = observed / mean(null); None (JSON null) when mean(null) <= 1e-12: a null that
  does not degrade the model on average gives no scale (division by ~0), and a negative ratio
  ("-15x" when the random heads slightly *help*) would read as an effect;
- empirical one-sided p-value = (1 + #{null >= observed}) / (1 + n), in (0, 1], never 0. The
  validation draws distinct head sets (every set when fewer exist than draws), so n counts distinct
  sets and p is never below 1 / (1 + number of sets that exist).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class NullTest:
    metric: str
    observed_drop: float
    null_mean_drop: float
    null_std_drop: float
    null_q05: float
    null_q95: float
    effect_ratio: float | None
    p_value: float
    n_null: int

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def empirical_p_value(observed: float, null: np.ndarray) -> float:
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def null_test(metric: str, observed_drop: float, null_drops) -> NullTest:
    """The circuit's drop against the drops of the matched-random draws (one per distinct head set)."""
    null = np.asarray(null_drops, dtype=np.float64)
    if null.ndim != 1 or null.size == 0:
        raise ValueError(f"null_drops for {metric} must be a non-empty 1-d array, got shape {null.shape}")
    mean = float(null.mean())
    ratio = None if mean <= 1e-12 else float(observed_drop) / mean
    return NullTest(
        metric=metric,
        observed_drop=float(observed_drop),
        null_mean_drop=mean,
        null_std_drop=float(null.std(ddof=1)) if null.size > 1 else 0.0,
        null_q05=float(np.quantile(null, 0.05)),
        null_q95=float(np.quantile(null, 0.95)),
        effect_ratio=ratio,
        p_value=empirical_p_value(float(observed_drop), null),
        n_null=int(null.size),
    )
