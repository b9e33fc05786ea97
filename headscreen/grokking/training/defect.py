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

Speed: when the 2K batches of the K pairs are tensors of one shape (the usual case), the 2K
gradients at θ₀ are taken in one vectorised call (`torch.func.vmap` of `torch.func.grad`), and the 2K
gradients at the shifted points in a second one, instead of 4K small backward passes. A loss that
vmap cannot trace (data-dependent shapes, e.g. trimming padding to the longest row) is evaluated pair
by pair, moving the model's parameters in place and restoring them bit for bit from saved copies.
Either way gradients are taken functionally, so every `.grad` attribute is left untouched. The training/eval
mode is not changed: give a deterministic loss (no dropout), or D also measures the dropout noise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from headscreen.spectral.paramspace import flatten

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
    saved: Sequence[Tensor], eta: float, form: str = "exact", min_step: float | None = None,
) -> tuple[Tensor, bool]:
    """(D, resolved): resolved is False when a perturbed point could not be represented. `min_step`: raise
    η for this pair so that min(‖η g_A‖, ‖η g_B‖) >= min_step (η at most 1), as the Dyck/SCAN study does."""
    g_a = _grads(loss_fn, model, a, params)
    g_b = _grads(loss_fn, model, b, params)
    if min_step is not None:
        smaller = float(min(_norm(g_a), _norm(g_b)))
        if smaller > 0 and eta * smaller < min_step:
            eta = min(min_step / smaller, 1.0)
    ok_b = _shift(params, saved, g_b, eta)
    g_a_after_b = _grads(loss_fn, model, a, params)  # g_A(θ₀ − η g_B)
    ok_a = _shift(params, saved, g_a, eta)
    g_b_after_a = _grads(loss_fn, model, b, params)  # g_B(θ₀ − η g_A)
    _restore(params, saved)
    if form == "float32_direct":
        return _direct(saved, g_a, g_b, g_a_after_b, g_b_after_a, eta), True
    diff = [
        eta * ((ga2.double() - ga.double()) - (gb2.double() - gb.double()))
        for ga, gb, ga2, gb2 in zip(g_a, g_b, g_a_after_b, g_b_after_a, strict=True)
    ]
    denom = (eta * _norm(g_a)) * (eta * _norm(g_b))
    if denom == 0:
        return torch.tensor(float("nan"), dtype=torch.float64), True
    return _norm(diff) / denom, ok_a and ok_b


FORMS = ("exact", "float32_direct")


def _direct(saved: Sequence[Tensor], g_a: Sequence[Tensor], g_b: Sequence[Tensor], g_a1: Sequence[Tensor],
            g_b1: Sequence[Tensor], eta: float) -> Tensor:
    """The published evaluation, in the model's dtype: θ_AB = θ₀ − η g_A − η g_B(θ₀ − η g_A) and θ_BA
    formed as vectors and subtracted, D = ‖θ_AB − θ_BA‖ / (‖η g_A‖ ‖η g_B‖ + 1e-12). In float32 the
    subtraction of two vectors near θ₀ adds the rounding of θ₀'s entries (≈ 6e-8 |θ|) to the result,
    which the exact form avoids (module docstring); kept to reproduce the published values."""
    theta0 = flatten(saved)
    ga, gb = flatten(g_a), flatten(g_b)
    ga1, gb1 = flatten(g_a1), flatten(g_b1)
    t_ab = theta0 - eta * ga - eta * gb1
    t_ba = theta0 - eta * gb - eta * ga1
    d = (t_ab - t_ba).norm() / ((eta * ga).norm() * (eta * gb).norm() + 1e-12)
    return d.double()


class _LossOf(nn.Module):
    """loss_fn(model, batch) as a module, so that torch.func.functional_call can swap the parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Batch) -> Tensor:
        return self.loss_fn(self.model, batch)


def _stack(batches: Sequence[Batch]) -> Batch | None:
    """The batches stacked along a new leading dim (same nesting of tuples/lists/dicts, tensors of one
    shape and dtype at each leaf); None when they are not stackable."""
    first = batches[0]
    if isinstance(first, Tensor):
        same = all(isinstance(b, Tensor) and b.shape == first.shape and b.dtype == first.dtype for b in batches)
        return torch.stack(list(batches)) if same else None
    if isinstance(first, (tuple, list)):
        if not all(type(b) is type(first) and len(b) == len(first) for b in batches):
            return None
        parts = [_stack([b[i] for b in batches]) for i in range(len(first))]
        if any(q is None for q in parts):
            return None
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)
    if isinstance(first, dict):
        if not all(isinstance(b, dict) and b.keys() == first.keys() for b in batches):
            return None
        parts = {k: _stack([b[k] for b in batches]) for k in first}
        return None if any(q is None for q in parts.values()) else parts
    return None


def _vmapped_grads(
    model: nn.Module, loss_fn: LossFn, moving: Sequence[nn.Parameter], stacked: Batch,
    points: Sequence[Tensor] | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Per-batch gradients ([n, *p.shape] per moving parameter) and losses [n] over the stacked batches,
    all at θ₀ (`points` None) or batch i at points[·][i]."""
    from torch.func import functional_call, grad, vmap

    names = {id(p): name for name, p in model.named_parameters()}
    keys = ["model." + names[id(p)] for p in moving]
    wrapper = _LossOf(model, loss_fn)

    def loss_at(flat: tuple[Tensor, ...], batch: Batch) -> tuple[Tensor, Tensor]:
        loss = functional_call(wrapper, dict(zip(keys, flat, strict=True)), (batch,))
        return loss, loss.detach()

    base = tuple(p.detach() for p in moving) if points is None else tuple(points)
    grads, losses = vmap(grad(loss_at, has_aux=True), in_dims=(None if points is None else 0, 0))(base, stacked)
    return list(grads), losses


def _per_entry_sq(ts: Sequence[Tensor]) -> Tensor:  # [n] float64: Σ over the parameters of each entry
    return sum(t.double().flatten(1).pow(2).sum(1) for t in ts)


def _batched_defects(
    model: nn.Module, loss_fn: LossFn, pairs: Sequence[tuple[Batch, Batch]], moving: Sequence[nn.Parameter],
    saved: Sequence[Tensor], eta: float, form: str = "exact",
) -> tuple[Tensor, list[int]] | None:
    """(D [K], unresolved pair indices) from two vectorised gradient calls; None when the batches cannot
    be stacked or the loss cannot be traced by vmap (the caller then goes pair by pair)."""
    k = len(pairs)
    stacked = _stack([a for a, _ in pairs] + [b for _, b in pairs])  # entries 0..K-1: A's, K..2K-1: B's
    if stacked is None:
        return None
    try:
        g0, loss0 = _vmapped_grads(model, loss_fn, moving, stacked)
        # entry i < K (batch A_i) is evaluated after the step on B_i, entry K + i (B_i) after the step on A_i
        steps = [torch.cat([g[k:], g[:k]]) for g in g0]
        if form == "float32_direct":  # θ₀ − (η·g), rounded as the published code forms it
            points = [s.unsqueeze(0) - eta * st for s, st in zip(saved, steps, strict=True)]
        else:
            points = [torch.sub(s.unsqueeze(0), st, alpha=eta) for s, st in zip(saved, steps, strict=True)]
        g1, loss1 = _vmapped_grads(model, loss_fn, moving, stacked, points)
    except Exception:  # noqa: BLE001 - anything vmap cannot trace; the pair-by-pair path re-raises real errors
        return None
    losses = torch.cat([loss0, loss1])
    if not torch.isfinite(losses).all():
        bad = losses[~torch.isfinite(losses)][0].item()
        raise ValueError(f"loss_fn returned a non-finite loss ({bad}); the defect is undefined here")
    if form == "float32_direct":
        d = torch.stack([_direct(saved, [g[i] for g in g0], [g[k + i] for g in g0], [h[i] for h in g1],
                                 [h[k + i] for h in g1], eta) for i in range(k)])
        return d, []
    with torch.no_grad():
        # the realised displacement of each shifted point against −η·step (as _shift checks in place)
        err = _per_entry_sq([(pt.double() - s.double().unsqueeze(0)) + eta * st.double()
                             for pt, s, st in zip(points, saved, steps, strict=True)]).sqrt()
        norms = _per_entry_sq(g0).sqrt()  # ‖g‖ per entry: A's then B's
        want = eta * torch.cat([norms[k:], norms[:k]])  # ‖η·step‖ of each shifted point
        ok = (want > 0) & (err <= RESOLUTION_TOL * want)
        diff = [eta * ((a1.double() - a0.double()) - (b1.double() - b0.double()))
                for a0, b0, a1, b1 in ((g[:k], g[k:], h[:k], h[k:]) for g, h in zip(g0, g1, strict=True))]
        denom = (eta * norms[:k]) * (eta * norms[k:])
        d = _per_entry_sq(diff).sqrt() / denom
        d[denom == 0] = float("nan")
    unresolved = [i for i in range(k) if not (ok[i] and ok[k + i])]
    return d, unresolved


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
    vectorize: bool = True,
    form: str = "exact",
    min_step: float | None = None,
) -> Tensor:  # [K] float64, one D per pair
    """D = ‖θ_AB − θ_BA‖ / (‖η g_A‖ · ‖η g_B‖) for each (A, B) in `pairs` (docs/methods.md).

    Leaves the model's parameters and grads exactly as it found them. `params`: which parameters move
    (default: all with requires_grad). `dtype`: evaluate on a copy of the model cast to this dtype
    (e.g. torch.float64 for a reference value; floating tensors in the batches are cast too); None
    works on the model itself. A pair whose gradient vanishes on A or B gives NaN.

    When the model's dtype cannot represent a perturbed point θ₀ − η g (the gradient is so small that
    the step rounds away, as after perfect memorisation without weight decay), that pair is
    recomputed on a float64 copy (`fallback_float64`, default) or returned as NaN; it would otherwise
    come out as a spurious 0. `vectorize=False` forces the pair-by-pair evaluation (module docstring).
    `min_step`: the Dyck/SCAN study's adaptive η (per pair, so pair by pair; `_pair_defect`).
    `form="float32_direct"`: the published study's evaluation (`_direct`: θ_AB − θ_BA subtracted as
    vectors in the model's dtype, no resolution check); "exact" (default): the cancellation-free form.
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r} is unknown; use one of {FORMS}")
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
    if min_step is not None and not min_step > 0:
        raise ValueError(f"min_step={min_step!r} must be > 0, or None for a fixed eta")
    batched = (_batched_defects(model, loss_fn, pairs, moving, saved, eta, form)
               if vectorize and min_step is None else None)
    if batched is not None:
        out, unresolved = batched
    else:
        out = torch.empty(len(pairs), dtype=torch.float64)
        unresolved = []
        try:
            for k, (a, b) in enumerate(pairs):
                out[k], ok = _pair_defect(model, loss_fn, a, b, moving, saved, eta, form, min_step)
                if not ok:
                    unresolved.append(k)
        finally:
            _restore(moving, saved)
    if unresolved:
        if fallback_float64 and any(p.dtype != torch.float64 for p in moving):
            sub = [pairs[k] for k in unresolved]
            out[unresolved] = commutator_defect(model, loss_fn, sub, eta=eta, params=moving, dtype=torch.float64,
                                                fallback_float64=False, vectorize=vectorize, form=form,
                                                min_step=min_step)
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
