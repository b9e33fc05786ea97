"""headscreen.spectral: update-Gram statistics, JL sketches, trajectory PCA, per-head fingerprints."""

from __future__ import annotations

import dataclasses
import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch

from headscreen.series.weights import HeadWeights
from headscreen.spectral import (
    CountSketch,
    ExactProjector,
    GaussianSketch,
    HeadSketcher,
    SpectralConfig,
    adiabatic,
    backbone,
    compute_fingerprint,
    edge_phases,
    fingerprint,
    gram_stats,
    make_projector,
    metric_names,
    onsets,
    pc1_rotation,
    rank_heads,
    rolling_window_stats,
)
from headscreen.spectral.planted import momentum_trajectory, planted_head_series

torch.set_num_threads(1)
segments_module = importlib.import_module("headscreen.spectral.segments")

W = 10
STEPS = lambda t: [40 * i for i in range(t)]  # noqa: E731


def _direct_window_svdvals(v: torch.Tensor, window: int) -> torch.Tensor:
    """[n_win, *batch, W] singular values of explicitly stacked updates (the reference)."""
    d = v.double()[1:] - v.double()[:-1]
    out = []
    for w in range(d.shape[0] - window + 1):
        x = d[w : w + window].movedim(0, -2)  # [*batch, W, P]
        out.append(torch.linalg.svdvals(x))
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Config


def test_config_defaults_and_validation():
    cfg = SpectralConfig()
    # default: CountSketch at d = 50·W (meets the 5.7% gap-ratio target); the published Gaussian at d = 10·W
    assert cfg.sketch_kind == "countsketch" and cfg.dim == 500 and cfg.transient == 10 and cfg.n_baseline == 10
    assert SpectralConfig(window=6).dim == 300 and SpectralConfig(window=6, sketch_kind="gaussian").dim == 60
    assert SpectralConfig(sketch_kind="gaussian", sketch_dim=70).dim == 70
    assert SpectralConfig(exact=True).dim is None
    with pytest.raises(ValueError, match=r"SpectralConfig\.window=2 .*window >= 3"):
        SpectralConfig(window=2)
    with pytest.raises(ValueError, match=r"SpectralConfig\.sketch_dim=5"):
        SpectralConfig(sketch_dim=5)
    with pytest.raises(ValueError, match=r"SpectralConfig\.min_sigma_frac"):
        SpectralConfig(min_sigma_frac=1.5)
    with pytest.raises(ValueError, match=r"SpectralConfig\.baseline='mean'"):
        SpectralConfig(baseline="mean")
    with pytest.raises(ValueError, match=r"SpectralConfig\.rel_scope"):
        SpectralConfig(rel_scope="head")
    with pytest.raises(ValueError, match=r"SpectralConfig\.collapse_threshold"):
        SpectralConfig(collapse_threshold=0.9)
    with pytest.raises(ValueError, match=r"SpectralConfig\.sketch_kind='sparse' .*'countsketch'"):
        SpectralConfig(sketch_kind="sparse")
    with pytest.raises(ValueError, match=r"SpectralConfig\.projection_dtype='float16' .*'float32'"):
        SpectralConfig(projection_dtype="float16")
    with pytest.raises(ValueError, match=r"SpectralConfig\.gram_estimator='exact' .*'norm_corrected'"):
        SpectralConfig(gram_estimator="exact")
    assert SpectralConfig().to_dict()["projection_dtype"] == "float32"
    assert SpectralConfig().to_dict()["gram_estimator"] == "norm_corrected"  # recorded in the manifest


# ----------------------------------------------------------------------------------------------
# Gram statistics


def test_exact_rolling_sigma_matches_svdvals_of_stacked_updates():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(16, 2, 3, 64, generator=g, dtype=torch.float64).cumsum(0)
    v[:, 0, 1] += torch.linspace(0, 5, 16, dtype=torch.float64)[:, None] * torch.randn(64, generator=g,
                                                                                        dtype=torch.float64)
    ws = rolling_window_stats(v, W)
    ref = _direct_window_svdvals(v, W)
    assert ws.stats.sigma.shape == ref.shape == (6, 2, 3, W)
    torch.testing.assert_close(ws.stats.sigma, ref, rtol=1e-10, atol=1e-10)
    assert ws.end_index.tolist() == list(range(W, 16))
    # the Gram of each window is the Gram of δ_{w+1..w+W}
    d = v[1:] - v[:-1]
    x = d[3 : 3 + W].movedim(0, -2)
    torch.testing.assert_close(ws.gram[3], x @ x.mT)
    # ratios from the same singular values
    torch.testing.assert_close(ws.stats.r_12, ref[..., 0] / ref[..., 1])
    torch.testing.assert_close(ws.stats.r_23, ref[..., 1] / ref[..., 2])
    torch.testing.assert_close(ws.stats.g_23, ref[..., 1] ** 2 - ref[..., 2] ** 2)
    kstar_ref = (ref[..., :-1] / ref[..., 1:]).argmax(-1) + 1
    assert torch.equal(ws.stats.kstar, kstar_ref)
    torch.testing.assert_close(ws.update_norm, d[ws.end_index - 1].norm(dim=-1))


def test_exact_fingerprint_sigmas_match_svdvals():
    v = planted_head_series(14, 2, 2, 48, {(1, 0): 1}, onset=4, seed=3, dtype=torch.float64)
    cfg = SpectralConfig(exact=True, transient_windows=0)
    sk = HeadSketcher(cfg)
    for t in range(14):
        sk.update(v[t], 40 * t)
    assert isinstance(sk.projector, ExactProjector)
    fp = compute_fingerprint(sk.sketches, sk.steps, config=cfg, update_norms=sk.update_norms)
    ref = _direct_window_svdvals(v, W)  # [n_win, L, H, W]
    for j in range(W):
        np.testing.assert_allclose(fp.metric(f"sigma_{j + 1}"), ref[..., j].numpy(), rtol=1e-9, atol=1e-9)


def test_diagonal_gram_formulas_plain_vs_weighted_edge():
    sigma = torch.tensor([8.0, 4.0, 3.5, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=torch.float64)
    st = gram_stats(torch.diag(sigma**2))
    torch.testing.assert_close(st.sigma, sigma)
    assert st.kstar.item() == 3  # 3.5/1.0 is the largest ratio
    assert st.R.item() == pytest.approx(3.5)
    s = sigma.sum().item()
    scores = [(sigma[j] / s * sigma[j] / sigma[j + 1]).item() for j in range(9)]
    assert st.kstar_weighted.item() == int(np.argmax(scores)) + 1 == 1  # 8/Σ·2 beats 3.5/Σ·3.5
    assert st.gap_norm.item() == pytest.approx((64 - 16) / 64)
    assert st.r_12.item() == pytest.approx(2.0) and st.r_23.item() == pytest.approx(4 / 3.5)
    assert st.g_23.item() == pytest.approx(16 - 12.25)


def test_weighted_kstar_ignores_sigmas_below_min_fraction():
    # σ_4 = 0.4 < 0.05·σ_1 = 0.5, but its ratio 0.4/1e-4 would otherwise win the weighted score
    sigma = torch.tensor([10.0, 9.0, 8.0, 0.4] + [1e-4] * 6, dtype=torch.float64)
    gram = torch.diag(sigma**2)
    free = gram_stats(gram, min_sigma_frac=0.0)
    assert free.kstar.item() == free.kstar_weighted.item() == 4
    restricted = gram_stats(gram, min_sigma_frac=0.05)
    assert restricted.kstar.item() == 4 and restricted.kstar_weighted.item() == 3
    assert restricted.gap_norm.item() == pytest.approx((64 - 0.16) / 100)
    assert free.gap_norm.item() == pytest.approx((0.16 - 1e-8) / 100)


def test_ratios_unchanged_when_updates_are_scaled():
    g = torch.Generator().manual_seed(1)
    v = planted_head_series(20, 2, 3, 40, {(0, 1): 2, (1, 2): 1}, onset=8, seed=1, dtype=torch.float64)
    v = v + 1e-3 * torch.randn(v.shape, generator=g, dtype=torch.float64)
    a = rolling_window_stats(v, W).stats
    for c in (1e-3, 7.0):
        b = rolling_window_stats(c * v, W).stats
        torch.testing.assert_close(b.sigma, c * a.sigma, rtol=1e-9, atol=0)
        torch.testing.assert_close(b.ratios, a.ratios, rtol=1e-9, atol=0)
        torch.testing.assert_close(b.gap_norm, a.gap_norm, rtol=1e-8, atol=1e-12)
        assert torch.equal(b.kstar, a.kstar) and torch.equal(b.kstar_weighted, a.kstar_weighted)


def test_zero_guard_exact_low_rank_and_frozen_head():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(200, generator=g, dtype=torch.float64)
    coef = torch.rand(15, generator=g, dtype=torch.float64) + 0.5
    rank1 = torch.cat([torch.zeros(1, 200, dtype=torch.float64), (coef[:, None] * u).cumsum(0)])
    frozen = torch.ones(16, 200, dtype=torch.float64)
    st = rolling_window_stats(torch.stack([rank1, frozen], dim=1), W).stats  # [n_win, 2]
    assert (st.kstar[:, 0] == 1).all() and (st.kstar_weighted[:, 0] == 1).all()
    assert torch.isfinite(st.ratios[:, 0]).all() and (st.r_12[:, 0] > 1e6).all()
    torch.testing.assert_close(st.r_23[:, 0], torch.ones(6, dtype=torch.float64))  # zeros among themselves
    assert (st.kstar[:, 1] == 0).all() and torch.isnan(st.r_12[:, 1]).all() and torch.isnan(st.gap_norm[:, 1]).all()


def test_edge_phases_rise_plateau_collapse():
    r23 = torch.tensor([[1.9, 1.1], [1.3, 1.15], [1.5, 1.3], [1.7, 1.5], [1.6, 1.45],
                        [1.4, 1.4], [1.25, 1.35], [1.15, 1.3], [1.1, 1.3]], dtype=torch.float64)
    ph = edge_phases(r23, 1.20, skip=1)  # window 0 (the transient) is ignored for the peak
    assert ph.peak.tolist() == [3, 3]
    assert ph.collapse.tolist() == [7, -1]  # second column never drops below 1.20 after its peak
    assert ph.labels[:, 0].tolist() == [-1, 0, 0, 1, 1, 1, 1, 2, 2]
    assert ph.labels[:, 1].tolist() == [-1, 0, 0, 1, 1, 1, 1, 1, 1]
    assert edge_phases(r23, 1.20).peak.tolist() == [0, 3]


def test_adiabatic_parameter_by_hand():
    v = planted_head_series(14, 1, 2, 30, {(0, 0): 1}, onset=3, seed=4, dtype=torch.float64)
    ws = rolling_window_stats(v, W)
    a = adiabatic(ws.gram, 1e-3, ws.stats)
    assert a.shape == (4, 1, 2) and torch.isnan(a[0]).all()
    g1, g0 = ws.gram[2, 0, 1], ws.gram[1, 0, 1]
    lam = torch.linalg.eigvalsh(g1).flip(0)
    k = int(ws.stats.kstar[2, 0, 1])
    expected = torch.linalg.matrix_norm(g1 - g0) / (1e-3 * (lam[k - 1] - lam[k]) ** 2)
    assert a[2, 0, 1].item() == pytest.approx(expected.item(), rel=1e-8)
    per_window = adiabatic(ws.gram, torch.full((4,), 2e-3), ws.stats)
    torch.testing.assert_close(per_window[1:], a[1:] / 2)


# ----------------------------------------------------------------------------------------------
# Sketches


def test_sketch_is_the_defined_gaussian_matrix():
    sk = GaussianSketch(5000, 100, seed=3, block_size=1024)
    phi = sk.matrix()
    assert phi.shape == (100, 5000)
    assert abs(phi.mean().item()) < 3 / math.sqrt(phi.numel())
    assert phi.var().item() == pytest.approx(1 / 100, rel=0.03)
    x = torch.randn(3, 4, 5000, dtype=torch.float64)
    torch.testing.assert_close(sk.project(x), x @ phi.T, rtol=1e-12, atol=1e-10)
    assert not torch.equal(GaussianSketch(5000, 100, seed=4, block_size=1024).matrix(), phi)
    # the documented definition: block b = PCG64(SeedSequence([seed, b])) normals, column-major, / sqrt(d)
    for b, cols in ((0, 1024), (4, 5000 - 4 * 1024)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, b])))
        z = torch.from_numpy(rng.standard_normal((cols, 100), dtype=np.float32)).T.double() / 10
        assert torch.equal(phi[:, b * 1024 : b * 1024 + cols], z)
    # blocks are independent draws, not copies
    c = torch.corrcoef(torch.stack([phi[:, :1024].flatten(), phi[:, 1024:2048].flatten()]))[0, 1]
    assert abs(c.item()) < 0.02


def test_sketch_independent_of_chunking_and_cache():
    p, d = 10_000, 50
    x = torch.randn(2, 3, p)
    cached = GaussianSketch(p, d, seed=7, block_size=1000)
    uncached = GaussianSketch(p, d, seed=7, block_size=1000, cache_bytes=0)
    full = cached.project(x)
    assert cached.cached_bytes == d * p * 4 and uncached.cached_bytes == 0
    assert torch.equal(full, uncached.project(x))
    assert torch.equal(full, cached.project(x))  # second call from the cache
    for cuts in ([0, 2500, 2501, 7777, p], [0, 1000, 5000, p], [0, 3, p]):
        parts = sum(cached.project(x[..., a:b], col_offset=a) for a, b in zip(cuts[:-1], cuts[1:], strict=True))
        torch.testing.assert_close(parts, full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.cat([cached.project(x[:1]), cached.project(x[1:])]), full,
                               rtol=1e-12, atol=1e-12)
    # Φ of a shorter vector is the prefix of Φ of a longer one (column-major draws)
    assert torch.equal(GaussianSketch(p - 1234, d, seed=7, block_size=1000).matrix(), cached.matrix()[:, : p - 1234])
    # a partial cache holds at most its budget and changes nothing
    partial = GaussianSketch(p, d, seed=7, block_size=1000, cache_bytes=3 * d * 1000 * 4 + 5)
    assert torch.equal(partial.project(x), full) and partial.cached_bytes == 3 * d * 1000 * 4


def test_head_sketcher_result_does_not_depend_on_cache_budget():
    v = torch.randn(4, 2, 2, 3000)
    outs = []
    for cache in (0, 10**9):
        hs = HeadSketcher(SpectralConfig(block_size=700, cache_bytes=cache))
        outs.append(torch.stack([hs.update(v[t], t).sketch for t in range(4)]))
    assert torch.equal(outs[0], outs[1])


def test_sketch_agrees_with_exact_at_d_10w():
    v = momentum_trajectory(40, 4096, beta=0.9, batch=(2, 2), seed=5)
    exact = rolling_window_stats(v, W).stats
    errs_r, errs_s = [], []
    for seed in range(3):
        s = make_projector(SpectralConfig(seed=seed, sketch_kind="gaussian"), 4096).project(v)  # the published sketch
        assert s.shape == (40, 2, 2, 100)
        st = rolling_window_stats(s, W).stats
        k = exact.kstar
        r_sk = st.ratios.gather(-1, (k - 1).unsqueeze(-1)).squeeze(-1)
        errs_r.append(((r_sk - exact.R).abs() / exact.R).mean().item())
        errs_s.append(((st.sigma[..., :3] - exact.sigma[..., :3]).abs() / exact.sigma[..., :3]).mean().item())
    # JL theory: ~0.8/sqrt(d) = 8% mean error of a ratio, ~5.6% of a singular value at d = 100
    assert np.mean(errs_r) < 0.11, errs_r
    assert np.mean(errs_s) < 0.08, errs_s
    big = rolling_window_stats(GaussianSketch(4096, 1000, seed=0).project(v), W).stats
    assert ((big.sigma[..., :3] - exact.sigma[..., :3]).abs() / exact.sigma[..., :3]).mean() < np.mean(errs_s) / 2


def test_norm_corrected_gram_has_exact_norms_and_sketched_cosines():
    v = momentum_trajectory(30, 4096, beta=0.9, batch=(2, 2), seed=5)
    exact = rolling_window_stats(v, W)
    norms = exact.delta_norm  # [T-1, 2, 2]
    s = GaussianSketch(4096, 100, seed=1).project(v)
    raw = rolling_window_stats(s, W)
    cor = rolling_window_stats(s, W, update_norms=norms)
    # window 0 holds updates 1..W: diagonal = exact ‖δ‖², cosines = the sketched ones
    diag = cor.gram[0].diagonal(dim1=-2, dim2=-1)  # [2, 2, W]
    torch.testing.assert_close(diag, norms[:W].movedim(0, -1) ** 2, rtol=1e-12, atol=0)

    def cos(g):
        d = g.diagonal(dim1=-2, dim2=-1).sqrt()
        return g / (d[..., :, None] * d[..., None, :])

    torch.testing.assert_close(cos(cor.gram), cos(raw.gram), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cor.delta_norm, norms, rtol=1e-12, atol=0)
    # on the exact vectors the correction changes nothing
    same = rolling_window_stats(v, W, update_norms=norms)
    torch.testing.assert_close(same.gram, exact.gram, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match=r"update_norms must be \[T-1, \*batch\]"):
        rolling_window_stats(s, W, update_norms=norms[1:])


def test_norm_corrected_estimator_in_the_fingerprint():
    v = momentum_trajectory(40, 4096, beta=0.9, batch=(2, 2), seed=5)
    exact = rolling_window_stats(v, W).stats
    norms = torch.cat([torch.full((1, 2, 2), math.nan, dtype=torch.float64),
                       (v[1:] - v[:-1]).double().norm(dim=-1)])
    errs = {}
    for est in ("raw", "norm_corrected"):
        cfg = SpectralConfig(gram_estimator=est)
        e = []
        for seed in range(3):
            s = make_projector(dataclasses.replace(cfg, seed=seed), 4096).project(v)
            fp = compute_fingerprint(s, STEPS(40), config=cfg, update_norms=norms)
            r12 = torch.from_numpy(fp.metric("ratio_12"))
            e.append(((r12 - exact.r_12).abs() / exact.r_12).mean().item())
            # the recorded update norm is the exact one either way
            np.testing.assert_allclose(fp.metric("update_norm"), norms[W:].numpy(), rtol=1e-12)
        errs[est] = np.mean(e)
    # measured on this trajectory: 0.078 raw vs 0.071 corrected (fixed seeds, so deterministic)
    assert errs["norm_corrected"] < errs["raw"], errs
    # without exact norms the raw estimator is all there is
    s = make_projector(SpectralConfig(), 4096).project(v)
    a = compute_fingerprint(s, STEPS(40), config=SpectralConfig(gram_estimator="norm_corrected"))
    b = compute_fingerprint(s, STEPS(40), config=SpectralConfig(gram_estimator="raw"))
    np.testing.assert_array_equal(a.raw, b.raw)


def test_countsketch_definition_and_projection():
    sk = CountSketch(5000, 100, seed=3, block_size=1024)
    s = sk.matrix().double()
    assert s.shape == (100, 5000)
    assert ((s != 0).sum(0) == 1).all() and set(s.unique().tolist()) == {-1.0, 0.0, 1.0}
    # the documented definition: block b = PCG64(SeedSequence([seed, b, 1])): rows, then sign bits
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, 4, 1])))
    rows = rng.integers(0, 100, 1024)[: 5000 - 4 * 1024]
    signs = rng.integers(0, 2, 1024)[: 5000 - 4 * 1024] * 2 - 1
    block = s[:, 4 * 1024 :]
    assert torch.equal(block.argmax(0) * (block.max(0).values > 0) + block.argmin(0) * (block.max(0).values <= 0),
                       torch.from_numpy(rows))
    assert torch.equal(block.sum(0), torch.from_numpy(signs).double())
    x = torch.randn(3, 4, 5000, dtype=torch.float64)
    torch.testing.assert_close(sk.project(x, dtype=torch.float64), x @ s.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sk.project(x.float()), (x @ s.T).float(), rtol=1e-5, atol=1e-5)
    parts = sum(sk.project(x[..., a:b], col_offset=a, dtype=torch.float64)
                for a, b in ((0, 1000), (1000, 3333), (3333, 5000)))
    torch.testing.assert_close(parts, x @ s.T, rtol=1e-12, atol=1e-12)
    assert torch.equal(CountSketch(3000, 100, seed=3, block_size=1024).matrix(), sk.matrix()[:, :3000])
    uncached = CountSketch(5000, 100, seed=3, block_size=1024, cache_bytes=0)
    assert torch.equal(uncached.project(x.float()), sk.project(x.float())) and uncached.cached_bytes == 0
    assert not torch.equal(CountSketch(5000, 100, seed=4, block_size=1024).matrix(), sk.matrix())


def test_countsketch_agrees_with_exact_like_the_gaussian_sketch():
    v = momentum_trajectory(40, 4096, beta=0.9, batch=(2, 2), seed=5)
    exact = rolling_window_stats(v, W).stats
    errs = {}
    for kind in ("gaussian", "countsketch"):
        e = []
        for seed in range(3):
            s = make_projector(SpectralConfig(seed=seed, sketch_kind=kind), 4096).project(v.float())
            st = rolling_window_stats(s, W).stats
            r_sk = st.ratios.gather(-1, (exact.kstar - 1).unsqueeze(-1)).squeeze(-1)
            e.append(((r_sk - exact.R).abs() / exact.R).mean().item())
        errs[kind] = np.mean(e)
    assert errs["countsketch"] < 0.11 and errs["countsketch"] < 1.5 * errs["gaussian"], errs
    # through the streaming sketcher: the records are S θ_t (float64) and the planted heads come first
    hs = HeadSketcher(SpectralConfig(sketch_kind="countsketch"))
    for t in range(v.shape[0]):
        rec = hs.update(v[t].float(), 40 * t)
    torch.testing.assert_close(rec.sketch, v[-1].float().double() @ hs.projector.matrix().double().T,
                               rtol=1e-5, atol=1e-4)
    assert hs.provenance()["projector"]["kind"] == "countsketch"


def test_projector_input_errors():
    with pytest.raises(ValueError, match=r"outside the projector's P=100"):
        GaussianSketch(100, 20).project(torch.randn(3, 120))
    with pytest.raises(ValueError, match=r"outside the projector's P=100"):
        ExactProjector(100).project(torch.randn(3, 50), col_offset=60)
    with pytest.raises(ValueError, match="dim=0"):
        GaussianSketch(100, 0)


# ----------------------------------------------------------------------------------------------
# Fingerprint on a planted series


PLANTED = {(1, 1): 1, (0, 2): 2, (1, 3): 1, (0, 0): 2}


@pytest.fixture(scope="module")
def planted_series():
    # 2 layers × 4 heads; planted heads get coherent rank-k updates from checkpoint 20; at checkpoint
    # 20 the whole network also reorganises (every head gets a coherent burst for 3 updates)
    return planted_head_series(46, 2, 4, 256, PLANTED, onset=20, amp=3.0, reorg_at=20, reorg_amp=3.0, seed=11)


@pytest.mark.parametrize("exact", [True, False])
def test_planted_heads_rank_first_and_have_kstar_k(planted_series, exact):
    cfg = SpectralConfig(exact=exact)
    hs = HeadSketcher(cfg)
    for t in range(planted_series.shape[0]):
        hs.update(planted_series[t], 40 * t)
    df = hs.fingerprint()
    fp = compute_fingerprint(hs.sketches, hs.steps, config=cfg, update_norms=hs.update_norms)
    planted = set(PLANTED)
    for metric in ("gap_norm_rel", "update_norm_rel"):
        top = rank_heads(df, metric, config=cfg).head(len(planted))
        assert set(zip(top["layer"], top["head"], strict=True)) == planted, (metric, top)
    # windows entirely after the burst and inside the planted period: k* == k, plain and weighted
    clean = fp.steps >= 40 * (20 + 3 + W - 1)
    assert clean.sum() >= 10
    for (layer, head), k in PLANTED.items():
        assert (fp.metric("kstar")[clean, layer, head] == k).all(), (layer, head, fp.metric("kstar")[:, layer, head])
        assert (fp.metric("kstar_weighted")[clean, layer, head] == k).all()
    # the network-wide reorganisation makes noise heads look like circuit heads in the raw edge and
    # against their own baseline ...
    noise = [(la, h) for la in range(2) for h in range(4) if (la, h) not in planted]
    r12z = fp.metric("ratio_12_z")[cfg.transient:]
    gap = fp.metric("gap_norm")[cfg.transient:]
    assert min(np.nanmax(r12z[:, la, h]) for la, h in noise) > 3.0
    assert min(gap[:, la, h].max() for la, h in noise) > 0.8
    # ... but not relative to the network median at the same window
    rel = fp.metric("gap_norm_rel")[cfg.transient:]
    assert max(rel[:, la, h].max() for la, h in noise) < min(rel[:, la, h].max() for la, h in planted)
    rel = fp.metric("update_norm_rel")[clean]
    assert max(rel[:, la, h].max() for la, h in noise) < min(rel[:, la, h].min() for la, h in planted)


def test_fingerprint_table_format(planted_series):
    cfg = SpectralConfig(exact=True)
    v = planted_series[:25]
    steps = [100 + 40 * t for t in range(25)]
    df = fingerprint(v, steps, config=cfg)
    assert list(df.columns) == ["step", "layer", "head", "metric", "value"]
    base = metric_names(W)
    assert base[:2] == ("sigma_1", "sigma_2") and base[-7:] == (
        "ratio_12", "ratio_23", "kstar", "kstar_weighted", "gap_norm", "g_23", "update_norm")
    assert set(df.metric) == set(base) | {f"{m}_z" for m in base} | {f"{m}_rel" for m in base}
    n_win = 25 - W
    assert len(df) == 3 * len(base) * n_win * 2 * 4
    assert sorted(df.step.unique()) == steps[W:]  # windows are labelled by their last checkpoint
    ks = df[df.metric == "kstar"].value
    assert ks.between(1, W - 1).all() and (ks == ks.round()).all()
    # update_norm without exact norms = ‖Φδ‖ = ‖δ‖ in exact mode
    un = df[(df.metric == "update_norm") & (df.layer == 1) & (df["head"] == 3)].sort_values("step").value.to_numpy()
    d = (v[1:].double() - v[:-1].double())[W - 1 :, 1, 3].norm(dim=-1).numpy()
    np.testing.assert_allclose(un, d, rtol=1e-9)


def test_z_and_rel_definitions(planted_series):
    cfg = SpectralConfig(exact=True)
    fp = compute_fingerprint(planted_series, STEPS(46), config=cfg)
    after = slice(cfg.transient, None)
    for m in ("update_norm", "ratio_12", "gap_norm"):
        z = fp.metric(f"{m}_z")[after]
        np.testing.assert_allclose(np.nanmedian(z, axis=0), 0.0, atol=1e-12)
        raw = fp.metric(m)[after]
        mad = np.median(np.abs(raw - np.median(raw, axis=0)), axis=0)
        np.testing.assert_allclose(np.median(np.abs(z), axis=0), 1 / 1.4826 * (mad > 0), rtol=1e-9)
        rel = fp.metric(f"{m}_rel")
        med = np.median(fp.metric(m).reshape(fp.metric(m).shape[0], -1), axis=1)
        np.testing.assert_allclose(rel, fp.metric(m) / med[:, None, None], rtol=1e-12)
    layer = compute_fingerprint(planted_series, STEPS(46), config=SpectralConfig(exact=True, rel_scope="layer"))
    un = layer.metric("update_norm")
    np.testing.assert_allclose(layer.metric("update_norm_rel"), un / np.median(un, axis=2, keepdims=True))
    np.testing.assert_allclose(layer.metric("kstar_rel"),
                               layer.metric("kstar") - np.median(layer.metric("kstar"), axis=2, keepdims=True))


def test_onsets_find_the_planted_emergence():
    # a short burst of coherent updates in two heads, as at an induction-head emergence
    v = planted_head_series(70, 2, 3, 256, {(1, 2): 1, (0, 1): 2}, onset=24, duration=4, amp=3.0, seed=12)
    cfg = SpectralConfig(exact=True)
    df = fingerprint(v, STEPS(70), config=cfg)
    on = onsets(df, "update_norm", 0.5, relative=True, config=cfg).set_index(["layer", "head"])
    assert list(on.columns) == ["metric", "onset_step"]
    assert on.loc[(1, 2), "onset_step"] == on.loc[(0, 1), "onset_step"] == 40 * 24
    assert on.drop([(1, 2), (0, 1)]).onset_step.isna().all()
    on_z = onsets(df, "update_norm_z", 5.0, reference="zero", consecutive=2, config=cfg).set_index(["layer", "head"])
    assert on_z.loc[(1, 2), "onset_step"] == on_z.loc[(0, 1), "onset_step"] == 40 * 24
    assert on_z.onset_step.notna().sum() == 2
    # a large early-training transient (first 15 updates 4× larger) is skipped, not reported as an onset
    d = v[1:] - v[:-1]
    d[:15] *= 4
    v_tr = torch.cat([v[:1], v[:1] + d.cumsum(0)])
    df_tr = fingerprint(v_tr, STEPS(70), config=cfg)
    un = df_tr[(df_tr.metric == "update_norm") & (df_tr.step <= 600)].value
    assert un.min() > 3  # the transient is there, in windows 0..5
    on_tr = onsets(df_tr, "update_norm", 0.5, relative=True, config=cfg).set_index(["layer", "head"])
    pd.testing.assert_series_equal(on_tr.onset_step, on.onset_step)
    # without the skip the transient *is* the baseline: the burst is missed, the end of the transient
    # is what departs (downwards, at the first window whose newest update is unscaled: checkpoint 16)
    kw = dict(relative=True, transient_windows=0, config=cfg)
    assert onsets(df_tr, "update_norm", 0.5, **kw).onset_step.isna().all()
    assert (onsets(df_tr, "update_norm", 0.5, direction="down", **kw).onset_step == 40 * 16).all()
    # the boxcar: r_12 of the rank-1 head stays up in every window holding a burst update (ends 24..36)
    r12 = df[(df.metric == "ratio_12_z") & (df["layer"] == 1) & (df["head"] == 2)].set_index("step").value
    inside = (r12.index >= 40 * 24) & (r12.index <= 40 * (24 + 3 + W - 1))
    assert inside.sum() == 4 + W - 1
    assert (r12[inside] > 5).all() and (r12[~inside] < 5).all()


# ----------------------------------------------------------------------------------------------
# Streaming sketcher and bad input


def _head_weights(g: torch.Generator, n_layers=2, n_heads=4, n_kv=2, d_model=16, d_head=4) -> HeadWeights:
    def r(*s):
        return torch.randn(*s, generator=g)

    return HeadWeights(W_Q=r(n_layers, n_heads, d_model, d_head), W_K=r(n_layers, n_kv, d_model, d_head),
                       W_V=r(n_layers, n_kv, d_model, d_head), W_O=r(n_layers, n_heads, d_head, d_model))


def test_head_sketcher_streams_head_weights():
    g = torch.Generator().manual_seed(8)
    a, b = _head_weights(g), _head_weights(g)
    hs = HeadSketcher(SpectralConfig(window=3, sketch_dim=40))
    first = hs.update(a, 0)
    assert first.sketch.shape == (2, 4, 40) and torch.isnan(first.update_norm).all()
    second = hs.update(b, 10)
    va, vb = a.head_vectors(), b.head_vectors()
    torch.testing.assert_close(second.update_norm, (vb.double() - va.double()).norm(dim=-1))
    # the record is Φθ_t (float64), computed as Φθ_{t−1} + Φδ_t: compare with Φ applied in float64
    phi = hs.projector.matrix().double()
    assert second.sketch.dtype == torch.float64
    torch.testing.assert_close(second.sketch, vb.double() @ phi.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second.sketch - first.sketch, (vb.double() - va.double()) @ phi.T, rtol=1e-5, atol=1e-5)
    # tensors passed in are copied, not aliased: mutating them afterwards changes nothing
    t0, t1 = torch.randn(2, 3, 50), torch.randn(2, 3, 50)
    hs2 = HeadSketcher(SpectralConfig(window=3, sketch_dim=40))
    hs2.update(t0, 0)
    expected = (t1.double() - t0.double()).norm(dim=-1)
    t0.zero_()
    torch.testing.assert_close(hs2.update(t1, 1).update_norm, expected)
    # resuming: prime with the last recorded checkpoint, the next norm is exact again
    resumed = HeadSketcher(SpectralConfig(window=3, sketch_dim=40))
    resumed.prime(a, 0)
    assert torch.equal(resumed.update(b, 10).update_norm, second.update_norm)


def _tiny_update_series(t=16, n_heads=3, p=24_000, rel=1e-4, seed=0) -> torch.Tensor:
    """float32 θ_t [T, 1, H, P] with ‖δ_t‖/‖θ‖ ≈ rel: a rank-2 coherent drift plus noise per head."""
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(n_heads, p, generator=g, dtype=torch.float64)
    dirs = torch.randn(2, n_heads, p, generator=g, dtype=torch.float64)
    coef = torch.randn(t - 1, 2, n_heads, 1, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0])[:, None, None]
    noise = 0.2 * torch.randn(t - 1, n_heads, p, generator=g, dtype=torch.float64)
    deltas = (coef * dirs).sum(1) + noise
    deltas *= rel * theta0.norm(dim=-1, keepdim=True) / deltas.norm(dim=-1, keepdim=True)
    traj = torch.cat([theta0[None], theta0 + deltas.cumsum(0)])
    return traj.float().unsqueeze(1)  # the float32 weights are the ground truth from here on


def test_float32_projection_of_updates_matches_float64_on_tiny_updates():
    # δ/θ ~ 1e-4: the case that made θ-sketching need float64. Reference: Φ (float64) applied to the
    # float64 values of the float32 weights, Grams in float64.
    v = _tiny_update_series()
    # the dense Gaussian Φ: the kind whose float32 θ-sketch cancels (a CountSketch adds fewer terms)
    cfg = SpectralConfig(window=W, seed=3, block_size=5000, sketch_kind="gaussian")
    steps = STEPS(v.shape[0])
    runs = {}
    for dt in ("float32", "float64"):
        hs = HeadSketcher(dataclasses.replace(cfg, projection_dtype=dt))
        for i in range(v.shape[0]):
            hs.update(v[i], steps[i])
        runs[dt] = hs
    phi = runs["float64"].projector.matrix()  # float64 Φ
    ref_sk = v.double() @ phi.T
    ref = rolling_window_stats(ref_sk, W).stats
    exact_norms = (v.double()[1:] - v.double()[:-1]).norm(dim=-1)
    for dt, tol in (("float32", 2e-5), ("float64", 1e-9)):
        hs = runs[dt]
        st = rolling_window_stats(hs.sketches, W).stats
        # σ to `tol` of σ_1 (the reference itself differences float64 sketches: ~1e-12·‖θ‖/‖δ‖)
        assert ((st.sigma - ref.sigma).abs() / ref.sigma[..., :1]).max() < tol, dt
        torch.testing.assert_close(st.ratios[..., :3], ref.ratios[..., :3], rtol=tol, atol=0)
        torch.testing.assert_close(hs.update_norms[1:], exact_norms, rtol=2e-7, atol=0)
    assert torch.equal(ref.kstar, rolling_window_stats(runs["float32"].sketches, W).stats.kstar)
    # the motivating failure, to show the test can tell: Φθ_t itself in float32 loses the updates to
    # cancellation (measured: ratio error 5.6e-3 here, 4e-2 at δ/θ = 1e-5; ours stays ~2e-6)
    naive = rolling_window_stats(v @ phi.float().T, W).stats
    assert ((naive.ratios[..., :3] - ref.ratios[..., :3]).abs() / ref.ratios[..., :3]).max() > 1e-3


def test_stored_dtype_and_layout_do_not_change_the_sketch(monkeypatch):
    threads = torch.get_num_threads()  # bitwise equality holds at a fixed thread count (other tests change it)
    torch.set_num_threads(1)
    try:
        _stored_dtype_and_layout(monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _stored_dtype_and_layout(monkeypatch):
    # fp16 HeadWeights (kept as fp16 between checkpoints) give bit-identical records to their float32
    # copies and to the [L, H, P] head-vector tensor
    g = torch.Generator().manual_seed(4)
    hws = [_head_weights(g) for _ in range(4)]
    hws = [HeadWeights(**{k: getattr(h, k).half() for k in ("W_Q", "W_K", "W_V", "W_O")}) for h in hws]
    as32 = [HeadWeights(**{k: getattr(h, k).float() for k in ("W_Q", "W_K", "W_V", "W_O")}) for h in hws]
    cfg = SpectralConfig(window=3, sketch_dim=30, block_size=100)
    outs = []
    for feed in (hws, as32, [h.head_vectors() for h in as32], [h.head_vectors(torch.float16) for h in hws]):
        hs = HeadSketcher(cfg)
        outs.append([hs.update(w, 10 * i) for i, w in enumerate(feed)])
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert torch.equal(a.sketch, b.sketch)
            torch.testing.assert_close(a.update_norm, b.update_norm, rtol=0, atol=0, equal_nan=True)
    # a mixed series (fp16 and float32 weights, as the screen feeds lazily read and booted checkpoints)
    # is fine too: θ_{t-1} is kept in the dtype it came in
    hs = HeadSketcher(cfg)
    mixed = [hs.update(w, 10 * i) for i, w in enumerate([hws[0], as32[1], as32[2], hws[3]])]
    for a, b in zip(outs[0], mixed, strict=True):
        assert torch.equal(a.sketch, b.sketch)
    assert all(t.dtype == torch.float16 for ts, _ in hs._pass.prev for t in ts)
    # the Gaussian sketch's segmented pass: segments that straddle the W_Q/W_K/W_V/W_O boundaries
    # (SEGMENT = 37 columns) give the records of whole segments up to rounding, and they equal Φθ_t
    # and ‖δ_t‖ computed in float64 from the head vectors
    gcfg = dataclasses.replace(cfg, sketch_kind="gaussian")
    hs = HeadSketcher(gcfg)
    outs[0] = [hs.update(w, 10 * i) for i, w in enumerate(hws)]
    monkeypatch.setattr(segments_module, "SEGMENT", 37)
    hs = HeadSketcher(gcfg)
    small = [hs.update(w, 10 * i) for i, w in enumerate(hws)]
    phi = hs.projector.matrix().double()
    for i, (a, b) in enumerate(zip(outs[0], small, strict=True)):
        vec = hws[i].head_vectors(torch.float64)
        torch.testing.assert_close(b.sketch, vec @ phi.T, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.sketch, b.sketch, rtol=1e-5, atol=1e-5)
        if i:
            torch.testing.assert_close(b.update_norm, (vec - hws[i - 1].head_vectors(torch.float64)).norm(dim=-1),
                                       rtol=1e-6, atol=0)


def test_prime_with_the_recorded_sketch_resumes_bit_identically():
    v = _tiny_update_series(t=6, p=3000)
    cfg = SpectralConfig(window=3, block_size=1000)
    full = HeadSketcher(cfg)
    recs = [full.update(v[i], i) for i in range(6)]
    resumed = HeadSketcher(cfg)
    resumed.prime(v[2], 2, sketch=recs[2].sketch)
    again = [resumed.update(v[i], i) for i in range(3, 6)]
    for a, b in zip(recs[3:], again, strict=True):
        assert torch.equal(a.sketch, b.sketch) and torch.equal(a.update_norm, b.update_norm)
    # without the recorded sketch, Φθ_2 is recomputed in float64: equal up to rounding
    approx = HeadSketcher(cfg)
    approx.prime(v[2], 2)
    got, want = approx.update(v[3], 3).sketch - recs[2].sketch, recs[3].sketch - recs[2].sketch
    assert ((got - want).norm(dim=-1) / want.norm(dim=-1)).max() < 1e-5
    with pytest.raises(ValueError, match=r"recorded sketch has shape \(1, 3, 7\).*settings the run was recorded"):
        HeadSketcher(cfg).prime(v[2], 2, sketch=torch.zeros(1, 3, 7))


def test_too_few_checkpoints_and_too_large_window_are_clear_errors():
    v = torch.randn(10, 1, 2, 30)
    with pytest.raises(ValueError, match=r"10 checkpoints but window=10 needs at least 11"):
        fingerprint(v, STEPS(10))
    with pytest.raises(ValueError, match=r"8 checkpoints but window=20 needs at least 21.*lower window to <= 7"):
        rolling_window_stats(v[:8], window=20)
    hs = HeadSketcher()
    for t in range(5):
        hs.update(v[t], t)
    with pytest.raises(ValueError, match=r"5 checkpoints but window=10 needs at least 11"):
        hs.fingerprint()
    with pytest.raises(ValueError, match="no checkpoint has been fed yet; need at least 11"):
        HeadSketcher().fingerprint()


def test_bad_input_errors_name_the_problem():
    v = torch.randn(12, 1, 2, 30)
    with pytest.raises(ValueError, match=r"\[T, layer, head, d\]"):
        fingerprint(v[:, 0], STEPS(12))
    with pytest.raises(ValueError, match="strictly increasing"):
        fingerprint(v, [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10])
    with pytest.raises(ValueError, match="one step per checkpoint"):
        fingerprint(v, STEPS(11))
    bad = v.clone()
    bad[4, 0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fingerprint(bad, STEPS(12))
    with pytest.raises(ValueError, match=r"update_norms must be \[T, layer, head\]"):
        fingerprint(v, STEPS(12), update_norms=torch.ones(12, 2, 1))
    hs = HeadSketcher()
    hs.update(v[0], 0)
    with pytest.raises(ValueError, match=r"step 40: head vectors have shape \(1, 2, 31\)"):
        hs.update(torch.randn(1, 2, 31), 40)
    with pytest.raises(ValueError, match="step 0 is not after the previous step 0"):
        hs.update(v[1], 0)
    with pytest.raises(ValueError, match=r"step 80: NaN/inf weights in layer 0 head 1"):
        hs.update(bad[4], 80)
    with pytest.raises(TypeError, match="step 120: expected HeadWeights"):
        hs.update(v[1].numpy(), 120)


def test_short_baseline_warns_and_gives_nan_z():
    v = torch.randn(14, 1, 2, 30)
    with pytest.warns(UserWarning, match=r"needs 3.*at least 23 checkpoints"):
        fp = compute_fingerprint(v, STEPS(14))
    assert np.isnan(fp.z).all() and np.isfinite(fp.raw).all()
    fp0 = compute_fingerprint(v, STEPS(14), config=SpectralConfig(transient_windows=0))
    assert np.isfinite(fp0.z[fp0.metrics.index("update_norm")]).all()


# ----------------------------------------------------------------------------------------------
# Trajectory PCA


def test_backbone_of_a_planted_line_and_its_sign():
    g = torch.Generator().manual_seed(9)
    p = 500
    u = torch.randn(p, generator=g, dtype=torch.float64)
    u /= u.norm()
    f = torch.linspace(0, 1, 30, dtype=torch.float64) ** 1.5 * 50  # accelerating, monotone
    theta0 = torch.randn(2, p, generator=g, dtype=torch.float64)
    noise = 1e-4 * torch.randn(30, 2, p, generator=g, dtype=torch.float64)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)  # head 1 moves along −u
    v = theta0 + f[:, None, None] * sign[None, :, None] * u + noise
    bb = backbone(v)
    assert (bb.pc1_share > 0.999).all()
    cos = bb.direction @ u
    assert cos[0] > 0.999 and cos[1] < -0.999  # v_b follows the displacement, so ⟨Δθ_T, v_b⟩ > 0
    assert (bb.a[-1] > 0).all()
    torch.testing.assert_close(bb.a[:, 0], f, atol=0.05, rtol=0)
    torch.testing.assert_close(bb.a[:, 1], f, atol=0.05, rtol=0)
    # lines that first back up, then overtake θ_0 (rows of both signs), in random directions: the
    # sign follows the final displacement, never the eigensolver's arbitrary choice
    dirs = torch.randn(16, p, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    t = torch.arange(30, dtype=torch.float64)[:, None]
    back = torch.linspace(5.5, 20.5, 16, dtype=torch.float64)[None, :]  # never exactly at θ_0 again
    s = torch.where(torch.rand(16, generator=g) < 0.5, -1.0, 1.0).double()
    path = s * t * (t - back)  # [30, 16]: negative until `back`, positive at the end (times s)
    lines = theta0[:1] + path[..., None] * dirs + 1e-4 * torch.randn(30, 16, p, generator=g, dtype=torch.float64)
    bb = backbone(lines)
    assert (bb.pc1_share > 0.999).all()
    assert ((bb.direction * dirs).sum(-1) * s > 0.999).all()
    assert (bb.a[-1] > 0).all() and (bb.a[3] < 0).all()
    assert (bb.r < 0.05).all()
    assert (bb.displacement_share[1:] > 0.99).all() and torch.isnan(bb.displacement_share[0]).all()


def test_backbone_of_isotropic_walk_is_not_a_line():
    g = torch.Generator().manual_seed(10)
    v = torch.randn(30, 2000, generator=g, dtype=torch.float64).cumsum(0)
    bb = backbone(v)
    assert 0.2 < bb.pc1_share.item() < 0.9
    torch.testing.assert_close(bb.explained.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_pc1_rotation_stable_vs_random_directions():
    g = torch.Generator().manual_seed(11)
    p = 400
    u = torch.randn(p, generator=g, dtype=torch.float64)
    steady = torch.arange(41, dtype=torch.float64)[:, None] * u + 1e-3 * torch.randn(41, p, generator=g,
                                                                                     dtype=torch.float64)
    rnd = torch.randn(41, p, generator=g, dtype=torch.float64).cumsum(0)
    rot = pc1_rotation(torch.stack([steady, rnd], dim=1), window=10)
    assert rot.end_index.tolist() == [20, 30, 40]
    assert (rot.rho[:, 0] > 0.999).all() and (rot.rho[:, 1] < 0.5).all()


@pytest.mark.parametrize("kind", ["countsketch", "gaussian"])
def test_fused_update_pass_matches_dense_reference(kind):
    # several column segments (P = 8192 > SEGMENT) crossing blocks of S (block_size 3000), GQA, fp16
    # weights kept fp16 between checkpoints: the records equal θ_t Sᵀ and the norms ‖θ_t − θ_(t−1)‖
    # computed densely in float64 from the same fp16 values
    g = torch.Generator().manual_seed(11)
    base = _head_weights(g, d_model=64, d_head=32)
    hws = []
    for _ in range(4):
        hws.append(HeadWeights(**{k: getattr(base, k).half() for k in ("W_Q", "W_K", "W_V", "W_O")}))
        base = HeadWeights(**{k: getattr(base, k) + 1e-2 * torch.randn(getattr(base, k).shape, generator=g)
                              for k in ("W_Q", "W_K", "W_V", "W_O")})
    hs = HeadSketcher(SpectralConfig(window=3, sketch_kind=kind, block_size=3000))
    recs = [hs.update(w, 10 * i) for i, w in enumerate(hws)]
    s = hs.projector.matrix().double()
    vecs = [h.head_vectors(torch.float64) for h in hws]
    assert vecs[0].shape[-1] == 8192
    for t, rec in enumerate(recs):
        ref = vecs[t] @ s.T
        torch.testing.assert_close(rec.sketch, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
        if t:
            torch.testing.assert_close(rec.update_norm, (vecs[t] - vecs[t - 1]).norm(dim=-1), rtol=1e-6, atol=0)
