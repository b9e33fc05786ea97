"""headscreen.grokking.training.defect: the commutator defect against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headscreen.grokking.training.defect import commutator_defect, defect_summary

torch.set_num_threads(1)


class Vec(nn.Module):
    """A single parameter vector θ (the 'model' of the quadratic tests)."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())


def quad_loss(model: Vec, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """½(θ − c)ᵀ H (θ − c) for batch = (H, c): gradient H(θ − c), Hessian H."""
    h, c = batch
    d = model.theta - c
    return 0.5 * d @ h @ d


def _sym(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m + m.T


def test_zero_for_commuting_quadratics():
    # ½θᵀAθ and ½θᵀBθ with diagonal A, B: the step maps (I − ηA), (I − ηB) are linear and commute,
    # so θ_AB = θ_BA exactly (and D = 0 up to rounding).
    theta = torch.tensor([0.7, -1.3, 2.1, 0.4, -0.9], dtype=torch.float64)
    a = torch.diag(torch.tensor([1.0, 3.0, 0.5, 2.0, 4.0], dtype=torch.float64))
    b = torch.diag(torch.tensor([2.0, 0.1, 5.0, 1.0, 0.3], dtype=torch.float64))
    zero = torch.zeros(5, dtype=torch.float64)
    # also two non-diagonal but simultaneously diagonalisable Hessians (same eigenvectors)
    q, _ = torch.linalg.qr(_sym(0, 5))
    a2 = q @ torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)) @ q.T
    b2 = q @ torch.diag(torch.tensor([0.5, 0.1, 2.0, 7.0, 1.0], dtype=torch.float64)) @ q.T
    model = Vec(theta)
    d = commutator_defect(model, quad_loss, [((a, zero), (b, zero)), ((a2, zero), (b2, zero))])
    assert d.shape == (2,)
    # a non-commuting pair's D here is O(1) (see below); rounding leaves ~1e-16/η ≈ 1e-13
    assert d.abs().max() < 1e-9
    # the same in float32 stays small against the O(1) non-commuting value
    model32 = Vec(theta.float())
    d32 = commutator_defect(model32, quad_loss, [((a.float(), zero.float()), (b.float(), zero.float()))])
    assert d32.abs().max() < 1e-2


def test_nonzero_for_commuting_hessians_with_different_centres():
    # Same Hessian H, different minima c_A ≠ c_B: the Hessians commute but the steps do not.
    # Hand computation: θ_AB − θ_BA = η² H² (c_B − c_A), so D = ‖H²(c_B − c_A)‖ / (‖H(θ−c_A)‖‖H(θ−c_B)‖).
    theta = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    h = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    ca = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    cb = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    expected = (h @ h @ (cb - ca)).norm() / ((h @ (theta - ca)).norm() * (h @ (theta - cb)).norm())
    d = commutator_defect(Vec(theta), quad_loss, [((h, ca), (h, cb))])
    assert expected > 0.4
    torch.testing.assert_close(d[0], expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("eta", [1e-3, 1e-1])
def test_noncommuting_hessians_hand_value(eta):
    # ½θᵀAθ, ½θᵀBθ with AB ≠ BA: θ_AB − θ_BA = η²(BA − AB)θ exactly (the maps are linear), so
    # D = ‖(BA − AB)θ‖ / (‖Aθ‖‖Bθ‖) independent of η.
    a, b = _sym(1, 4), _sym(2, 4)
    theta = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.float64)
    expected = ((b @ a - a @ b) @ theta).norm() / ((a @ theta).norm() * (b @ theta).norm())
    d = commutator_defect(Vec(theta), quad_loss, [((a, zero), (b, zero))], eta=eta)
    assert expected > 0.1
    torch.testing.assert_close(d[0], expected, rtol=1e-8, atol=0)
    # symmetric in the order of the pair
    d_ba = commutator_defect(Vec(theta), quad_loss, [((b, zero), (a, zero))], eta=eta)
    torch.testing.assert_close(d_ba, d, rtol=1e-10, atol=0)


def _mlp(seed: int, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(dtype)


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _batches(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mk = lambda: (torch.randn(8, 3, generator=g, dtype=dtype), torch.randn(8, 2, generator=g, dtype=dtype))  # noqa: E731
    return [(mk(), mk()) for _ in range(3)]


def _explicit_defect(model: nn.Module, a, b, eta: float) -> torch.Tensor:
    """θ_AB and θ_BA built literally (float64 reference of the definition)."""
    params = list(model.parameters())
    theta0 = torch.cat([p.detach().flatten() for p in params])

    def grad_at(theta, batch):
        m = _mlp(0)
        torch.nn.utils.vector_to_parameters(theta, m.parameters())
        gs = torch.autograd.grad(mse(m, batch), list(m.parameters()))
        return torch.cat([g.flatten() for g in gs])

    ga, gb = grad_at(theta0, a), grad_at(theta0, b)
    t_ab = theta0 - eta * ga - eta * grad_at(theta0 - eta * ga, b)
    t_ba = theta0 - eta * gb - eta * grad_at(theta0 - eta * gb, a)
    return (t_ab - t_ba).norm() / ((eta * ga).norm() * (eta * gb).norm())


def test_nonlinear_model_matches_literal_definition_and_hvp_limit():
    model = _mlp(0)
    pairs = _batches(5)
    d = commutator_defect(model, mse, pairs)
    ref = torch.stack([_explicit_defect(model, a, b, 1e-3) for a, b in pairs])
    torch.testing.assert_close(d, ref, rtol=1e-6, atol=0)
    assert (d > 0).all()
    # small-η limit: ‖H_B g_A − H_A g_B‖ / (‖g_A‖‖g_B‖) from exact Hessian-vector products
    params = list(model.parameters())

    def flat_grad(batch, create_graph=False):
        gs = torch.autograd.grad(mse(model, batch), params, create_graph=create_graph)
        return torch.cat([g.flatten() for g in gs])

    def hvp(batch, v):
        g = flat_grad(batch, create_graph=True)
        hv = torch.autograd.grad(g @ v, params)
        return torch.cat([h.flatten() for h in hv])

    limits = []
    for a, b in pairs:
        ga, gb = flat_grad(a).detach(), flat_grad(b).detach()
        limits.append((hvp(b, ga) - hvp(a, gb)).norm() / (ga.norm() * gb.norm()))
    d_small = commutator_defect(model, mse, pairs, eta=1e-5)
    torch.testing.assert_close(d_small, torch.stack(limits).detach(), rtol=1e-3, atol=0)


def test_restores_params_and_grads_exactly():
    model = _mlp(3, torch.float32)
    with torch.no_grad():
        before = [p.detach().clone() for p in model.parameters()]
    # pre-existing grads on some parameters, None on the others
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.123)
    params[2].grad = torch.full_like(params[2], -7.0)
    grads_before = [None if p.grad is None else p.grad.clone() for p in params]
    d = commutator_defect(model, mse, _batches(1, torch.float32))
    assert torch.isfinite(d).all() and (d > 0).all()
    for p, b0 in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b0)
    for p, g0 in zip(params, grads_before, strict=True):
        if g0 is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, g0)


def test_float32_close_to_float64_copy():
    model = _mlp(4, torch.float32)
    pairs = _batches(2, torch.float32)
    d32 = commutator_defect(model, mse, pairs)
    d64 = commutator_defect(model, mse, pairs, dtype=torch.float64)
    torch.testing.assert_close(d32, d64, rtol=2e-2, atol=0)
    assert next(model.parameters()).dtype == torch.float32  # the model itself was not cast


def test_params_subset_equals_frozen_rest():
    model = _mlp(0)
    pairs = _batches(7)
    subset = [model[2].weight, model[2].bias]
    d_subset = commutator_defect(model, mse, pairs, params=subset)
    frozen = _mlp(0)
    for p in frozen[0].parameters():
        p.requires_grad_(False)
    d_frozen = commutator_defect(frozen, mse, pairs)
    torch.testing.assert_close(d_subset, d_frozen, rtol=1e-12, atol=0)
    d_all = commutator_defect(model, mse, pairs)
    assert not torch.allclose(d_subset, d_all)


def test_bad_inputs():
    model = _mlp(0)
    pairs = _batches(0)
    with pytest.raises(ValueError, match="eta"):
        commutator_defect(model, mse, pairs, eta=0.0)
    with pytest.raises(ValueError, match="pairs is empty"):
        commutator_defect(model, mse, [])
    with pytest.raises(ValueError, match="not a parameter of the model"):
        commutator_defect(model, mse, pairs, params=[nn.Parameter(torch.zeros(2))])
    # a zero gradient (θ at the minimum of A) gives NaN, not a division error
    zero = torch.zeros(2, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    d = commutator_defect(Vec(zero), quad_loss, [((eye, zero), (eye, torch.ones(2, dtype=torch.float64)))])
    assert torch.isnan(d[0])


def test_unresolvable_step_falls_back_to_float64():
    # float32 θ ≈ 1 with a gradient ~1e-9: θ − ηg rounds back to θ, so an in-place float32 evaluation
    # would see no change and report D = 0. D is scale-free, so the hand value of the non-commuting
    # quadratic test still applies.
    a, b = _sym(1, 4) * 1e-9, _sym(2, 4) * 1e-9
    theta = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.float64)
    expected = ((b @ a - a @ b) @ theta).norm() / ((a @ theta).norm() * (b @ theta).norm())
    model = Vec(theta.float())
    pair = [((a.float(), zero.float()), (b.float(), zero.float()))]
    d = commutator_defect(model, quad_loss, pair)
    torch.testing.assert_close(d[0], expected, rtol=1e-4, atol=0)
    assert model.theta.dtype == torch.float32 and torch.equal(model.theta.detach(), theta.float())
    assert torch.isnan(commutator_defect(model, quad_loss, pair, fallback_float64=False)[0])


def test_defect_summary():
    s = defect_summary(torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan")]))
    assert s == {"defect_median": 2.5, "defect_q25": 1.75, "defect_q75": 3.25, "n_pairs": 4}
    assert defect_summary(torch.tensor([float("nan")]))["n_pairs"] == 0


def _no_pair_path(*args, **kwargs):
    raise AssertionError("the pair-by-pair path ran; the vectorised path was expected")


def test_vectorised_path_matches_literal_definition_and_loop(monkeypatch):
    import headscreen.grokking.training.defect as defect_mod

    model = _mlp(1)
    pairs = _batches(9)
    loop = commutator_defect(model, mse, pairs, vectorize=False)
    with monkeypatch.context() as m:
        m.setattr(defect_mod, "_pair_defect", _no_pair_path)  # proves the vectorised path is the one taken
        vec = commutator_defect(model, mse, pairs)
    ref = torch.stack([_explicit_defect(model, a, b, 1e-3) for a, b in pairs])
    torch.testing.assert_close(vec, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(vec, loop, rtol=1e-9, atol=0)


def test_grok_model_vectorised_equals_pair_by_pair():
    from headscreen.grokking.models.transformer import ModelSpec, build_model
    from headscreen.grokking.tasks.base import modular_loss

    model = build_model(ModelSpec(d_model=32, n_heads=2, d_head=16, d_mlp=64), 7, ["add"], seed=0)
    g = torch.Generator().manual_seed(0)

    def batch():
        ab = torch.randint(0, 7, (16, 2), generator=g)
        x = torch.cat([ab, torch.full((16, 1), 7)], dim=1)
        return x, ((ab[:, 0] + ab[:, 1]) % 7)[:, None]

    pairs = [(batch(), batch()) for _ in range(3)]
    vec = commutator_defect(model, modular_loss, pairs)
    loop = commutator_defect(model, modular_loss, pairs, vectorize=False)
    assert torch.isfinite(vec).all() and (vec > 0).all()
    torch.testing.assert_close(vec, loop, rtol=1e-3, atol=0)


def test_untraceable_loss_and_ragged_batches_fall_back_to_pairs(monkeypatch):
    import headscreen.grokking.training.defect as defect_mod

    model = _mlp(2)
    calls: list[int] = []
    real = defect_mod._pair_defect

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(defect_mod, "_pair_defect", spy)  # proves the pair-by-pair path is the one taken

    def mse_item(m, batch):  # .item() inside the loss: vmap cannot trace it
        x, y = batch
        scale = float((y.abs().max() > -1).item())
        return scale * ((m(x) - y) ** 2).mean()

    pairs = _batches(3)
    untraceable = commutator_defect(model, mse_item, pairs)
    assert len(calls) == 3  # vmap could not trace .item(): every pair went through _pair_defect
    torch.testing.assert_close(untraceable, commutator_defect(model, mse, pairs, vectorize=False), rtol=1e-12, atol=0)
    calls.clear()
    g = torch.Generator().manual_seed(4)
    ragged = [((torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)),
               (torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)))
              for n in (5, 8)]
    ref = torch.stack([_explicit_defect(model, a, b, 1e-3) for a, b in ragged])
    got = commutator_defect(model, mse, ragged)
    assert len(calls) == 2  # batches of 5 and 8 rows cannot be stacked: pair by pair
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
