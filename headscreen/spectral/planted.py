"""Planted trajectories with a known answer, for tests and the sketch-accuracy benchmark.

`planted_head_series` builds per-head vectors θ_t [T, layer, head, P]:

* θ_0 ~ N(0, theta_scale²/P) per entry (so ‖θ_0‖ ≈ theta_scale ≫ ‖δ‖, as in real checkpoints:
  sketching θ rather than δ must not lose the update to rounding);
* every head gets isotropic noise updates, N(0, noise²/P) per entry (‖δ‖ ≈ noise);
* a planted head (layer, head) → k gets, from checkpoint `onset` on (for `duration` updates, or to
  the end), coherent rank-k updates of norm `amp` on top: update t moves along direction (t mod k) of k fixed orthonormal directions
  (round-robin), so a window of W ≥ k updates has k comparable singular values ≈ amp·sqrt(W/k)
  above the noise floor: k* = k;
* an optional network-wide reorganisation: for `reorg_len` updates starting at `reorg_at`, *every*
  head gets an extra update of norm `reorg_amp` along its own fixed direction (r_12 rises everywhere,
  the situation the `_rel` metrics are meant to see through).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from headscreen.spectral.paramspace import random_orthonormal


def _orthonormal(p: int, k: int, gen: torch.Generator) -> Tensor:  # [k, p]
    return random_orthonormal(p, k, gen).T


def planted_head_series(
    n_checkpoints: int,
    n_layers: int,
    n_heads: int,
    p: int,
    planted: dict[tuple[int, int], int],
    *,
    onset: int,
    duration: int | None = None,
    amp: float = 3.0,
    noise: float = 1.0,
    theta_scale: float = 100.0,
    reorg_at: int | None = None,
    reorg_len: int = 3,
    reorg_amp: float = 3.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "T layer head P"]:
    """θ_t for t = 0..T-1 (see the module docstring); update t is θ_t − θ_{t−1}, t ≥ 1."""
    if not 1 <= onset < n_checkpoints:
        raise ValueError(f"onset={onset} must be a checkpoint index in [1, {n_checkpoints})")
    if duration is not None and duration < 1:
        raise ValueError(f"duration={duration} must be >= 1 update (or None: to the end)")
    for (layer, head), k in planted.items():
        if not (0 <= layer < n_layers and 0 <= head < n_heads) or not 1 <= k <= p:
            raise ValueError(f"planted head {(layer, head)} with rank {k} does not fit "
                             f"[{n_layers} layers, {n_heads} heads, P={p}]")
    gen = torch.Generator().manual_seed(seed)
    t, shape = n_checkpoints, (n_layers, n_heads, p)
    theta0 = torch.randn(*shape, generator=gen, dtype=torch.float64) * theta_scale / p**0.5
    deltas = torch.randn(t - 1, *shape, generator=gen, dtype=torch.float64) * noise / p**0.5
    steps = torch.arange(1, t)  # update index t of row t-1
    for (layer, head), k in planted.items():
        u = _orthonormal(p, k, gen)  # [k, p]
        live = (steps >= onset) & (steps < onset + duration if duration is not None else True)
        dirs = u[(steps % k)[live]]  # [n_live, p]
        deltas[live, layer, head] += amp * dirs
    if reorg_at is not None:
        live = (steps >= reorg_at) & (steps < reorg_at + reorg_len)
        common = torch.randn(*shape, generator=gen, dtype=torch.float64)
        common = common / common.norm(dim=-1, keepdim=True)
        deltas[live] += reorg_amp * common
    theta = torch.cat([theta0[None], theta0[None] + deltas.cumsum(0)], dim=0)
    return theta.to(dtype)


def random_walk_trajectory(
    n_checkpoints: int,
    p: int,
    *,
    drift: float = 1.0,
    rank: int = 2,
    rank_amp: float = 2.0,
    noise: float = 1.0,
    decay: float = 0.02,
    seed: int = 0,
    batch: tuple[int, ...] = (),
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "T *batch P"]:
    """An SGD-like trajectory: a decaying drift along one backbone direction, a rotating rank-`rank`
    component (cos/sin pairs and more) with decaying amplitude, and isotropic noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(1, n_checkpoints, dtype=torch.float64)
    shape = (*batch, p)
    u = random_orthonormal(p, rank + 1, gen, batch=batch)
    u = u.movedim(-1, 0)  # [rank+1, *batch, p]
    env = torch.exp(-decay * t).view(-1, *([1] * len(shape)))
    upd = drift * env * u[0]
    for j in range(rank):
        phase = 2 * torch.pi * t / (7.0 + 3 * j)
        coef = (torch.cos(phase) if j % 2 == 0 else torch.sin(phase)).view(-1, *([1] * len(shape)))
        upd = upd + rank_amp * env * coef * u[j + 1]
    upd = upd + torch.randn(n_checkpoints - 1, *shape, generator=gen, dtype=torch.float64) * noise / p**0.5
    theta0 = torch.randn(*shape, generator=gen, dtype=torch.float64) * 10.0
    return torch.cat([theta0[None], theta0[None] + upd.cumsum(0)], dim=0).to(dtype)


def momentum_trajectory(
    n_checkpoints: int,
    p: int,
    *,
    beta: float = 0.9,
    batch: tuple[int, ...] = (),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "T *batch P"]:
    """Updates = an exponential moving average (momentum β) of isotropic gradient noise: successive
    updates are correlated, so each window's spectrum decays steeply as in optimiser trajectories."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch, p)
    z = torch.randn(n_checkpoints - 1, *shape, generator=gen, dtype=torch.float64) / p**0.5
    m = torch.zeros(shape, dtype=torch.float64)
    upd = torch.empty_like(z)
    for t in range(n_checkpoints - 1):
        m = beta * m + (1 - beta) * z[t]
        upd[t] = m
    theta0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return torch.cat([theta0[None], theta0[None] + upd.cumsum(0)], dim=0).to(dtype)
