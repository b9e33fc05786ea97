"""Trajectory PCA and the backbone direction (docs/methods.md#trajectory-pca-and-backbone).

Δθ_t = θ_t − θ_0. The rows Δθ_1..Δθ_{T-1} are normalised to unit length and decomposed by an
uncentered SVD; the top right singular vector is the backbone v_b, signed so ⟨Δθ_{T-1}, v_b⟩ > 0.
All SVDs go through the (T−1)×(T−1) Gram, so P can be huge (raw vectors or JL sketches) and the
leading batch dims (e.g. [layer, head]) are decomposed in one `eigh` call.

Interpretations [I], documented because the source is ambiguous:
* `pc1_share` = σ_1²/Σσ² of the row-normalised matrix; `displacement_share(t)` = a(t)²/‖Δθ_t‖² is the
  alternative reading of "share of displacement".
* ρ(t) compares the PC1 (top right singular vector) of the *update* matrix of a window of W updates
  with that of the previous window, |cos|; windows are non-overlapping by default (stride = W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

_TINY = torch.finfo(torch.float64).tiny


def _check(vectors: Tensor, min_t: int, what: str) -> None:
    if vectors.ndim < 2:
        raise ValueError(f"vectors must be [T, ..., P]; got shape {tuple(vectors.shape)}")
    if vectors.shape[0] < min_t:
        raise ValueError(f"{what} needs at least {min_t} checkpoints; got T={vectors.shape[0]}")
    if not torch.isfinite(vectors).all():
        raise ValueError("vectors contain NaN/inf; check the checkpoints")


def _top_right_vector(
    rows: Float[Tensor, "*batch n P"],
) -> tuple[Float[Tensor, "*batch P"], Float[Tensor, "*batch n"]]:
    """Top right singular vector of each [n, P] matrix (via the n×n Gram) and all σ² descending."""
    gram = rows @ rows.mT
    lam, u = torch.linalg.eigh(0.5 * (gram + gram.mT))
    lam, u = lam.flip(-1).clamp(min=0.0), u.flip(-1)
    s1 = lam[..., 0].sqrt().clamp(min=_TINY)
    v = (rows.mT @ u[..., :1]).squeeze(-1) / s1.unsqueeze(-1)
    return v, lam


@dataclass(frozen=True)
class Backbone:
    """Backbone of a trajectory; batch dims are those of the input between T and P."""

    direction: Float[Tensor, "*batch P"]  # v_b, unit norm, ⟨Δθ_{T-1}, v_b⟩ > 0
    pc1_share: Float[Tensor, "*batch"]  # σ_1²/Σσ² of the (row-normalised) displacement matrix
    explained: Float[Tensor, "*batch Tm1"]  # σ_j²/Σσ², descending
    a: Float[Tensor, " T *batch"]  # ⟨Δθ_t, v_b⟩ (a(0) = 0)
    r: Float[Tensor, " T *batch"]  # ‖Δθ_t − a(t) v_b‖
    displacement_share: Float[Tensor, " T *batch"]  # a²/‖Δθ_t‖² (NaN where Δθ_t = 0)


def backbone(vectors: Float[Tensor, "T *batch P"], *, row_normalise: bool = True) -> Backbone:
    """Trajectory PCA of θ_0..θ_{T-1} (float64). Memory: T·batch·P·8 bytes for Δθ."""
    _check(vectors, 2, "backbone")
    v = vectors.to(torch.float64)
    disp = v - v[:1]  # [T, *batch, P]
    rows = disp[1:].movedim(0, -2)  # [*batch, T-1, P]
    norms = rows.norm(dim=-1, keepdim=True)
    if row_normalise:
        rows = rows / norms.clamp(min=_TINY)
    direction, lam = _top_right_vector(rows)
    last = disp[-1]
    sign = torch.where((last * direction).sum(-1) < 0, -1.0, 1.0)
    direction = direction * sign.unsqueeze(-1)
    total = lam.sum(-1)
    explained = lam / total.clamp(min=_TINY).unsqueeze(-1)
    a = (disp * direction).sum(-1)  # [T, *batch]
    r = (disp - a.unsqueeze(-1) * direction).norm(dim=-1)
    dn2 = disp.pow(2).sum(-1)
    share = torch.where(dn2 > 0, a**2 / dn2.clamp(min=_TINY), torch.nan)
    return Backbone(direction=direction, pc1_share=explained[..., 0], explained=explained, a=a, r=r,
                    displacement_share=share)


@dataclass(frozen=True)
class PC1Rotation:
    end_index: Int[Tensor, " n"]  # checkpoint index at which window w ends (w ≥ 1)
    rho: Float[Tensor, " n *batch"]  # |cos(PC1_w, PC1_{w-1})|


def pc1_rotation(
    vectors: Float[Tensor, "T *batch P"], window: int = 10, *, stride: int | None = None
) -> PC1Rotation:
    """ρ between the update-PC1s of adjacent windows of `window` updates (stride W by default)."""
    stride = window if stride is None else stride
    if window < 1 or stride < 1:
        raise ValueError(f"window={window} and stride={stride} must be positive; use window=10")
    need = window + stride + 1
    _check(vectors, need, f"pc1_rotation(window={window}, stride={stride}) (two windows)")
    v = vectors.to(torch.float64)
    deltas = v[1:] - v[:-1]  # [T-1, *batch, P]
    starts = list(range(0, deltas.shape[0] - window + 1, stride))
    pcs = []
    for s in starts:
        x = deltas[s : s + window].movedim(0, -2)  # [*batch, W, P]
        pcs.append(_top_right_vector(x)[0])
    pcs_t = torch.stack(pcs)  # [n_win, *batch, P]
    rho = (pcs_t[1:] * pcs_t[:-1]).sum(-1).abs()
    end = torch.tensor(starts[1:], dtype=torch.int64) + window
    return PC1Rotation(end_index=end, rho=rho)
