"""headscreen.grokking.analysis.summary: the sweep table and the lead-time power law."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from grok_fixtures import make_run

from headscreen.grokking.analysis.detect import fit_power_law
from headscreen.grokking.analysis.summary import (
    power_law_by_weight_decay,
    summarise_sweep,
    write_sweep_summary,
)
from headscreen.grokking.training.lifecycle import trajectory_state


def _fake_grok(run, grok_step, lead):
    onset = None if grok_step is None or lead is None else grok_step - lead
    (run / "grok.json").write_text(json.dumps({
        "grok_step": grok_step, "memorisation_step": 100, "defect_onset_step": onset, "gap_open_step": None,
        "lead_time": lead, "final_train_acc": 1.0, "final_test_acc": 0.99 if grok_step else 0.1,
        "key_frequencies": [3, 5], "commutator_peak_step": None, "pca": {"pc1_share": 0.7},
        "trajectory": trajectory_state(run)}))  # an analysis of exactly this trajectory (else it is recomputed)


def test_sweep_table_and_power_law(tmp_path):
    lrs = [1e-3, 2e-3, 3e-3, 5e-3]
    t = np.array([4000, 2500, 1800, 1200])
    lead = 0.05 * t**1.3
    for lr, tg, ld in zip(lrs, t, lead, strict=True):
        run = make_run(tmp_path / "runs" / f"wd1_lr{lr:g}", n_snap=3, lr=lr)
        _fake_grok(run, int(tg), int(round(ld)))
    run0 = make_run(tmp_path / "runs" / "wd0_lr0.001", n_snap=3, weight_decay=0.0, grok_at=None)
    _fake_grok(run0, None, None)
    df = write_sweep_summary(tmp_path, progress=False)
    assert pd.read_parquet(tmp_path / "sweep.parquet").equals(df)
    assert len(df) == 5 and set(df["weight_decay"]) == {0.0, 1.0}
    wd1 = df[df.weight_decay == 1.0]
    ref = fit_power_law(wd1["grok_step"].astype(float), wd1["lead_time"].astype(float))
    assert ref.alpha == pytest.approx(1.3, abs=0.01)
    assert (wd1["power_law_alpha"] == ref.alpha).all() and (wd1["power_law_r2"] == ref.r2).all()
    assert (wd1["power_law_n"] == 4).all()
    assert df.loc[df.weight_decay == 0.0, "power_law_alpha"].isna().all()
    assert df.loc[df.weight_decay == 0.0, "grok_step"].isna().all()
    assert df["key_frequencies"].iloc[0] == "3,5"


@pytest.mark.filterwarnings("ignore:only 0 of 2 windows")
def test_sweep_analyses_missing_runs_and_errors(tmp_path):
    make_run(tmp_path / "runs" / "a", n_snap=12, grok_at=100, onset_at=60)
    df = summarise_sweep(tmp_path, progress=False)
    assert df.loc[0, "grok_step"] == 100 and (tmp_path / "runs/a/grok.json").is_file()
    with pytest.raises(FileNotFoundError, match="holds no sweep runs"):
        summarise_sweep(tmp_path / "nothing")
    few = power_law_by_weight_decay(pd.DataFrame({"weight_decay": [1.0, 1.0], "grok_step": [10, 20],
                                                  "lead_time": [5, 6]}))
    assert np.isnan(few.loc[0, "alpha"]) and few.loc[0, "n"] == 2
