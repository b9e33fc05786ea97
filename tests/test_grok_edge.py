"""headscreen.grokking.analysis.edge / portrait: the spectral edge through the grokking path, and the portrait."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from headscreen.grokking.analysis.edge import (
    GapRule,
    edge_frame,
    edge_from_sketcher,
    phase_summary,
    transient_windows,
    trunk_names,
    trunk_sketcher,
    trunk_vector,
)
from headscreen.grokking.analysis.portrait import (
    commutator_peak,
    in_proj,
    portrait_frame,
    portrait_point,
    smooth,
)
from headscreen.spectral import SpectralConfig, edge_phases, rolling_window_stats

torch.set_num_threads(1)
W = 10


def _rank2_switch(t: int = 40, switch: int = 25, p: int = 300, seed: int = 0) -> torch.Tensor:
    """θ_0..θ_{t-1}: isotropic random updates, then from update `switch` on rank-2 rotating updates."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(p, 2, generator=g, dtype=torch.float64))[0].T  # [2, p]
    deltas = []
    for i in range(1, t):
        noise = 0.02 * torch.randn(p, generator=g, dtype=torch.float64)
        if i >= switch:
            ang = 0.7 * i
            noise = noise + 3.0 * (np.cos(ang) * basis[0] + np.sin(ang) * basis[1])
        deltas.append(noise)
    return torch.cat([torch.zeros(1, p, dtype=torch.float64), torch.cumsum(torch.stack(deltas), 0)])


def test_trunk_edge_equals_spectral_on_raw_vectors():
    theta = _rank2_switch()
    steps = [10 * i for i in range(theta.shape[0])]
    sk = trunk_sketcher(zip(steps, theta, strict=True), SpectralConfig(exact=True))
    res = edge_from_sketcher(sk, transient=2)
    ref = rolling_window_stats(theta, W)  # the spectral layer on the raw stacked vectors
    np.testing.assert_allclose(res.fingerprint.metric("ratio_23")[:, 0, 0], ref.stats.r_23.numpy(), rtol=1e-9)
    np.testing.assert_allclose(res.fingerprint.metric("sigma_1")[:, 0, 0], ref.stats.sigma[:, 0].numpy(), rtol=1e-9)
    np.testing.assert_array_equal(res.fingerprint.metric("kstar")[:, 0, 0], ref.stats.kstar.numpy())
    ph = edge_phases(ref.stats.r_23, 1.2, skip=2)
    assert torch.equal(res.phases.labels[:, 0, 0], ph.labels)
    # the default (JL sketch, d = 100, exact update norms) tracks the exact edge
    approx = edge_from_sketcher(trunk_sketcher(zip(steps, theta, strict=True)), transient=2)
    a, e = approx.fingerprint.metric("ratio_23")[:, 0, 0], res.fingerprint.metric("ratio_23")[:, 0, 0]
    assert np.median(np.abs(a - e) / e) < 0.15


def test_gap_opens_where_rank2_updates_fill_two_slots():
    theta = _rank2_switch(switch=25)
    steps = np.arange(theta.shape[0]) * 10
    res = edge_from_sketcher(trunk_sketcher(zip(steps.tolist(), theta, strict=True), SpectralConfig(exact=True)),
                             transient=2)
    # window ending at checkpoint 26 is the first to hold two rank-2 updates (δ_25, δ_26)
    assert res.gap_open[0, 0] == steps[26]
    # phases: the r23 peak comes after the switch, and the frame carries the phase codes
    summary = phase_summary(res)
    assert summary.loc[0, "peak_step"] >= steps[26]
    frame = edge_frame(res, "trunk")
    assert set(frame["scope"]) == {"trunk"} and (frame["layer"] == -1).all()
    assert not frame["metric"].str.endswith("_rel").any()
    assert set(frame.loc[frame.metric == "phase", "value"]) <= {-1.0, 0.0, 1.0, 2.0}
    # an isotropic trajectory never opens a gap
    flat = _rank2_switch(switch=10_000)
    res0 = edge_from_sketcher(trunk_sketcher(zip(steps.tolist(), flat, strict=True), SpectralConfig(exact=True)),
                              transient=2)
    assert np.isnan(res0.gap_open[0, 0])


@pytest.mark.filterwarnings("ignore:only 2 of 4 windows")
def test_gap_rule_too_short_and_bad_values():
    theta = _rank2_switch(t=14)
    res = edge_from_sketcher(trunk_sketcher(enumerate(theta), SpectralConfig(exact=True)), transient=2)
    assert np.isnan(res.gap_open[0, 0]) and "needs 7" in res.note
    with pytest.raises(ValueError, match="factor"):
        GapRule(factor=1.0)


def test_transient_windows_from_memorisation():
    steps = np.arange(31) * 100
    assert transient_windows(steps, W, 250) == 3  # windows starting at steps 0, 100, 200
    assert transient_windows(steps, W, None) == W
    assert transient_windows(steps, W, 0) == 0


def test_trunk_vector_selects_attention_and_mlp_weights():
    sd = {"embed.W_E": torch.ones(5, 4), "blocks.0.attn.W_Q": torch.full((2, 4, 2), 2.0),
          "blocks.0.attn.b_Q": torch.ones(2, 2), "blocks.0.mlp.W_in": torch.full((4, 3), 3.0),
          "blocks.0.ln1.weight": torch.ones(4), "unembed.W_U": torch.ones(4, 5), "heads.add.W_U": torch.ones(4, 5)}
    assert trunk_names(sd) == ["blocks.0.attn.W_Q", "blocks.0.mlp.W_in"]
    v = trunk_vector(sd)
    assert v.shape == (16 + 12,) and v[:16].eq(2).all() and v[16:].eq(3).all()
    with pytest.raises(ValueError, match="no trunk tensor"):
        trunk_vector({"embed.W_E": torch.ones(2)})


# ----------------------------------------------------------------------------------------------
# phase portrait


def test_portrait_point_against_explicit_in_proj():
    g = torch.Generator().manual_seed(0)
    h, d_model, d_head = 2, 4, 2
    wq = torch.randn(h, d_model, d_head, generator=g, dtype=torch.float64)
    wk = torch.randn(h, d_model, d_head, generator=g, dtype=torch.float64)
    # the torch in_proj layout built by hand: row h·d_head + e, column i = W[h, i, e]
    q = np.zeros((h * d_head, d_model))
    k = np.zeros((h * d_head, d_model))
    for hh in range(h):
        for e in range(d_head):
            q[hh * d_head + e] = wq[hh, :, e].numpy()
            k[hh * d_head + e] = wk[hh, :, e].numpy()
    np.testing.assert_allclose(in_proj(wq).numpy(), q)
    rows = portrait_point(wq, wk)
    s = np.linalg.svd(q, compute_uv=False)
    assert rows[0]["head"] == -1 and rows[0]["square"]
    assert rows[0]["x"] == pytest.approx(s[0] - s[1])
    assert rows[0]["y"] == pytest.approx(np.linalg.norm(q @ k - k @ q))
    for hh in range(h):
        qb, kb = q[hh * 2 : hh * 2 + 2, hh * 2 : hh * 2 + 2], k[hh * 2 : hh * 2 + 2, hh * 2 : hh * 2 + 2]
        sb = np.linalg.svd(qb, compute_uv=False)
        assert rows[1 + hh]["x"] == pytest.approx(sb[0] - sb[1])
        assert rows[1 + hh]["y"] == pytest.approx(np.linalg.norm(qb @ kb - kb @ qb))
    # commuting matrices (both diagonal in in_proj layout) have y = 0
    diag = torch.zeros(2, 4, 2, dtype=torch.float64)
    diag[0, 0, 0], diag[0, 1, 1], diag[1, 2, 0], diag[1, 3, 1] = 1.0, 2.0, 3.0, 4.0
    assert portrait_point(diag, 2 * diag)[0]["y"] == pytest.approx(0.0)


def test_portrait_non_square_layer():
    rows = portrait_point(torch.randn(2, 6, 2), torch.randn(2, 6, 2))  # H·d_head = 4 ≠ d_model = 6
    assert not rows[0]["square"] and np.isnan(rows[0]["y"]) and np.isfinite(rows[0]["x"])
    assert all(np.isfinite(r["y"]) for r in rows[1:])
    rows = portrait_point(torch.randn(4, 6, 2), torch.randn(4, 6, 2))  # head 3's block would need column 8
    assert np.isnan(rows[-1]["y"]) and np.isfinite(rows[-2]["y"])


def test_smoothing_and_peak():
    np.testing.assert_allclose(smooth(np.array([0.0, 3.0, 6.0, 0.0])), [1.5, 3.0, 3.0, 3.0])
    points = {s: [{"head": -1, "x": 0.0, "y": float(y), "square": True}] for s, y in zip([0, 10, 20, 30, 40], [0, 1, 5, 1, 0], strict=True)}
    df = portrait_frame(points)
    assert list(df.columns) == ["step", "head", "x", "y", "square", "x_smooth", "y_smooth"]
    assert df["y_smooth"].tolist() == pytest.approx([0.5, 2.0, 7 / 3, 2.0, 0.5])
    assert commutator_peak(df) == 20
    assert commutator_peak(df, after=30) == 30
    assert commutator_peak(pd.DataFrame({"step": [0], "head": [-1], "y_smooth": [np.nan]})) is None
