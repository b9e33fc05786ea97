"""Across checkpoints: when each head joins a class for good, lead times, BOS heads in layers 0-1.

All functions read the long `classes` table (one row per step, layer, head, probe; see classify.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# class name -> how membership is read from a classes row
MEMBERSHIP: dict[str, tuple[str, str | None]] = {
    "induction": ("in_induction_circuit", None),  # induction selectivity >= induction_circuit, any best class
    "previous": ("in_previous_circuit", None),  # best class previous at >= previous_circuit
    "bos": ("is_bos", None),  # best class first at >= class_min
    "duplicate": ("best_class", "duplicate"),
    "self": ("best_class", "self"),
    "local": ("best_class", "local"),
}


def _member(df: pd.DataFrame, cls: str) -> pd.Series:
    col, value = MEMBERSHIP[cls]
    return df[col].astype(bool) if value is None else df[col] == value


def _first_persistent(steps: np.ndarray, member: np.ndarray) -> float:
    """The first step from which `member` holds at every later step, through the last (NaN if none)."""
    if member.size == 0 or not member[-1]:
        return float("nan")
    misses = np.flatnonzero(~member)
    start = 0 if misses.size == 0 else misses[-1] + 1
    return float(steps[start])


def emergence_steps(classes: pd.DataFrame) -> pd.DataFrame:
    """Per (probe, layer, head, class): `emergence_step`, the first checkpoint from which the head stays
    in the class until the last checkpoint (NaN when it is not in the class at the last one).

    A head missing from a step counts as not a member at that step.
    """
    steps_all = np.sort(classes["step"].unique())
    rows = []
    for (probe, layer, head), g in classes.groupby(["probe", "layer", "head"], sort=True):
        g = g.set_index("step").reindex(steps_all)
        for cls in MEMBERSHIP:
            member = _member(g, cls).fillna(False).to_numpy(dtype=bool)
            rows.append(
                {
                    "probe": probe,
                    "layer": int(layer),
                    "head": int(head),
                    "class": cls,
                    "emergence_step": _first_persistent(steps_all, member),
                }
            )
    return pd.DataFrame(rows, columns=["probe", "layer", "head", "class", "emergence_step"])


def lead_times(onsets: pd.DataFrame, emergence: pd.DataFrame) -> pd.DataFrame:
    """lead_time = emergence_step - onset_step for every (head, spectral metric, probe, class) where
    both exist. `onsets` has the onsets.parquet columns `layer`, `head`, `metric`, `onset_step`.
    A positive lead time means the spectral onset came first.
    """
    need = {"layer", "head", "metric", "onset_step"}
    if not need <= set(onsets.columns):
        raise ValueError(f"onsets needs columns {sorted(need)}; got {sorted(onsets.columns)}")
    em = emergence.dropna(subset=["emergence_step"])
    on = onsets.dropna(subset=["onset_step"])
    out = em.merge(on[["layer", "head", "metric", "onset_step"]], on=["layer", "head"], how="inner")
    out["lead_time"] = out["emergence_step"] - out["onset_step"]
    cols = ["probe", "layer", "head", "class", "metric", "onset_step", "emergence_step", "lead_time"]
    return out[cols].sort_values(["probe", "class", "layer", "head", "metric"]).reset_index(drop=True)


def bos_layers01(classes: pd.DataFrame) -> pd.DataFrame:
    """Per (step, probe): the number of BOS heads in layer 0, in layer 1, and both together.

    The published screens (docs/methods.md#selectivity-screen) found 0 in every model at every
    checkpoint; a non-zero count is worth a look.
    """
    df = classes.assign(
        _l0=(classes["layer"] == 0) & classes["is_bos"].astype(bool),
        _l1=(classes["layer"] == 1) & classes["is_bos"].astype(bool),
    )
    out = df.groupby(["step", "probe"], sort=True)[["_l0", "_l1"]].sum().reset_index()
    out = out.rename(columns={"_l0": "bos_layer0", "_l1": "bos_layer1"})
    out["bos_layer0"] = out["bos_layer0"].astype(int)
    out["bos_layer1"] = out["bos_layer1"].astype(int)
    out["bos_layers01"] = out["bos_layer0"] + out["bos_layer1"]
    return out
