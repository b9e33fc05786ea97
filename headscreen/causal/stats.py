"""Null-distribution statistics of a circuit ablation against matched-random draws.

For one metric: observed = the circuit's drop (positive = worse, see `metrics.metric_drop`),
null = the drops of the n matched-random draws.

- effect ratio = observed / mean(null); None (JSON null) when mean(null) <= 1e-12: a null that
  does not degrade the model on average gives no scale (division by ~0), and a negative ratio
  ("-15x" when the random heads slightly *help*) would read as an effect;
- empirical one-sided p-value = (1 + #{null >= observed}) / (1 + n), in (0, 1], never 0.
- with the draws' head sets given, also the exact p-value over the DISTINCT sets,
  (1 + #{distinct sets with drop >= observed}) / (1 + n_distinct). A small model can have few
  matched-random sets (2 free heads in a layer give one): then 100 draws repeat the same few sets,
  and only `p_value_distinct` (never below 1 / (1 + n_distinct)) says how much the null can show.
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
    n_distinct: int | None = None
    p_value_distinct: float | None = None

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def empirical_p_value(observed: float, null: np.ndarray) -> float:
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def null_test(metric: str, observed_drop: float, null_drops, draw_sets=None) -> NullTest:
    """`draw_sets[i]` identifies draw i's head set (hashable); same set => same drop."""
    null = np.asarray(null_drops, dtype=np.float64)
    if null.ndim != 1 or null.size == 0:
        raise ValueError(f"null_drops for {metric} must be a non-empty 1-d array, got shape {null.shape}")
    mean = float(null.mean())
    ratio = None if mean <= 1e-12 else float(observed_drop) / mean
    n_distinct = p_distinct = None
    if draw_sets is not None:
        if len(draw_sets) != null.size:
            raise ValueError(f"draw_sets has {len(draw_sets)} entries for {null.size} null drops")
        first = {}
        for key, drop in zip(draw_sets, null, strict=True):
            first.setdefault(key, drop)
        n_distinct = len(first)
        p_distinct = empirical_p_value(float(observed_drop), np.fromiter(first.values(), dtype=np.float64))
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
        n_distinct=n_distinct,
        p_value_distinct=p_distinct,
    )
