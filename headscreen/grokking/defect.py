"""The commutator defect of two gradient steps (docs/methods.md, "Commutator defect").

For two minibatches A and B and a step size η, take one SGD step on A then one on B, and compare with
the opposite order:

    θ_AB = θ₀ − η·g_A(θ₀) − η·g_B(θ₀ − η·g_A(θ₀))
    θ_BA = θ₀ − η·g_B(θ₀) − η·g_A(θ₀ − η·g_B(θ₀))
    D    = ‖θ_AB − θ_BA‖ / (‖η·g_A(θ₀)‖ · ‖η·g_B(θ₀)‖)

Norms are over all moving parameters concatenated. D is the finite-step version of
‖H_B g_A − H_A g_B‖ / (‖g_A‖‖g_B‖): it vanishes when the two step maps commute (e.g. two quadratic
losses ½θᵀAθ, ½θᵀBθ with AB = BA) and grows with the curvature that one batch's step sees along the
other's gradient.

Numerics: θ_AB − θ_BA is evaluated in the algebraically identical form

    θ_AB − θ_BA = η·[(g_A(θ₀ − η g_B) − g_A(θ₀)) − (g_B(θ₀ − η g_A) − g_B(θ₀))]

which never subtracts two nearly equal parameter vectors (in float32 the direct difference loses most
of its digits: θ ≈ 1 but θ_AB − θ_BA ≈ η²‖H‖‖g‖²). Pass `dtype=torch.float64` to evaluate the whole
thing on a float64 copy of the model instead (slower, for checks).

The model's parameters are moved in place and restored bit for bit from saved copies; gradients are
taken with `torch.autograd.grad`, so every `.grad` attribute is left untouched. The training/eval
mode is not changed: give a deterministic loss (no dropout), or D also measures the dropout noise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Batch = Any  # whatever loss_fn accepts, e.g. (inputs LongTensor[B, 3], labels LongTensor[B])
LossFn = Callable[[nn.Module, Batch], Tensor]


def _grads(loss_fn: LossFn, model: nn.Module, batch: Batch, params: Sequence[nn.Parameter]) -> list[Tensor]:
    loss = loss_fn(model, batch)
    if loss.ndim != 0:
        raise ValueError(f"loss_fn must return a scalar loss; got shape {tuple(loss.shape)}")
    if not torch.isfinite(loss):
        raise ValueError(f"loss_fn returned a non-finite loss ({loss.item()}); the defect is undefined here")
    gs = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, gs, strict=True)]


def _norm(ts: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum(t.double().pow(2).sum() for t in ts))


RESOLUTION_TOL = 1e-2  # a realised step off by more than this (relative) is unresolved in the model's dtype


@torch.no_grad()
def _shift(params: Sequence[nn.Parameter], saved: Sequence[Tensor], step: Sequence[Tensor], eta: float) -> bool:
    """params ← saved − η·step (in place); False when the dtype cannot resolve the step (the realised
    displacement differs from −η·step by more than RESOLUTION_TOL relative, e.g. a vanishing gradient
    on float32 weights: θ − ηg rounds back to θ)."""
    err2 = torch.zeros((), dtype=torch.float64, device=saved[0].device if saved else None)
    for p, s, g in zip(params, saved, step, strict=True):
        p.copy_(s)
        p.sub_(g, alpha=eta)
        err2 += ((p.double() - s.double()) + eta * g.double()).pow(2).sum()
    want = eta * _norm(step)
    return bool(want > 0 and err2.sqrt() <= RESOLUTION_TOL * want)


@torch.no_grad()
def _restore(params: Sequence[nn.Parameter], saved: Sequence[Tensor]) -> None:
    for p, s in zip(params, saved, strict=True):
        p.copy_(s)


def _pair_defect(
    model: nn.Module, loss_fn: LossFn, a: Batch, b: Batch, params: Sequence[nn.Parameter],
    saved: Sequence[Tensor], eta: float,
) -> tuple[Tensor, bool]:
    """(D, resolved): resolved is False when a perturbed point could not be represented."""
    g_a = _grads(loss_fn, model, a, params)
    g_b = _grads(loss_fn, model, b, params)
    ok_b = _shift(params, saved, g_b, eta)
    g_a_after_b = _grads(loss_fn, model, a, params)  # g_A(θ₀ − η g_B)
    ok_a = _shift(params, saved, g_a, eta)
    g_b_after_a = _grads(loss_fn, model, b, params)  # g_B(θ₀ − η g_A)
    _restore(params, saved)
    diff = [
        eta * ((ga2.double() - ga.double()) - (gb2.double() - gb.double()))
        for ga, gb, ga2, gb2 in zip(g_a, g_b, g_a_after_b, g_b_after_a, strict=True)
    ]
    denom = (eta * _norm(g_a)) * (eta * _norm(g_b))
    if denom == 0:
        return torch.tensor(float("nan"), dtype=torch.float64), True
    return _norm(diff) / denom, ok_a and ok_b


def _cast_batch(batch: Batch, dtype: torch.dtype) -> Batch:
    """Floating tensors inside tuples/lists/dicts cast to `dtype` (integer tensors and others unchanged)."""
    if isinstance(batch, Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_cast_batch(x, dtype) for x in batch)
    if isinstance(batch, dict):
        return {k: _cast_batch(v, dtype) for k, v in batch.items()}
    return batch


def _moving_params(model: nn.Module, params: Sequence[nn.Parameter] | None) -> list[nn.Parameter]:
    if params is None:
        out = [p for p in model.parameters() if p.requires_grad]
    else:
        out = list(params)
        owned = {id(p) for p in model.parameters()}
        stray = [i for i, p in enumerate(out) if id(p) not in owned]
        if stray:
            raise ValueError(f"params[{stray[0]}] is not a parameter of the model; pass the model's own parameters")
    if not out:
        raise ValueError("no parameters to move: the model has none with requires_grad (or params is empty)")
    return out


def commutator_defect(
    model: nn.Module,
    loss_fn: LossFn,
    pairs: Sequence[tuple[Batch, Batch]],
    *,
    eta: float = 1e-3,
    params: Sequence[nn.Parameter] | None = None,
    dtype: torch.dtype | None = None,
    fallback_float64: bool = True,
) -> Tensor:  # [K] float64, one D per pair
    """D = ‖θ_AB − θ_BA‖ / (‖η g_A‖ · ‖η g_B‖) for each (A, B) in `pairs` (docs/methods.md).

    Leaves the model's parameters and grads exactly as it found them. `params`: which parameters move
    (default: all with requires_grad). `dtype`: evaluate on a copy of the model cast to this dtype
    (e.g. torch.float64 for a reference value; floating tensors in the batches are cast too); None
    works on the model itself. A pair whose gradient vanishes on A or B gives NaN.

    When the model's dtype cannot represent a perturbed point θ₀ − η g (the gradient is so small that
    the step rounds away, as after perfect memorisation without weight decay), that pair is
    recomputed on a float64 copy (`fallback_float64`, default) or returned as NaN; it would otherwise
    come out as a spurious 0.
    """
    if not eta > 0:
        raise ValueError(f"eta must be > 0; got {eta}")
    if len(pairs) == 0:
        raise ValueError("pairs is empty; give at least one (batch_A, batch_B) pair")
    moving = _moving_params(model, params)
    if dtype is not None:
        index = {id(p): i for i, p in enumerate(model.parameters())}
        wanted = [index[id(p)] for p in moving]
        model = copy.deepcopy(model).to(dtype)
        all_params = list(model.parameters())
        moving = [all_params[i] for i in wanted]
        pairs = [(_cast_batch(a, dtype), _cast_batch(b, dtype)) for a, b in pairs]
    saved = [p.detach().clone() for p in moving]
    out = torch.empty(len(pairs), dtype=torch.float64)
    unresolved = []
    try:
        for k, (a, b) in enumerate(pairs):
            out[k], ok = _pair_defect(model, loss_fn, a, b, moving, saved, eta)
            if not ok:
                unresolved.append(k)
    finally:
        _restore(moving, saved)
    if unresolved:
        if fallback_float64 and any(p.dtype != torch.float64 for p in moving):
            sub = [pairs[k] for k in unresolved]
            out[unresolved] = commutator_defect(model, loss_fn, sub, eta=eta, params=moving, dtype=torch.float64,
                                                fallback_float64=False)
        else:
            out[unresolved] = float("nan")
    return out


def defect_summary(values: Tensor) -> dict[str, float | int]:
    """Median, quartiles and count of the finite per-pair defects (the defect.parquet row fields)."""
    v = values.double()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return {"defect_median": float("nan"), "defect_q25": float("nan"), "defect_q75": float("nan"), "n_pairs": 0}
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {"defect_median": q[1].item(), "defect_q25": q[0].item(), "defect_q75": q[2].item(), "n_pairs": int(v.numel())}
