"""Activation participation ratio per head and its integral over training (docs/methods.md#participation-ratio).

PR = exp(-Σ p_i log p_i), p_i = σ_i² / Σσ², from the **uncentered** SVD of M = hook_z[:, q, H]
over the N probe examples (the entropy effective rank, not (Σλ)²/Σλ²). PR is 1 for a rank-1 M and
close to d for an isotropic N×d M with N >> d.

I(L, H) = Σ_t max(PR_t - 1, 0) · Δlog(tokens_t) ranks heads; the top ≈ 18% are picked.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float


def participation_ratio(m: Float[torch.Tensor, "*heads n d"]) -> Float[torch.Tensor, "*heads"]:
    """Entropy effective rank of the uncentered SVD of each [n, d] matrix (NaN for an all-zero M)."""
    s2 = torch.linalg.svdvals(m.double()) ** 2  # [*heads, min(n, d)]
    total = s2.sum(-1, keepdim=True)
    p = s2 / total
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    pr = torch.exp(-plogp.sum(-1))
    return torch.where(total.squeeze(-1) > 0, pr, torch.full_like(pr, float("nan")))


def head_participation(
    z_query: Float[torch.Tensor, "n layer head d_head"],
) -> Float[torch.Tensor, "layer head"]:
    """PR per head of hook_z at the query position over the n examples."""
    return participation_ratio(z_query.permute(1, 2, 0, 3))  # [layer, head, n, d_head]


def pr_integral(
    participation: pd.DataFrame, *, rule: str = "right", top_fraction: float = 0.18
) -> pd.DataFrame:
    """Rank heads by I(L, H) = Σ_t max(PR_t - 1, 0) · Δlog(x_t) over each head's checkpoints.

    `participation` is long (`step`, `tokens`, `layer`, `head`, `probe`, `pr`), one probe. x = tokens
    when every row has tokens > 0 known, else step (Δlog is the same when tokens ∝ step); checkpoints
    with x <= 0 (step 0) are dropped. `rule`: "right" (PR at the interval's end, the formula as
    written) or "trapezoid" (mean of both ends, as for the 124M model). Returns `layer`, `head`,
    `integral`, `rank` (1 = largest), `picked` (top ceil(top_fraction · heads)), `axis`.
    """
    if rule not in ("right", "trapezoid"):
        raise ValueError(f"rule={rule!r} must be 'right' or 'trapezoid'")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction={top_fraction} must be in (0, 1]; the FP default is 0.18")
    if "probe" in participation and participation["probe"].nunique() > 1:
        raise ValueError(
            "pr_integral takes one probe at a time; filter `participation` by its `probe` column"
        )
    df = participation.copy()
    tokens = pd.to_numeric(df.get("tokens"), errors="coerce") if "tokens" in df else None
    axis = "tokens" if tokens is not None and bool((tokens > 0).all()) else "step"
    df["_x"] = tokens if axis == "tokens" else pd.to_numeric(df["step"])
    df = df[df["_x"] > 0]
    rows = []
    for (layer, head), g in df.groupby(["layer", "head"], sort=True):
        g = g.sort_values("_x")
        logx = np.log(g["_x"].to_numpy(dtype=float))
        excess = np.maximum(g["pr"].to_numpy(dtype=float) - 1.0, 0.0)
        excess = np.nan_to_num(excess, nan=0.0)
        dlog = np.diff(logx)
        if rule == "right":
            val = float((excess[1:] * dlog).sum())
        else:
            val = float((0.5 * (excess[1:] + excess[:-1]) * dlog).sum())
        rows.append({"layer": int(layer), "head": int(head), "integral": val})
    out = pd.DataFrame(rows, columns=["layer", "head", "integral"])
    if out.empty:
        return out.assign(rank=pd.Series(dtype=int), picked=pd.Series(dtype=bool), axis=axis)
    out = out.sort_values(["integral", "layer", "head"], ascending=[False, True, True]).reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    n_pick = max(1, math.ceil(top_fraction * len(out) - 1e-9))
    out["picked"] = out["rank"] <= n_pick
    out["axis"] = axis
    return out
