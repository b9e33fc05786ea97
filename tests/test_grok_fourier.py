"""headscreen.grokking.analysis.fourier / progress: planted frequencies and direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headscreen.grokking.analysis.fourier import embedding_spectrum, fourier_basis, gini
from headscreen.grokking.analysis.progress import (
    excluded_loss,
    key_directions,
    project_logits,
    restricted_loss,
    table_labels,
    weight_norm_sq,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("p", [7, 10, 59])
def test_fourier_basis_is_orthonormal(p):
    f, freq = fourier_basis(p)
    torch.testing.assert_close(f @ f.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    assert freq.max() == p // 2 and (freq == 0).sum() == 1


def test_recovers_planted_frequencies():
    p, d = 59, 32
    g = torch.Generator().manual_seed(0)
    x = torch.arange(p, dtype=torch.float64)
    # embedding: strong frequency 14 and weaker 35 (≡ −24 → folds to 24), random phases and directions, small noise
    w = torch.zeros(p, d, dtype=torch.float64)
    for k, amp in ((14, 3.0), (35, 2.0)):
        dirs = torch.randn(2, d, generator=g, dtype=torch.float64)
        w += amp * (torch.cos(2 * math.pi * k * x / p)[:, None] * dirs[0] + torch.sin(2 * math.pi * k * x / p)[:, None] * dirs[1])
    w += 0.05 * torch.randn(p, d, generator=g, dtype=torch.float64) + 1.7  # noise and a constant offset
    spec = embedding_spectrum(w.float())
    assert spec.key_frequencies == [14, 24]
    assert spec.frequencies.tolist() == list(range(1, 30))
    # the constant offset lands in constant_norm, not in any frequency
    assert spec.constant_norm == pytest.approx(1.7 * math.sqrt(p) * math.sqrt(d), rel=0.02)
    # per-frequency norms agree with numpy's FFT (|X_k|² · 2/p pooled over cos/sin)
    fft = np.fft.fft(w.numpy(), axis=0)
    ref = np.sqrt(2.0 / p * (np.abs(fft[1 : p // 2 + 1]) ** 2).sum(-1))
    np.testing.assert_allclose(spec.norms.numpy(), ref, rtol=1e-5)
    assert spec.share.sum().item() == pytest.approx(1.0)
    assert spec.gini > 0.8
    # a random embedding has no key frequency and a low Gini
    rnd = embedding_spectrum(torch.randn(p, 128, generator=g))
    assert rnd.key_frequencies == [] and rnd.gini < 0.2


def test_gini_known_values():
    assert gini(torch.ones(10)) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)
    x = torch.tensor([1.0, 2.0, 3.0, 7.0])
    direct = sum(abs(a - b) for a in x.tolist() for b in x.tolist()) / (2 * 16 * x.mean().item())
    assert gini(x) == pytest.approx(direct)
    with pytest.raises(ValueError, match="non-negative"):
        gini(torch.tensor([-1.0, 1.0]))


def test_bad_embedding():
    with pytest.raises(ValueError, match=r"\[p, d_model\]"):
        embedding_spectrum(torch.zeros(5))
    with pytest.raises(ValueError, match="key_factor"):
        embedding_spectrum(torch.zeros(5, 3), key_factor=0.5)


# ----------------------------------------------------------------------------------------------
# progress measures


def _direct_projection(logits: torch.Tensor, keys, sign=1) -> torch.Tensor:
    """Per class c and key k: coefficient ⟨u, L_c⟩/‖u‖² along u = cos, sin of w_k(a + sign b), by loops."""
    p = logits.shape[0]
    out = torch.zeros_like(logits, dtype=torch.float64)
    for k in keys:
        for fn in (math.cos, math.sin):
            u = torch.tensor([[fn(2 * math.pi * k * (a + sign * b) / p) for b in range(p)] for a in range(p)],
                             dtype=torch.float64)
            nn = (u * u).sum()
            for c in range(p):
                out[:, :, c] += ((u * logits[:, :, c].double()).sum() / nn) * u
    return out


def _planted_logits(p: int, keys, noise_keys, seed=0, sign=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(p, dtype=torch.float64)
    s = a[:, None, None] + sign * a[None, :, None] - a[None, None, :]
    logits = sum(2.0 * torch.cos(2 * math.pi * k * s / p) for k in keys)
    logits = logits + sum(0.7 * torch.sin(2 * math.pi * k * (a[:, None, None] + sign * a[None, :, None]) / p
                                          + torch.rand(1, generator=g).item() * 6) * torch.randn(1, 1, p, generator=g,
                                                                                                dtype=torch.float64)
                          for k in noise_keys)
    return logits + 0.1 * torch.randn(p, p, p, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("sign", [1, -1])
def test_projection_matches_direct_loops(sign):
    p = 11
    logits = _planted_logits(p, [2, 5], [3], sign=sign)
    torch.testing.assert_close(project_logits(logits, [2, 5], sign=sign), _direct_projection(logits, [2, 5], sign),
                               atol=1e-10, rtol=0)
    q = key_directions(p, [2, 5], sign=sign)
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_restricted_and_excluded_losses_against_direct_cross_entropy():
    p = 11
    keys = [2, 5]
    logits = _planted_logits(p, keys, [3])
    labels = table_labels(p)
    proj = _direct_projection(logits, keys)
    direct_restricted = F.cross_entropy(proj.reshape(-1, p), labels.reshape(-1)).item()
    assert restricted_loss(logits, keys) == pytest.approx(direct_restricted, rel=1e-9)
    g = torch.Generator().manual_seed(1)
    train = torch.rand(p, p, generator=g) < 0.3
    rest = (logits - proj).reshape(-1, p)[train.reshape(-1)]
    direct_excluded = F.cross_entropy(rest, labels.reshape(-1)[train.reshape(-1)]).item()
    assert excluded_loss(logits, keys, train) == pytest.approx(direct_excluded, rel=1e-9)
    # the planted circuit lives in the key frequencies: keeping them predicts well, removing them does not
    full = F.cross_entropy(logits.reshape(-1, p), labels.reshape(-1)).item()
    assert restricted_loss(logits, keys) < full + 0.5
    assert excluded_loss(logits, keys, train) > math.log(p) - 0.5


def test_progress_bad_inputs_and_norm():
    with pytest.raises(ValueError, match=r"\[p, p, p\]"):
        restricted_loss(torch.zeros(3, 3), [1])
    with pytest.raises(ValueError, match="outside"):
        restricted_loss(torch.zeros(5, 5, 5), [3])
    with pytest.raises(ValueError, match="train_mask"):
        excluded_loss(torch.zeros(5, 5, 5), [1], torch.ones(4, 4, dtype=torch.bool))
    sd = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]]), "idx": torch.tensor([5])}
    assert weight_norm_sq(sd) == pytest.approx(14.0)
