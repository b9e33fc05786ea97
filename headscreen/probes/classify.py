"""Head classes and circuits from selectivity, every threshold in one frozen config (docs/methods.md#selectivity-screen).

- best class: the argmax class if its selectivity is >= class_min (30x), else "unclassified";
- induction circuit: EVERY head with induction selectivity >= induction_circuit (50x), whatever
  its best class (circuit heads are often best-classified as BOS);
- previous-token circuit: best class "previous" at >= previous_circuit (100x);
- BOS head: best class "first" at >= class_min.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from headscreen.probes.selectivity import CLASSES

UNCLASSIFIED = "unclassified"
CLASS_COLUMNS = [
    "layer",
    "head",
    "probe",
    "best_class",
    "best_selectivity",
    "induction_selectivity",
    "in_induction_circuit",
    "in_previous_circuit",
    "is_bos",
]


@dataclass(frozen=True)
class ScreenThresholds:
    """Every threshold and fixed draw of the selectivity screen (docs/methods.md#participation-ratio, docs/methods.md#selectivity-screen)."""

    class_min: float = 30.0  # best class must reach this selectivity
    induction_circuit: float = 50.0  # induction circuit membership, over all heads
    previous_circuit: float = 100.0  # previous-token circuit (best class previous)
    sink_eps: float = 0.3  # Gu sink: α₁ > eps
    n_null_positions: int = 50  # fixed base positions in [1, T-6)
    null_position_seed: int = 0  # RandomState seed of the base positions
    n_null_draws: int = 20  # random non-special target draws for the null z-score
    null_draw_seed: int = 1
    # where null targets are drawn: "pair" = the key range the [A, B] pair occupies in the batch,
    # [min a_pos, max a_pos + 2), which matches the induction/duplicate targets' positions [I];
    # "all" = every non-special position [1, T-6)
    null_window: str = "pair"
    copying_gap: float = 1.0  # nats; loss_first - loss_second above this = in-context copying
    pr_top_fraction: float = 0.18  # share of heads picked by the PR integral
    pr_rule: str = "right"  # "right" or "trapezoid"

    def __post_init__(self) -> None:
        for name in ("class_min", "induction_circuit", "previous_circuit"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"ScreenThresholds.{name}={getattr(self, name)} must be > 0 (a selectivity ratio)"
                )
        if not 0 < self.sink_eps < 1:
            raise ValueError(f"ScreenThresholds.sink_eps={self.sink_eps} must be in (0, 1); Gu uses 0.3")
        if self.n_null_positions < 1:
            raise ValueError(
                f"ScreenThresholds.n_null_positions={self.n_null_positions} must be >= 1; FP uses 50"
            )
        if self.n_null_draws < 2:
            raise ValueError(
                f"ScreenThresholds.n_null_draws={self.n_null_draws} must be >= 2 for a null sd; the published screen uses 20"
            )
        if not 0 < self.pr_top_fraction <= 1:
            raise ValueError(
                f"ScreenThresholds.pr_top_fraction={self.pr_top_fraction} must be in (0, 1]; FP uses 0.18"
            )
        if self.null_window not in ("pair", "all"):
            raise ValueError(f"ScreenThresholds.null_window={self.null_window!r} must be 'pair' or 'all'")
        if self.pr_rule not in ("right", "trapezoid"):
            raise ValueError(f"ScreenThresholds.pr_rule={self.pr_rule!r} must be 'right' or 'trapezoid'")
        if not self.copying_gap > 0:
            raise ValueError(f"ScreenThresholds.copying_gap={self.copying_gap} must be > 0 (nats)")

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_THRESHOLDS = ScreenThresholds()


def classify(selectivity: pd.DataFrame, thresholds: ScreenThresholds = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """`classes` rows from long selectivity rows (`layer`, `head`, `probe`, `class`, `selectivity`, opt. `step`).

    Returns the columns of classes.parquet (with `step` first when the input has it).
    """
    keys = (["step"] if "step" in selectivity.columns else []) + ["layer", "head", "probe"]
    wide = selectivity.pivot_table(index=keys, columns="class", values="selectivity", aggfunc="first")
    missing = [c for c in CLASSES if c not in wide.columns]
    if missing:
        raise ValueError(f"selectivity rows lack classes {missing}; expected all of {list(CLASSES)}")
    vals = wide[list(CLASSES)].to_numpy(dtype=float)
    filled = np.where(np.isnan(vals), -np.inf, vals)
    best_idx = filled.argmax(1)
    best_sel = vals[np.arange(len(vals)), best_idx]
    best_raw = np.array(CLASSES, dtype=object)[best_idx]
    ok = np.nan_to_num(best_sel, nan=-np.inf) >= thresholds.class_min
    best = np.where(ok, best_raw, UNCLASSIFIED)
    ind = wide["induction"].to_numpy(dtype=float)
    out = wide.index.to_frame(index=False)
    out["best_class"] = best
    out["best_selectivity"] = best_sel
    out["induction_selectivity"] = ind
    out["in_induction_circuit"] = np.nan_to_num(ind, nan=-np.inf) >= thresholds.induction_circuit
    out["in_previous_circuit"] = (best_raw == "previous") & (
        np.nan_to_num(best_sel, nan=-np.inf) >= thresholds.previous_circuit
    )
    out["is_bos"] = (best == "first") & ok
    out["layer"] = out["layer"].astype(int)
    out["head"] = out["head"].astype(int)
    return out[keys[:-3] + CLASS_COLUMNS].reset_index(drop=True)


def circuits(classes: pd.DataFrame) -> dict[str, list[list[int]]]:
    """{'induction', 'previous', 'bos'} -> sorted [[layer, head], ...] of one (step, probe) classes table."""
    pick = {"induction": "in_induction_circuit", "previous": "in_previous_circuit", "bos": "is_bos"}
    return {
        name: sorted([int(r.layer), int(r.head)] for r in classes[classes[col]].itertuples())
        for name, col in pick.items()
    }
