"""headscreen.grokking.analysis.analyse: a run directory in, tables and grok.json out."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from grok_fixtures import make_run
from safetensors.torch import load_file

from headscreen.grokking.analysis.analyse import AnalysisSettings, analyse_run
from headscreen.grokking.analysis.edge import trunk_vector
from headscreen.series import LocalSeries
from headscreen.spectral import HeadSketcher, SpectralConfig, compute_fingerprint, rolling_window_stats

torch.set_num_threads(1)
EXACT = AnalysisSettings(spectral=SpectralConfig(exact=True))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("grok") / "run")
    out = analyse_run(root, settings=EXACT, progress=False)
    return root, out


def test_grok_json_fields(run):
    root, out = run
    assert json.loads((root / "grok.json").read_text()) == json.loads(json.dumps(out))
    for key in ("grok_step", "memorisation_step", "defect_onset_step", "gap_open_step", "final_train_acc",
                "final_test_acc", "key_frequencies", "settings"):
        assert key in out
    assert out["grok_step"] == 400 and out["memorisation_step"] == 60
    assert out["defect_onset_step"] == 240 and out["defect_onsets"] == {"ratio": 240, "z": 240}
    assert out["lead_time"] == 160 and out["tasks"]["add"]["lead_time"] == 160
    assert out["key_frequencies"] == [3]
    assert out["final_train_acc"] == 1.0 and out["final_test_acc"] == pytest.approx(0.99)
    assert out["settings"]["training"]["weight_decay"] == 1.0
    assert out["edge"]["transient_windows"] == 3  # windows starting at steps 0, 20, 40 < memorisation 60
    # the rank-2 updates start at update 18: the first window holding two of them ends at step 380
    assert out["gap_open_step"] == 380
    assert out["pca"]["basis"] == "exact" and 0 < out["pca"]["pc1_share"] <= 1


def test_tables_and_columns(run):
    root, _ = run
    edge = pd.read_parquet(root / "edge.parquet")
    assert list(edge.columns) == ["scope", "step", "layer", "head", "metric", "value"]
    assert set(edge["scope"]) == {"trunk", "head"}
    assert set(edge.loc[edge.scope == "head", "head"]) == {0, 1}
    portrait = pd.read_parquet(root / "portrait.parquet")
    assert {"step", "head", "x", "y", "x_smooth", "y_smooth", "square", "test_acc_add"} <= set(portrait.columns)
    assert portrait.loc[portrait.step == 400, "test_acc_add"].iloc[0] == pytest.approx(0.99)
    fourier = pd.read_parquet(root / "fourier.parquet")
    last = fourier[fourier.step == fourier.step.max()]
    assert last.loc[last.norm.idxmax(), "frequency"] == 3 and len(last) == 6
    progress = pd.read_parquet(root / "progress.parquet")
    assert list(progress.columns) == ["step", "gini", "weight_norm_sq", "restricted_loss", "excluded_loss"]
    assert progress["restricted_loss"].notna().all() and progress["gini"].is_monotonic_increasing
    sd = load_file(str(root / "trajectory/step_000000000/model.safetensors"))
    assert progress["weight_norm_sq"].iloc[0] == pytest.approx(sum(float(v.double().pow(2).sum()) for v in sd.values()))
    pca = pd.read_parquet(root / "pca.parquet")
    assert list(pca.columns) == ["step", "a", "r", "displacement_share", "rho"] and len(pca) == 30


def test_edge_equals_spectral_on_the_series(run):
    """The edge through the grokking path equals headscreen.spectral on the snapshots read as a series."""
    root, out = run
    edge = pd.read_parquet(root / "edge.parquet")
    series = LocalSeries(root / "trajectory")
    cfg = replace(EXACT.spectral, transient_windows=out["edge"]["transient_windows"])
    sk = HeadSketcher(cfg)
    for ckpt, hw in series.iter_head_weights():
        sk.update(hw, ckpt.step)
    ref = compute_fingerprint(sk.sketches, sk.steps, config=cfg, update_norms=sk.update_norms).to_frame()
    heads = edge[edge.scope == "head"].drop(columns="scope")
    heads = heads[heads.metric != "phase"].reset_index(drop=True)
    pd.testing.assert_frame_equal(heads, ref)
    # the trunk against rolling_window_stats on the raw trunk vectors read straight from safetensors
    vecs = torch.stack([trunk_vector(load_file(str(c.path / "model.safetensors"))) for c in series.checkpoints])
    ws = rolling_window_stats(vecs, 10)
    trunk = edge[(edge.scope == "trunk") & (edge.metric == "ratio_23")]
    np.testing.assert_allclose(trunk["value"].to_numpy(), ws.stats.r_23.numpy(), rtol=1e-6)


def test_never_groks_and_wd0_like_run(tmp_path):
    root = make_run(tmp_path / "r0", grok_at=None, onset_at=None, switch=10_000, weight_decay=0.0)
    out = analyse_run(root, settings=EXACT, progress=False)
    assert out["grok_step"] is None and out["lead_time"] is None
    assert out["defect_onset_step"] is None and out["gap_open_step"] is None


def test_missing_curves_is_a_clear_error(tmp_path):
    root = make_run(tmp_path / "r1", n_snap=12)
    (root / "curves.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="curves.parquet"):
        analyse_run(root, progress=False)


def test_settings_validation_and_fixed_transient(run, tmp_path):
    with pytest.raises(ValueError, match="onset_rule"):
        AnalysisSettings(onset_rule="median")
    with pytest.raises(ValueError, match="transient"):
        AnalysisSettings(transient="early")
    with pytest.raises(ValueError, match="grok_threshold"):
        AnalysisSettings(grok_threshold=1.5)
    root = make_run(tmp_path / "r2")
    out = analyse_run(root, settings=replace(EXACT, transient=10, onset_rule="z", grok_threshold=0.5), progress=False)
    assert out["edge"]["transient_windows"] == 10 and out["defect_onset_rule"] == "z"
    assert out["settings"]["analysis"]["transient"] == 10 and out["settings"]["analysis"]["spectral"]["exact"]
