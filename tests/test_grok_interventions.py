"""Gradient interventions: each changes the update it claims to change and nothing else."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from headscreen.config import ConfigError
from headscreen.grokking.config import GrokConfig
from headscreen.grokking.training.interventions import (
    GradientIntervention,
    Intervention,
    random_bases,
    split_transverse,
    top_basis,
    transverse_ratio,
)
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.grokking.training.train import train_run

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}


def _tiny(intervention: dict | None, steps: int = 12) -> GrokConfig:
    d = {"task": "dyck", "model": TINY, "task_options": {"n_train": 8, "n_test": 16}, "lr": 3e-3, "steps": steps,
         "batch_size": None, "eval_every": 2, "snapshot_every": 2, "defect_every": 0}
    if intervention is not None:
        d["intervention"] = intervention
    return GrokConfig.from_dict(d)


def _snapshots(run) -> dict[int, dict[str, torch.Tensor]]:
    t = Trajectory(run)
    return {s: t.load(s) for s in t.steps}


def test_modify_grads_scales_only_the_transverse_part(tmp_path):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(7))]
    basis = torch.linalg.qr(torch.randn(27, 3))[0]
    for spec, c in [(Intervention("suppress", 0.75, k=3, start=4, window=4), 0.25),
                    (Intervention("amplify", 0.5, k=3, start=4, window=4), 1.5)]:
        hook = GradientIntervention(spec, params, tmp_path, seed=0)
        hook._set_basis(basis)
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        g = torch.cat([x.reshape(-1) for x in grads])
        par, perp = split_transverse(g, basis)
        hook.modify_grads(step=3)  # before start: untouched
        assert torch.equal(torch.cat([p.grad.reshape(-1) for p in params]), g)
        hook.modify_grads(step=4)
        new = torch.cat([p.grad.reshape(-1) for p in params])
        new_par, new_perp = split_transverse(new, basis)
        assert torch.allclose(new_par, par, atol=1e-5)  # the component in the basis is unchanged
        assert torch.allclose(new_perp, c * perp, atol=1e-5)  # the transverse one is scaled by c


def test_basis_and_invariance_ratio():
    torch.manual_seed(1)
    span = torch.linalg.qr(torch.randn(200, 3))[0]
    updates = (torch.randn(10, 3) @ span.T)  # 10 updates inside a 3-dim subspace
    basis = top_basis(updates, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    assert transverse_ratio(updates[0], basis) < 1e-3  # inside the span: ρ = 0
    d = torch.randn(200)
    ctrl = [transverse_ratio(d, b) for b in random_bases(200, 3, 5, seed=0)]
    assert all(abs(r - (1 - 3 / 200) ** 0.5) < 0.05 for r in ctrl)  # random k-bases: ρ ≈ sqrt(1 − k/P)


def test_zero_strength_leaves_training_bit_identical_and_records_rho(tmp_path):
    base = train_run(_tiny(None), tmp_path / "none", progress=False)
    zero = train_run(_tiny({"kind": "suppress", "strength": 0.0, "k": 2, "start": 4, "window": 4}),
                     tmp_path / "zero", progress=False)
    a, b = _snapshots(base), _snapshots(zero)
    assert a.keys() == b.keys()
    for step in a:
        for name in a[step]:
            assert torch.equal(a[step][name], b[step][name]), (step, name)
    pd.testing.assert_frame_equal(pd.read_parquet(base / "curves.parquet"), pd.read_parquet(zero / "curves.parquet"))
    rho = pd.read_parquet(zero / "intervention.parquet")
    assert list(rho.step) == [4, 6, 8, 10]
    assert ((rho.rho >= 0) & (rho.rho <= 1 + 1e-6)).all() and (rho.rho_random_mean > 0.9).all()
    assert (zero / "intervention_basis.safetensors").exists()


def test_suppression_changes_only_updates_from_start_on(tmp_path):
    base = _snapshots(train_run(_tiny(None), tmp_path / "none", progress=False))
    full = _snapshots(train_run(_tiny({"kind": "suppress", "strength": 1.0, "k": 2, "start": 6, "window": 4}),
                                tmp_path / "s1", progress=False))
    for step in (0, 2, 4, 6):  # snapshot 6 = weights before update 7, the first one modified
        assert all(torch.equal(base[step][n], full[step][n]) for n in base[step])
    assert any(not torch.equal(base[8][n], full[8][n]) for n in base[8])


def test_intervention_config_is_validated_and_recorded():
    with pytest.raises(ConfigError, match="strength"):
        Intervention("suppress", 1.5)
    with pytest.raises(ConfigError, match="kind"):
        GrokConfig.from_dict({"intervention": {"kind": "boost"}})
    with pytest.raises(ConfigError, match="start"):
        Intervention("amplify", 1.0, start=10, window=64)
    cfg = GrokConfig.from_dict({"intervention": {"kind": "amplify", "strength": 1.0}})
    assert cfg.to_dict()["intervention"] == {"kind": "amplify", "strength": 1.0, "k": 16, "start": 500,
                                             "window": 64, "random_bases": 5}
    assert GrokConfig.from_dict(cfg.to_dict()) == cfg
