"""Window statistics of the uncentered update Gram (docs/methods.md#update-gram-and-spectral-edge, docs/methods.md#per-head-update-gram-fingerprint).

For a window of W updates X = [δ_1 … δ_W] ∈ ℝ^{W×P} the Gram G = X Xᵀ is W×W, so every statistic
costs O(W³) per head however large P is. Everything is batched over leading dims: a Gram of shape
[*batch, W, W] (e.g. [window, layer, head, W, W]) is decomposed in one `eigh` call.

Conventions
-----------
* σ_j = sqrt(max(eig_j(G), 0)) sorted descending, λ_j = σ_j².
* ratio_j = σ_j/σ_{j+1}, j = 1..W-1, with both σ floored at `zero_tol`·σ_1 so that numerically zero
  singular values give ratio 1 among themselves and a large but finite ratio at the edge of the
  numerical rank (a clean rank-k window gets k* = k).
* k* = argmax_j ratio_j (1-indexed; ties → smallest j). R = ratio_{k*}.
* weighted k*: argmax_j (σ_j/Σσ)·ratio_j over j with σ_j ≥ min_sigma_frac·σ_1 (§6b).
* gap_norm = (λ_{k*w} − λ_{k*w+1})/λ_1 with the weighted k*; g_23 = λ_2 − λ_3.
* An all-zero window (a frozen head) has σ = 0: its ratios, R, gap_norm are NaN and k* = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


def _check_finite(x: Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"{what} contains NaN/inf (first at index {bad}); check the input weights or updates")


def update_gram(
    updates: Float[Tensor, "*batch W P"], dtype: torch.dtype = torch.float64
) -> Float[Tensor, "*batch W W"]:
    """Uncentered Gram X Xᵀ of W stacked updates (rows), computed in `dtype`."""
    if updates.ndim < 2:
        raise ValueError(f"updates must be [..., W, P]; got shape {tuple(updates.shape)}")
    x = updates.to(dtype)
    return x @ x.mT


@dataclass(frozen=True)
class GramStats:
    """Edge statistics of a batch of window Grams; every field has the Gram's batch shape [*batch]."""

    sigma: Float[Tensor, "*batch W"]  # descending singular values of X
    ratios: Float[Tensor, "*batch Wm1"]  # σ_j/σ_{j+1}, j = 1..W-1 (zero-guarded)
    kstar: Int[Tensor, "*batch"]  # argmax ratio, 1-indexed (0 for an all-zero window)
    kstar_weighted: Int[Tensor, "*batch"]  # argmax (σ_j/Σσ)·ratio_j over σ_j ≥ min_sigma_frac·σ_1
    R: Float[Tensor, "*batch"]  # ratio at k*
    R_weighted: Float[Tensor, "*batch"]  # ratio at weighted k*
    r_12: Float[Tensor, "*batch"]
    r_23: Float[Tensor, "*batch"]
    g_23: Float[Tensor, "*batch"]  # σ_2² − σ_3²
    gap_norm: Float[Tensor, "*batch"]  # (λ_{k*w} − λ_{k*w+1})/λ_1

    @property
    def lam(self) -> Float[Tensor, "*batch W"]:
        return self.sigma**2

    def gap(self, weighted: bool = False) -> Float[Tensor, "*batch"]:
        """λ_{k*} − λ_{k*+1} (unnormalised eigen-gap at the plain or weighted edge; NaN if k* = 0)."""
        k = (self.kstar_weighted if weighted else self.kstar).clamp(min=1)
        lam = self.lam
        g = lam.gather(-1, (k - 1).unsqueeze(-1)).squeeze(-1) - lam.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        return torch.where((self.kstar if not weighted else self.kstar_weighted) > 0, g, torch.nan)


def _default_zero_tol(dtype: torch.dtype, w: int) -> float:
    return math.sqrt(w * torch.finfo(dtype).eps)


def gram_stats(
    gram: Float[Tensor, "*batch W W"],
    *,
    min_sigma_frac: float = 0.05,
    zero_tol: float | None = None,
) -> GramStats:
    """Edge statistics of uncentered update Grams, batched over leading dims (one `eigh` call).

    `zero_tol` (relative to σ_1) defaults to sqrt(W·eps) of the Gram's dtype *as passed*: a float32
    Gram resolves σ only down to ~1e-3·σ_1, a float64 one to ~5e-8·σ_1.
    """
    if gram.ndim < 2 or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"gram must be [..., W, W]; got shape {tuple(gram.shape)}")
    w = gram.shape[-1]
    if w < 2:
        raise ValueError(f"a window Gram needs W >= 2 updates to form a ratio; got W={w}")
    if not 0.0 <= min_sigma_frac < 1.0:
        raise ValueError(f"min_sigma_frac={min_sigma_frac!r} is outside [0, 1); use 0.05 or 0 to disable")
    _check_finite(gram, "gram")
    tol = _default_zero_tol(gram.dtype if gram.is_floating_point() else torch.float64, w) \
        if zero_tol is None else float(zero_tol)
    g = gram.to(torch.float64)
    g = 0.5 * (g + g.mT)
    lam = torch.linalg.eigvalsh(g).flip(-1).clamp(min=0.0)  # [*batch, W] descending
    sigma = lam.sqrt()
    s1 = sigma[..., :1]
    dead = s1.squeeze(-1) <= 0.0  # all-zero window
    floor = (tol * s1).clamp(min=torch.finfo(torch.float64).tiny)
    sf = torch.maximum(sigma, floor)
    ratios = sf[..., :-1] / sf[..., 1:]  # [*batch, W-1]
    ratios = torch.where(dead.unsqueeze(-1), torch.nan, ratios)

    kstar = ratios.nan_to_num(-1.0).argmax(-1) + 1
    eligible = sigma[..., :-1] >= min_sigma_frac * s1
    eligible[..., 0] = True
    score = (sigma[..., :-1] / sigma.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)) * ratios
    score = torch.where(eligible, score.nan_to_num(-1.0), -torch.inf)
    kstar_w = score.argmax(-1) + 1
    kstar = torch.where(dead, 0, kstar)
    kstar_w = torch.where(dead, 0, kstar_w)

    def at(t: Tensor, k: Tensor) -> Tensor:  # t[..., k-1] with k 1-indexed (k=0 → NaN)
        v = t.gather(-1, (k.clamp(min=1) - 1).unsqueeze(-1)).squeeze(-1)
        return torch.where(k > 0, v, torch.nan)

    nan = torch.full_like(sigma[..., 0], torch.nan)
    r_12 = ratios[..., 0]
    r_23 = ratios[..., 1] if w >= 3 else nan
    g_23 = (lam[..., 1] - lam[..., 2]) if w >= 3 else nan
    gap_w = at(lam, kstar_w) - at(lam, kstar_w + 1)
    gap_norm = torch.where(dead, torch.nan, gap_w / lam[..., 0].clamp(min=torch.finfo(torch.float64).tiny))
    return GramStats(
        sigma=sigma, ratios=ratios, kstar=kstar, kstar_weighted=kstar_w,
        R=at(ratios, kstar), R_weighted=at(ratios, kstar_w),
        r_12=r_12, r_23=r_23, g_23=g_23, gap_norm=gap_norm,
    )


def window_stats(
    updates: Float[Tensor, "*batch W P"], *, min_sigma_frac: float = 0.05, zero_tol: float | None = None
) -> GramStats:
    """`gram_stats` of the Gram of explicitly stacked updates (float64 Gram)."""
    _check_finite(updates, "updates")
    return gram_stats(update_gram(updates), min_sigma_frac=min_sigma_frac, zero_tol=zero_tol)


# ----------------------------------------------------------------------------------------------
# Rolling windows over a trajectory


@dataclass(frozen=True)
class WindowStats:
    """Rolling-window statistics of a trajectory θ_0..θ_{T-1} (T checkpoints, T-1 updates).

    Window w (0-based) holds the updates δ_{w+1} … δ_{w+W} (δ_t = θ_t − θ_{t−1}) and *ends at
    checkpoint* `end_index[w]` = w + W; there are T − W windows.
    """

    window: int
    end_index: Int[Tensor, " n_win"]  # checkpoint index of each window's last update
    gram: Float[Tensor, "n_win *batch W W"]
    stats: GramStats  # fields [n_win, *batch, ...]
    delta_norm: Float[Tensor, " Tm1 *batch"]  # ‖δ_t‖ for t = 1..T-1 (row t-1)

    @property
    def n_windows(self) -> int:
        return int(self.end_index.numel())

    @property
    def update_norm(self) -> Float[Tensor, " n_win *batch"]:
        """‖δ‖ of the newest update in each window (the window's leading edge)."""
        return self.delta_norm[self.end_index - 1]


def required_checkpoints(window: int) -> int:
    """Checkpoints needed for one window of `window` updates."""
    return window + 1


def check_series_length(n_checkpoints: int, window: int) -> None:
    """Raise a ValueError naming the counts when a series is too short for one window."""
    if window < 2:
        raise ValueError(f"window={window} is too small; use window >= 3 (published default 10)")
    need = required_checkpoints(window)
    if n_checkpoints < need:
        raise ValueError(
            f"the series has {n_checkpoints} checkpoints but window={window} needs at least {need} "
            f"(W+1: W updates between W+1 checkpoints); add checkpoints or lower window to "
            f"<= {max(n_checkpoints - 1, 0)}"
            + (" (and window >= 3)" if n_checkpoints - 1 < 3 else "")
        )


def lagged_products(
    deltas: Float[Tensor, "n *batch P"], max_lag: int
) -> Float[Tensor, "max_lag n *batch"]:
    """C[ℓ, j] = ⟨δ_{j+ℓ}, δ_j⟩ for ℓ < max_lag (zero-padded where j+ℓ ≥ n): the band of the full
    update Gram that rolling windows need, at cost O(max_lag·n·P) instead of O(n²·P)."""
    n = deltas.shape[0]
    batch = deltas.shape[1:-1]
    flat = deltas.reshape(n, -1, deltas.shape[-1])  # [n, B, P]
    out = flat.new_zeros((max_lag, n, flat.shape[1]))
    for lag in range(min(max_lag, n)):
        a, b = flat[lag:], flat[: n - lag]
        out[lag, : n - lag] = torch.einsum("nbp,nbp->nb", a, b)
    return out.reshape(max_lag, n, *batch)


def rolling_grams(deltas: Float[Tensor, "n *batch P"], window: int) -> Float[Tensor, "n_win *batch W W"]:
    """The W×W Gram of every window of `window` consecutive updates (n − W + 1 windows)."""
    n = deltas.shape[0]
    if n < window:
        raise ValueError(f"{n} updates cannot fill one window of {window}; need >= {window} updates")
    lags = lagged_products(deltas, window)  # [W, n, *batch]
    a = torch.arange(window)
    lag = (a[:, None] - a[None, :]).abs()  # [W, W]
    start = torch.arange(n - window + 1)[:, None, None]
    pos = start + torch.minimum(a[:, None], a[None, :])  # [n_win, W, W]
    g = lags[lag.expand_as(pos), pos]  # [n_win, W, W, *batch]
    nb = deltas.ndim - 2
    return g.permute(0, *range(3, 3 + nb), 1, 2).contiguous()


def rolling_window_stats(
    vectors: Float[Tensor, "T *batch P"],
    window: int = 10,
    *,
    min_sigma_frac: float = 0.05,
    zero_tol: float | None = None,
    dtype: torch.dtype = torch.float64,
    update_norms: Float[Tensor, " Tm1 *batch"] | None = None,
) -> WindowStats:
    """Per-window edge statistics of a trajectory (raw parameters, sketches, or exact head vectors).

    vectors: θ_t stacked on dim 0 (T checkpoints), any batch dims, the flattened vector last; the
    deltas δ_t = θ_t − θ_{t−1} are formed in `dtype` (memory: T·batch·P·8 bytes in float64).
    update_norms: the exact ‖δ_t‖ for t = 1..T−1 when `vectors` are sketches: each sketched update
    is rescaled to its exact norm, i.e. the Gram becomes G̃_ij = Ĝ_ij·n_i n_j/(n̂_i n̂_j) (sketched
    cosines, exact norms: the "norm_corrected" estimator). Updates with a zero sketch are left at 0.
    Raises a ValueError naming the counts if T < window + 1.
    """
    if vectors.ndim < 2:
        raise ValueError(f"vectors must be [T, ..., P]; got shape {tuple(vectors.shape)}")
    check_series_length(vectors.shape[0], window)
    _check_finite(vectors, "vectors")
    v = vectors.to(dtype)
    deltas = v[1:] - v[:-1]  # [T-1, *batch, P]
    if update_norms is not None:
        n = torch.as_tensor(update_norms).to(dtype)
        if tuple(n.shape) != tuple(deltas.shape[:-1]):
            raise ValueError(f"update_norms must be [T-1, *batch] = {tuple(deltas.shape[:-1])} (one exact norm "
                             f"per update); got {tuple(n.shape)}")
        _check_finite(n, "update_norms")
        sketched = deltas.pow(2).sum(-1).sqrt()
        scale = torch.where(sketched > 0, n / torch.where(sketched > 0, sketched, 1.0), 0.0)
        deltas = deltas * scale.unsqueeze(-1)
    grams = rolling_grams(deltas, window)
    stats = gram_stats(grams, min_sigma_frac=min_sigma_frac, zero_tol=zero_tol)
    delta_norm = deltas.pow(2).sum(-1).sqrt()
    end = torch.arange(window, vectors.shape[0])
    return WindowStats(window=window, end_index=end, gram=grams, stats=stats, delta_norm=delta_norm)


# ----------------------------------------------------------------------------------------------
# Phases and the adiabatic parameter

PHASE_NAMES = ("rise", "plateau", "collapse")  # label codes 0, 1, 2; -1 = skipped (transient)


@dataclass(frozen=True)
class EdgePhases:
    """Rise / plateau / collapse of the σ_2/σ_3 edge per batch element (§1).

    rise = windows before the r23 peak; plateau = from the peak up to (excluding) the collapse;
    collapse = from the first window after the peak with r23 < threshold onwards. Windows before
    `skip` are labelled -1 and ignored when locating the peak.
    """

    peak: Int[Tensor, "*batch"]  # window index of the r23 peak
    collapse: Int[Tensor, "*batch"]  # window index of the collapse, -1 if it never collapses
    labels: Int[Tensor, " n_win *batch"]  # 0 rise, 1 plateau, 2 collapse, -1 skipped


def edge_phases(r23: Float[Tensor, " n_win *batch"], threshold: float = 1.20, *, skip: int = 0) -> EdgePhases:
    n = r23.shape[0]
    if not 0 <= skip < n:
        raise ValueError(f"skip={skip} leaves no window of the {n}; use 0 <= skip < {n}")
    idx = torch.arange(n).view(n, *([1] * (r23.ndim - 1)))
    masked = torch.where(idx >= skip, r23.nan_to_num(-torch.inf), -torch.inf)
    peak = masked.argmax(0)  # first maximum
    after = (idx > peak) & (r23 < threshold)
    has = after.any(0)
    collapse = torch.where(has, after.to(torch.int64).argmax(0), -1)
    labels = torch.zeros_like(r23, dtype=torch.int64)
    labels = torch.where(idx >= peak, 1, labels)
    labels = torch.where(has & (idx >= collapse), 2, labels)
    labels = torch.where(idx < skip, -1, labels)
    return EdgePhases(peak=peak, collapse=collapse, labels=labels)


def adiabatic(
    grams: Float[Tensor, "n_win *batch W W"],
    lr: float | Float[Tensor, " n_win"],
    stats: GramStats | None = None,
    *,
    weighted: bool = False,
) -> Float[Tensor, " n_win *batch"]:
    """𝒜_t = ‖G_t − G_{t−1}‖_F / (η_t·g_t²), g_t = λ_{k*} − λ_{k*+1} (plain k* unless `weighted`).

    The first window has no predecessor (NaN); g_t = 0 gives inf. The scale is uncalibrated (§1).
    """
    if stats is None:
        stats = gram_stats(grams)
    n = grams.shape[0]
    eta = torch.as_tensor(lr, dtype=torch.float64)
    if eta.ndim == 1 and eta.shape[0] != n:
        raise ValueError(f"lr has {eta.shape[0]} entries but there are {n} windows; pass one per window")
    if (eta <= 0).any():
        raise ValueError(f"lr must be positive; got {lr!r}")
    eta = eta.view(-1, *([1] * (grams.ndim - 3))) if eta.ndim == 1 else eta
    g = grams.to(torch.float64)
    diff = torch.full(g.shape[:-2], torch.nan, dtype=torch.float64)
    diff[1:] = torch.linalg.matrix_norm(g[1:] - g[:-1], ord="fro")
    gap = stats.gap(weighted=weighted)
    return diff / (eta * gap**2)
