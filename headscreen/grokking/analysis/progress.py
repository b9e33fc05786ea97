"""Nanda et al.'s progress measures as pure tensor functions (docs/methods.md, "Progress measures").

Inputs are the logits over the full input table, logits[a, b, c] for a, b ∈ ℤ_p and output class c,
the key frequencies, and (for the excluded loss) the training mask. For a ∘ b = a + b (sign = +1; a − b
with sign = −1) the generalising circuit writes logits along cos(w_k(a ± b − c)) =
cos(w_k(a ± b))cos(w_k c) + sin(w_k(a ± b))sin(w_k c), w_k = 2πk/p: for every output c they lie in
the span of the two input-space directions u_k = cos(w_k(a ± b)), v_k = sin(w_k(a ± b)) over the p×p
table. With Π the orthogonal projection (over the p² inputs, separately for each c) onto the span of
{u_k, v_k : k key}:

* restricted loss = cross-entropy of Π·logits over the whole table (only the key-frequency part kept);
* excluded loss   = cross-entropy of (I − Π)·logits over the training pairs (the key part removed).

Both are interpretations of the paper's description (no constant term is kept in Π).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


def _check_logits(logits: Tensor) -> int:
    if logits.ndim != 3 or not (logits.shape[0] == logits.shape[1] == logits.shape[2]):
        raise ValueError(f"logits must be [p, p, p] (a, b, class); got shape {tuple(logits.shape)}")
    return logits.shape[0]


def key_directions(p: int, key_frequencies: Sequence[int], *, sign: int = 1,
                   dtype: torch.dtype = torch.float64) -> Float[Tensor, "pp n"]:
    """Orthonormal basis [p², n] (rows a·p + b) of span{cos, sin of w_k(a + sign·b)}, k in key_frequencies."""
    if sign not in (1, -1):
        raise ValueError(f"sign={sign} must be +1 (a + b) or −1 (a − b)")
    bad = [k for k in key_frequencies if not 1 <= int(k) <= p // 2]
    if bad:
        raise ValueError(f"key frequencies {bad} are outside 1..{p // 2} for p={p}")
    a = torch.arange(p, dtype=dtype)
    s = (a[:, None] + sign * a[None, :]).reshape(-1)  # [p²]
    cols = []
    for k in sorted(set(int(k) for k in key_frequencies)):
        ang = 2 * math.pi * k * s / p
        cols += [torch.cos(ang), torch.sin(ang)]
    if not cols:
        return torch.zeros(p * p, 0, dtype=dtype)
    u = torch.stack(cols, dim=1)
    norms = u.norm(dim=0)
    u = u[:, norms > 1e-9 * math.sqrt(p * p)]  # sin(π(a+b)) vanishes for k = p/2
    q, _ = torch.linalg.qr(u)
    return q


def project_logits(logits: Float[Tensor, "p p p"], key_frequencies: Sequence[int], *, sign: int = 1
                   ) -> Float[Tensor, "p p p"]:
    """Π·logits: each output class's p×p logit table projected on the key-frequency directions."""
    p = _check_logits(logits)
    q = key_directions(p, key_frequencies, sign=sign)
    flat = logits.double().reshape(p * p, p)
    return (q @ (q.T @ flat)).reshape(p, p, p).to(logits.dtype)


def table_labels(p: int, *, sign: int = 1) -> Tensor:
    """(a + sign·b) mod p as [p, p]."""
    a = torch.arange(p)
    return (a[:, None] + sign * a[None, :]) % p


def _ce(logits: Tensor, labels: Tensor, mask: Tensor | None) -> float:
    p = logits.shape[0]
    flat, lab = logits.reshape(p * p, p).double(), labels.reshape(-1)
    if mask is not None:
        m = mask.reshape(-1)
        if not m.any():
            raise ValueError("the mask selects no pair; give the training mask of the run")
        flat, lab = flat[m], lab[m]
    return float(F.cross_entropy(flat, lab))


def restricted_loss(logits: Float[Tensor, "p p p"], key_frequencies: Sequence[int], *, sign: int = 1,
                    mask: Bool[Tensor, "p p"] | None = None) -> float:
    """Cross-entropy of the key-frequency part of the logits (whole table unless `mask`)."""
    p = _check_logits(logits)
    return _ce(project_logits(logits, key_frequencies, sign=sign), table_labels(p, sign=sign), mask)


def excluded_loss(logits: Float[Tensor, "p p p"], key_frequencies: Sequence[int],
                  train_mask: Bool[Tensor, "p p"], *, sign: int = 1) -> float:
    """Cross-entropy on the training pairs after removing the key-frequency part of the logits."""
    p = _check_logits(logits)
    if tuple(train_mask.shape) != (p, p):
        raise ValueError(f"train_mask must be [p, p] = {(p, p)}; got {tuple(train_mask.shape)}")
    rest = logits - project_logits(logits, key_frequencies, sign=sign)
    return _ce(rest, table_labels(p, sign=sign), train_mask)


def weight_norm_sq(tensors: Mapping[str, Tensor] | Iterable[Tensor]) -> float:
    """‖θ‖² = Σ of squares of every floating-point tensor (a state_dict or a parameter list)."""
    items = tensors.values() if isinstance(tensors, Mapping) else tensors
    return float(sum(t.double().pow(2).sum() for t in items if t.is_floating_point()))
