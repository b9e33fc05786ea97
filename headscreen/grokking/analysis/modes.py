"""Fourier and discrete-log modes of functions over the (a, b) input grid, and of spectral-edge directions.

A function over the grid F[a, b, c] (a, b ∈ ℤ_p, c = output channels) is expanded in a product basis
φ_i(a) φ_j(b) of an orthonormal basis of ℝ^p:

* "fourier" (addition): the real Fourier basis of ℤ_p (headscreen.grokking.analysis.fourier.fourier_basis);
  mode label = frequency k ∈ 0..⌊p/2⌋ (cos and sin pooled).
* "dlog" (multiplication): with g a primitive root of p, every x ≠ 0 is g^i, i = log_g x ∈ ℤ_{p−1}.
  The basis is the indicator of x = 0 (label −1) and the real Fourier basis of ℤ_{p−1} read at i = log x
  (label k ∈ 0..(p−1)/2; zero at x = 0). A function of a·b is then a function of log a + log b, which
  this basis diagonalises as the Fourier basis does a function of a + b.

The energy of mode (k_a, k_b) is Σ over its basis pairs and channels of the squared coefficient; its
share is that energy over the total. The edge direction v (a unit vector in trunk parameter space)
induces F_v(a, b) = J_logits(a, b) · v, the first-order change of every logit when the weights move along
v (docs/methods.md, "Fourier modes of spectral-edge directions").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from headscreen.grokking.analysis.fourier import fourier_basis
from headscreen.grokking.tasks.modular import is_prime
from headscreen.spectral.paramspace import flatten_rows, split_flat, top_right_singular

MODE_KINDS = ("fourier", "dlog")
TASK_MODES = {"add": "fourier", "sub": "fourier", "mul": "dlog"}


def primitive_root(p: int) -> int:
    """The smallest primitive root of the prime p."""
    if not is_prime(p):
        raise ValueError(f"p={p} is not prime: discrete-log modes need a prime modulus")
    if p == 2:
        return 1
    n, factors, d = p - 1, set(), 2
    while d * d <= n:
        while n % d == 0:
            factors.add(d)
            n //= d
        d += 1
    if n > 1:
        factors.add(n)
    for g in range(2, p):
        if all(pow(g, (p - 1) // q, p) != 1 for q in factors):
            return g
    raise AssertionError("unreachable: every prime has a primitive root")


def discrete_log_basis(p: int, dtype: torch.dtype = torch.float64) -> tuple[Float[Tensor, "p p"], Tensor]:
    """Orthonormal basis of ℝ^p as rows: δ_0 (label −1), then the Fourier basis of ℤ_{p−1} at log_g x."""
    g = primitive_root(p)
    f, freq = fourier_basis(p - 1, dtype)  # [p−1, p−1] over i = 0..p−2
    powers = [pow(g, i, p) for i in range(p - 1)]  # x = g^i
    rows = torch.zeros(p, p, dtype=dtype)
    rows[0, 0] = 1.0
    rows[1:, powers] = f  # rows[1 + r, g^i] = f[r, i]
    return rows, torch.cat([torch.tensor([-1]), freq])


def mode_basis(kind: str, p: int) -> tuple[Tensor, Tensor]:
    if kind == "fourier":
        return fourier_basis(p)
    if kind == "dlog":
        return discrete_log_basis(p)
    raise ValueError(f"mode kind {kind!r} is unknown; use one of {MODE_KINDS}")


def grid_modes(f: Float[Tensor, "p p *C"], kind: str = "fourier") -> pd.DataFrame:
    """Energy share per mode pair of a grid function: columns k_a, k_b, energy, share (descending)."""
    p = f.shape[0]
    if f.ndim < 2 or f.shape[1] != p:
        raise ValueError(f"the grid function must be [p, p, ...]; got shape {tuple(f.shape)}")
    basis, label = mode_basis(kind, p)
    x = f.detach().double().reshape(p, p, -1)
    coef = torch.einsum("ia,jb,abc->ijc", basis, basis, x)  # [p, p, C]
    energy = coef.pow(2).sum(-1)  # [p, p]
    labels = label.numpy()
    df = pd.DataFrame({"k_a": np.repeat(labels, p), "k_b": np.tile(labels, p), "energy": energy.reshape(-1).numpy()})
    df = df.groupby(["k_a", "k_b"], as_index=False)["energy"].sum()
    total = df["energy"].sum()
    df["share"] = df["energy"] / total if total > 0 else np.nan
    return df.sort_values("share", ascending=False, kind="stable").reset_index(drop=True)


def dominant_modes(df: pd.DataFrame, top: int = 5) -> list[dict]:
    return [{"k_a": int(r.k_a), "k_b": int(r.k_b), "share": float(r.share)} for r in df.head(top).itertuples()]


def induced_function(forward: Callable[[Mapping[str, Tensor]], Tensor], params: Mapping[str, Tensor],
                     direction: Mapping[str, Tensor]) -> Tensor:
    """J·v: the directional derivative of forward(params) (any output shape) along `direction`
    (a tangent per name in params; missing names get zero)."""
    from torch.func import jvp

    names = list(params)
    primals = tuple(params[n].detach() for n in names)
    tangents = tuple(direction[n].to(params[n].dtype) if n in direction else torch.zeros_like(params[n])
                     for n in names)
    _, out = jvp(lambda *ps: forward(dict(zip(names, ps, strict=True))), primals, tangents)
    return out


def transformer_grid_forward(model: torch.nn.Module, p: int, task: int = 0) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """forward(params) → logits [p, p, p] of task `task` of a GrokTransformer over the whole table."""
    from torch.func import functional_call

    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    inputs = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    buffers = dict(model.named_buffers())

    def forward(params: Mapping[str, Tensor]) -> Tensor:
        return functional_call(model, {**buffers, **params}, (inputs,))[:, task].reshape(p, p, p)

    return forward


def edge_direction_modes(model: torch.nn.Module, p: int, window_deltas: Mapping[str, Tensor], kind: str, *,
                         task: int = 0, k: int = 2, top: int = 5) -> list[dict]:
    """For each of the top-k edge directions of a window (window_deltas: name → [W, *shape] updates of
    the trunk tensors), the dominant modes of the function it induces over the (a, b) grid."""
    names = list(window_deltas)
    params = {n: p_ for n, p_ in model.named_parameters() if n in window_deltas}
    shapes = {n: params[n].shape for n in names}
    flat = flatten_rows((window_deltas[n] for n in names), torch.float64)  # [W, P]
    forward = transformer_grid_forward(model, p, task)
    out = []
    for j, v in enumerate(top_right_singular(flat, k)):  # the edge directions
        f = induced_function(forward, {n: params[n] for n in names}, split_flat(v.float(), shapes))
        modes = grid_modes(f, kind)
        out.append({"direction": j + 1, "modes": dominant_modes(modes, top)})
    return out
