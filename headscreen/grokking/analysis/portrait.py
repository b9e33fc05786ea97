"""The multi-task phase portrait of layer 0's query/key weights (docs/methods.md, "Phase portrait").

x = σ_1(W_Q) − σ_2(W_Q) and y = ‖W_Q W_K − W_K W_Q‖_F, where W_Q, W_K are the layer's query and key
projections in the torch `in_proj` layout: rows = output features (head h's block is rows
h·d_head..(h+1)·d_head), columns = d_model inputs, i.e. W_Q = concat_h(W_Q[h]ᵀ) ∈ ℝ^{H·d_head × d_model}
from TransformerLens-shaped W_Q [H, d_model, d_head].

* whole layer: the full H·d_head × d_model matrices. The commutator needs square matrices: when
  H·d_head ≠ d_model, y is NaN (x is still defined) and `square` is False in the table.
* per head: the d_head×d_head diagonal block of head h (rows and columns h·d_head..(h+1)·d_head),
  defined while (h+1)·d_head ≤ d_model; heads beyond that get NaN.

Each series is smoothed by a centred moving average of 3 snapshots (2 at the ends).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

SMOOTH = 3


def in_proj(w: Float[Tensor, "H d_model d_head"]) -> Float[Tensor, "Hd d_model"]:
    """TransformerLens-shaped [H, d_model, d_head] → torch in_proj rows [H·d_head, d_model]."""
    if w.ndim != 3:
        raise ValueError(f"W_Q/W_K must be [n_heads, d_model, d_head]; got shape {tuple(w.shape)}")
    return w.transpose(1, 2).reshape(-1, w.shape[1])


def _xy(q: Tensor, k: Tensor) -> tuple[float, float]:
    s = torch.linalg.svdvals(q)
    x = float(s[0] - s[1]) if s.numel() > 1 else float(s[0])
    if q.shape[0] != q.shape[1]:
        return x, float("nan")
    return x, float(torch.linalg.matrix_norm(q @ k - k @ q, ord="fro"))


def portrait_point(w_q: Float[Tensor, "H d_model d_head"], w_k: Float[Tensor, "H d_model d_head"]
                   ) -> list[dict]:
    """Rows (head = −1 for the whole layer, else the head) with x, y, square, of one snapshot."""
    if w_q.shape != w_k.shape:
        raise ValueError(f"W_Q {tuple(w_q.shape)} and W_K {tuple(w_k.shape)} must have the same shape")
    q, k = in_proj(w_q.double()), in_proj(w_k.double())
    n_heads, d_model, d_head = w_q.shape
    x, y = _xy(q, k)
    rows = [{"head": -1, "x": x, "y": y, "square": q.shape[0] == q.shape[1]}]
    for h in range(n_heads):
        lo, hi = h * d_head, (h + 1) * d_head
        if hi <= d_model:
            xh, yh = _xy(q[lo:hi, lo:hi], k[lo:hi, lo:hi])
        else:
            xh, yh = float("nan"), float("nan")
        rows.append({"head": h, "x": xh, "y": yh, "square": hi <= d_model})
    return rows


def smooth(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Centred moving average (shorter at the ends; NaN entries ignored)."""
    return pd.Series(values, dtype=np.float64).rolling(window, center=True, min_periods=1).mean().to_numpy()


def portrait_frame(points: dict[int, list[dict]], *, window: int = SMOOTH) -> pd.DataFrame:
    """points: step → portrait_point rows. Columns step, head, x, y, square, x_smooth, y_smooth."""
    rows = [{"step": int(s), **r} for s, rs in sorted(points.items()) for r in rs]
    df = pd.DataFrame(rows, columns=["step", "head", "x", "y", "square"])
    df = df.sort_values(["head", "step"]).reset_index(drop=True)
    for col in ("x", "y"):
        df[f"{col}_smooth"] = df.groupby("head")[col].transform(lambda v: smooth(v.to_numpy(), window))
    return df.sort_values(["step", "head"]).reset_index(drop=True)


def commutator_peak(df: pd.DataFrame, head: int = -1, *, after: int | None = None) -> int | None:
    """Step of the maximum of the smoothed commutator y at steps >= `after` (the memorisation step in
    analyse_run: at initialisation the random W_Q, W_K already have a large commutator); None if y is
    undefined there."""
    sub = df[df["head"] == head]
    if after is not None:
        sub = sub[sub["step"] >= after]
    y = sub["y_smooth"].to_numpy()
    if sub.empty or not np.isfinite(y).any():
        return None
    return int(sub["step"].to_numpy()[np.nanargmax(y)])
