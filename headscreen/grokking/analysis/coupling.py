"""Linear-centroid coupling: how much of a task's centroid direction the top gradient / update subspace holds.

Definition (docs/methods.md, "Linear-centroid coupling"):

* centroid of task τ at θ: c_τ = (1/N) Σ_x J_{f_τ}(x)ᵀ 𝟙 = ∇_θ mean_x Σ_c f_τ,c(x) over the training
  inputs x (f_τ = task τ's logits), restricted to the analysed parameters; ĉ = c/‖c‖;
* U = the top-k right singular vectors of a stack of W vectors in parameter space: the task's full-batch
  loss gradients at the W + 1 snapshots of a window (the gradient SVD), or the W updates between them
  (the AdamW-update SVD);
* coupling(U, ĉ) = (‖Uᵀ ĉ‖² / k) / (1 / P): the share of ĉ's energy per basis vector, relative to the
  expected 1/P of a uniformly random direction. 1 = no coupling; P/k = ĉ lies in span U.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from headscreen.spectral.paramspace import random_orthonormal_bases, top_right_singular


def coupling(basis: Float[Tensor, "k P"], centroid: Float[Tensor, " P"]) -> float:
    """(‖U ĉ‖²/k)·P for orthonormal rows U; ĉ = centroid/‖centroid‖."""
    c = centroid.double()
    norm = c.norm()
    if not norm > 0:
        raise ValueError("the centroid is zero; coupling is undefined")
    k, p = basis.shape
    return float((basis.double() @ (c / norm)).pow(2).sum() / k * p)


def subspace_coupling(rows: Float[Tensor, "W P"], centroid: Float[Tensor, " P"], k: int = 2) -> float:
    """coupling of the centroid with the top-k right singular subspace of `rows`."""
    return coupling(top_right_singular(rows, k), centroid)


def random_coupling(centroid: Float[Tensor, " P"], k: int = 2, n: int = 5, seed: int = 0) -> float:
    """Mean coupling of the centroid with `n` random k-dimensional orthonormal bases (≈ 1 by design)."""
    vals = [coupling(q.T, centroid) for q in random_orthonormal_bases(centroid.numel(), k, n, seed)]
    return float(sum(vals) / n)
