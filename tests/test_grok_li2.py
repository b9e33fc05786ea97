"""Li₂ network, the lock-in detector, edge-direction modes and linear-centroid coupling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headscreen.config import ConfigError
from headscreen.grokking.analysis.coupling import coupling, random_coupling, subspace_coupling
from headscreen.grokking.analysis.modes import (
    discrete_log_basis,
    dominant_modes,
    grid_modes,
    induced_function,
    primitive_root,
)
from headscreen.grokking.li2.lockin import calibrate_tau, detect_lockin, r23_series, stack_gram_windows
from headscreen.grokking.li2.network import (
    Li2Config,
    Li2Net,
    critical_fraction,
    li2_loss,
    sign_match,
    train_li2,
)
from headscreen.spectral.planted import planted_head_series


# --- detector ------------------------------------------------------------------------------------
def _deltas(theta: torch.Tensor) -> torch.Tensor:
    t = theta[:, 0, 0].double()
    return t[1:] - t[:-1]


def _r23(seed: int, planted: dict, onset: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    theta = planted_head_series(200, 1, 1, 400, planted, onset=onset, duration=60, amp=4.0, seed=seed)
    grams = stack_gram_windows(_deltas(theta), 10)
    r23, k = r23_series(grams)
    return r23, k, np.arange(10, 200)


def test_lockin_never_fires_on_noise_and_fires_on_a_planted_rank2_onset():
    controls = [_r23(s, {})[0] for s in range(5)]
    tau = calibrate_tau(controls, skip=10)
    assert all(not detect_lockin(r, np.ones_like(r), np.arange(r.size), tau, skip=10).fired for r in controls)
    # fresh noise seeds: the calibrated detector stays silent
    fresh = [_r23(s, {})[0] for s in range(20, 30)]
    assert sum(detect_lockin(r, np.ones_like(r), np.arange(r.size), tau, skip=10).fired for r in fresh) <= 1
    for seed in range(3):
        r23, k, epochs = _r23(100 + seed, {(0, 0): 2})
        res = detect_lockin(r23, k, epochs, tau, skip=10)
        assert res.fired and 120 <= res.epoch <= 142, res  # within W + half_width epochs of the onset
        assert res.rank == 2 and res.r23 > tau


def test_calibrate_tau_refuses_bad_margin():
    with pytest.raises(ValueError, match="margin"):
        calibrate_tau([np.ones(5)], margin=0.5)


# --- Li2 ------------------------------------------------------------------------------------------
def test_li2_config_errors_and_critical_fraction():
    with pytest.raises(ConfigError, match="activation"):
        Li2Config(activation="tanh")
    with pytest.raises(ConfigError, match="prime"):
        Li2Config(m=20)
    # hand values of 2.7482 ln M / M: M = 47 gives the 0.225 of docs/methods.md (Li2 controls), M = 71 0.1650
    assert critical_fraction(47) == pytest.approx(0.2251, abs=1e-4)
    assert critical_fraction(71) == pytest.approx(0.1650, abs=1e-4)
    assert critical_fraction(97) < critical_fraction(71)  # n ~ M log M: the fraction falls with M


def test_li2_forward_on_a_hand_computed_case():
    """M = 3, K = 2, hand-set weights: out(a, b) = V σ(W_a[:, a] + W_b[:, b]), worked out on paper."""
    net = Li2Net(3, 2, "sqr", seed=1)
    with torch.no_grad():
        net.W_a.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]))  # [K, M]
        net.W_b.copy_(torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 1.0]]))
        net.V.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))  # [M, K]
    a, b = torch.tensor([2, 1]), torch.tensor([0, 1])
    # (2, 0): pre (3+1, 0+2) = (4, 2), squared (16, 4), V·h = (16, 4, 20); (1, 1): pre (2, 2) -> (4, 4, 8)
    assert net(a, b).tolist() == [[16.0, 4.0, 20.0], [4.0, 4.0, 8.0]]
    relu = Li2Net(3, 2, "relu", seed=1)
    with torch.no_grad():
        relu.W_a.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.0, 1.0, 0.0]]))
        relu.W_b.copy_(torch.tensor([[1.0, 0.0, 0.0], [-2.0, 1.0, 1.0]]))
        relu.V.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # (1, 0): pre (-2+1, 1-2) = (-1, -1) -> relu (0, 0); (2, 1): pre (3, 1) -> (3, 1, 4)
    assert relu(torch.tensor([1, 2]), torch.tensor([0, 1])).tolist() == [[0.0, 0.0, 0.0], [3.0, 1.0, 4.0]]


def test_sign_match_agrees_with_an_explicit_pair_loop():
    net = Li2Net(5, 4, "relu", seed=3)
    a = torch.arange(5).repeat_interleave(5)
    b = torch.arange(5).repeat(5)
    x = torch.cat([torch.eye(5)[a], torch.eye(5)[b]], 1).double()
    w = torch.cat([net.W_a, net.W_b], 1).double().detach()
    z = x @ w.T
    h, dh = z.clamp(min=0), (z > 0).double()
    v = net.V.double().detach()
    pos, n = 0, 0
    for j in range(4):
        for k in range(4):
            if j != k:
                g = (v[:, j] @ v[:, k]) * ((dh[:, j] * h[:, k])[:, None] * x).sum(0)
                pos += int(g @ w[k] > 0)
                n += 1
    assert sign_match(net, a, b) == pytest.approx(pos / n)


def test_li2_training_lowers_the_loss_and_records_every_window():
    cfg = Li2Config(m=11, hidden=32, epochs=30, lr=1e-2, train_frac=0.6, eval_every=5, sign_every=10,
                    snapshot_every=0)
    hist = train_li2(cfg)
    assert hist.grams.shape == (30 - 10 + 1, 10, 10)
    assert hist.curves["train_loss"].iloc[-1] < hist.curves["train_loss"].iloc[0]
    edge = hist.edge()
    assert list(edge["epoch"]) == list(range(10, 31)) and (edge["r_23"] >= 1).all()
    # the last Gram is the Gram of the last 10 recorded updates: its trace = their squared norms
    net = Li2Net(11, 32, seed=0)
    assert li2_loss(net, torch.tensor([1]), torch.tensor([2]), torch.tensor([3]), "mse").ndim == 0


# --- modes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [5, 7, 11, 13])
def test_discrete_log_basis_is_orthonormal(p):
    basis, labels = discrete_log_basis(p)
    assert torch.allclose(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-12)
    assert labels[0] == -1 and labels.numel() == p


def test_primitive_root():
    assert primitive_root(7) == 3 and primitive_root(11) == 2 and primitive_root(13) == 2
    with pytest.raises(ValueError, match="prime"):
        primitive_root(12)


def test_grid_modes_recover_planted_fourier_and_discrete_log_modes():
    p, k = 13, 4
    a = torch.arange(p, dtype=torch.float64)
    f = torch.cos(2 * math.pi * k * (a[:, None] + a[None, :]) / p)
    top = dominant_modes(grid_modes(f, "fourier"), 1)[0]
    assert (top["k_a"], top["k_b"]) == (k, k) and top["share"] == pytest.approx(1.0)
    g = primitive_root(p)
    log = {pow(g, i, p): i for i in range(p - 1)}
    la = torch.tensor([log.get(int(x), 0) for x in range(p)], dtype=torch.float64)
    h = torch.cos(2 * math.pi * 3 * (la[:, None] + la[None, :]) / (p - 1))
    h[0, :] = 0
    h[:, 0] = 0
    top = dominant_modes(grid_modes(h[..., None].repeat(1, 1, 2), "dlog"), 1)[0]
    assert (top["k_a"], top["k_b"]) == (3, 3) and top["share"] == pytest.approx(1.0)
    # the same function is spread out in the Fourier basis
    assert dominant_modes(grid_modes(h, "fourier"), 1)[0]["share"] < 0.5


def test_induced_function_is_the_directional_derivative():
    w = torch.randn(3, 4, dtype=torch.float64)
    v = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)

    def forward(params):
        return (x @ params["w"].T).pow(2)

    jv = induced_function(forward, {"w": w}, {"w": v})
    eps = 1e-6
    fd = (forward({"w": w + eps * v}) - forward({"w": w - eps * v})) / (2 * eps)
    assert torch.allclose(jv, fd, atol=1e-6)


# --- coupling ------------------------------------------------------------------------------------
def test_coupling_on_a_hand_built_case():
    p = 50
    e = torch.eye(p, dtype=torch.float64)
    # gradients spanning e0, e1 (plus tiny noise along e2): the top-2 subspace is span(e0, e1)
    rows = torch.stack([3 * e[0] + e[1], e[0] - 2 * e[1], 2 * e[0] + e[1] + 1e-3 * e[2]])
    assert subspace_coupling(rows, e[0] + e[1], k=2) == pytest.approx(p / 2)  # centroid in the span
    assert subspace_coupling(rows, e[5], k=2) == pytest.approx(0.0, abs=1e-12)  # orthogonal
    c = e[0] + e[7]  # half its energy in the span: (0.5 / 2) * 50
    assert subspace_coupling(rows, c, k=2) == pytest.approx(0.25 * p)
    assert coupling(e[:1], e[0]) == pytest.approx(p)
    assert random_coupling(torch.randn(2000, dtype=torch.float64), k=2, n=50) == pytest.approx(1.0, abs=0.3)


# --- wiring ----------------------------------------------------------------------------------------
def test_analyse_run_writes_window_analyses(tmp_path):
    from grok_fixtures import make_run

    from headscreen.grokking.analysis.analyse import analyse_run

    run = make_run(tmp_path / "run", p=11, n_snap=14, switch=6)
    out = analyse_run(run, progress=False)
    wa = out["window_analyses"]
    assert wa["end_step"] - wa["start_step"] == 10 * 20 and wa["k"] == 2
    add = wa["tasks"]["add"]
    assert add["mode_kind"] == "fourier" and [d["direction"] for d in add["edge_modes"]] == [1, 2]
    for d in add["edge_modes"]:
        shares = [m["share"] for m in d["modes"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    c = add["coupling"]
    assert c["gradient_svd"] >= 0 and c["update_svd"] >= 0 and 0.2 < c["random"] < 5
    assert c["update_over_random"] == pytest.approx(c["update_svd"] / c["random"])
    from headscreen.report.grok_build import grok_report
    from pipelines.report_prep import prepare

    secs = {s.key: s for s in grok_report([run], {}, prepare([run])).runs[0].sections}
    assert secs["grok_window"].figures and "li2_lockin" not in secs


def test_li2_run_directory_and_cli(tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["grok", "li2", "--m", "11", "--hidden", "16", "--epochs", "25", "--tau", "3", "--snapshot-every",
               "10", "--no-progress", "--out", str(tmp_path / "li2")])
    assert rc == 0
    import json

    import pandas as pd

    g = json.loads((tmp_path / "li2" / "grok.json").read_text())
    assert g["family"] == "li2" and g["lockin"]["tau"] == 3 and g["n_snapshots"] == 4  # epochs 0, 10, 20 and the last, 25
    table = pd.read_parquet(tmp_path / "li2" / "li2.parquet")
    assert {"epoch", "r_23", "kstar", "sign_match"} <= set(table.columns)
    assert main(["grok", "li2", "--m", "12", "--out", str(tmp_path / "bad")]) == 2
    assert "prime" in capsys.readouterr().err


def test_report_of_a_li2_run_has_the_lockin_figure(tmp_path):
    from headscreen.grokking.li2.network import Li2Config
    from headscreen.grokking.li2.run import run_li2
    from headscreen.report.grok_build import grok_report
    from pipelines.report_prep import prepare

    run_li2(Li2Config(m=11, hidden=16, epochs=25, tau=3.0, snapshot_every=10), tmp_path / "li2", progress=False)
    report = grok_report([tmp_path / "li2"], {}, prepare([tmp_path / "li2"]))
    secs = {s.key: s for s in report.runs[0].sections}
    assert secs["li2_lockin"].figures and secs["li2_lockin"].data["lockin"]["tau"] == 3.0
    assert "grok_window" not in secs  # no window analyses for a Li2 run
