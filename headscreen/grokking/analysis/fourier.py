"""Fourier spectrum of a modular-arithmetic embedding (docs/methods.md, "Fourier modes").

Tokens 0..p−1 are the residues; the embedding rows W_E[:p] are a function of x ∈ ℤ_p. The real
orthonormal Fourier basis of ℤ_p has the constant vector, and for each frequency k = 1..⌊(p−1)/2⌋ the
pair cos(2πkx/p)·√(2/p), sin(2πkx/p)·√(2/p); an even p adds the Nyquist vector (−1)^x/√p (k = p/2,
cosine only). The norm of frequency k is √(‖C_cos,k‖² + ‖C_sin,k‖²) where C = F·W_E[:p] [basis, d]:
a rotation-invariant measure of how much of the embedding lives at that frequency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

KEY_FACTOR = 3.0  # a key frequency holds at least this many times the uniform share 1/n_freq of the Fourier energy


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> tuple[Float[Tensor, "p p"], Tensor]:
    """Orthonormal real Fourier basis of ℤ_p as rows [p, p], and the frequency of each row
    (0 = constant; cos and sin rows of frequency k are adjacent, cos first)."""
    if p < 2:
        raise ValueError(f"p={p} is too small for a Fourier basis; use p >= 2")
    x = torch.arange(p, dtype=dtype)
    rows = [torch.full((p,), 1.0 / math.sqrt(p), dtype=dtype)]
    freqs = [0]
    for k in range(1, (p - 1) // 2 + 1):
        angle = 2 * math.pi * k * x / p
        rows += [torch.cos(angle) * math.sqrt(2.0 / p), torch.sin(angle) * math.sqrt(2.0 / p)]
        freqs += [k, k]
    if p % 2 == 0:
        rows.append(torch.cos(math.pi * x) / math.sqrt(p))
        freqs.append(p // 2)
    return torch.stack(rows), torch.tensor(freqs)


@dataclass(frozen=True)
class FourierSpectrum:
    frequencies: Tensor  # [n_freq] 1..⌊p/2⌋
    norms: Float[Tensor, " n_freq"]  # per-frequency norm (cos and sin pooled)
    constant_norm: float  # norm of the constant component (the mean embedding·√p)
    share: Float[Tensor, " n_freq"]  # norm² / Σ norm² over the non-constant frequencies
    gini: float  # Gini coefficient of `norms`
    key_frequencies: list[int]  # frequencies with share >= key_factor / n_freq, by decreasing norm


def gini(values: Tensor) -> float:
    """Gini coefficient of non-negative values: Σ_i Σ_j |x_i − x_j| / (2 n² mean); 0 = all equal,
    (n−1)/n = all mass on one value. NaN for an all-zero vector."""
    x = values.double().flatten()
    if (x < 0).any():
        raise ValueError("gini needs non-negative values (norms)")
    n = x.numel()
    total = x.sum()
    if n == 0 or total == 0:
        return float("nan")
    xs = torch.sort(x).values
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float((2 * (i * xs).sum() / (n * total)) - (n + 1) / n)


def embedding_spectrum(w_e: Float[Tensor, "p d"], *, key_factor: float = KEY_FACTOR) -> FourierSpectrum:
    """Fourier spectrum of the residue embeddings W_E[:p] (rows = residues 0..p−1).

    Key frequencies: those holding at least `key_factor` times the share of an even spread
    (share >= key_factor / n_freq, n_freq = ⌊p/2⌋), listed by decreasing norm.
    """
    if w_e.ndim != 2:
        raise ValueError(f"the embedding must be [p, d_model]; got shape {tuple(w_e.shape)}")
    if not key_factor > 1:
        raise ValueError(f"key_factor={key_factor} must be > 1 (times the even share); default {KEY_FACTOR}")
    if not torch.isfinite(w_e).all():
        raise ValueError("the embedding contains NaN/inf; the checkpoint is corrupt or diverged")
    p = w_e.shape[0]
    basis, freq = fourier_basis(p)
    coef = basis @ w_e.double()  # [p, d]
    energy = coef.pow(2).sum(-1)  # [p]
    n_freq = p // 2
    per = torch.zeros(n_freq + 1, dtype=torch.float64).index_add_(0, freq, energy)
    norms = per[1:].sqrt()
    total = per[1:].sum()
    share = per[1:] / total if total > 0 else torch.full_like(norms, float("nan"))
    freqs = torch.arange(1, n_freq + 1)
    order = torch.argsort(norms, descending=True, stable=True)
    keys = [int(freqs[i]) for i in order if share[i] >= key_factor / n_freq]
    return FourierSpectrum(frequencies=freqs, norms=norms, constant_norm=float(per[0].sqrt()), share=share,
                           gini=gini(norms), key_frequencies=keys)
