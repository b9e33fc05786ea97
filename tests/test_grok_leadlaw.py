"""The lead-time law's fixed-onset null and rank statistic (headscreen.grokking.analysis.leadlaw), on planted runs
and on the published records (headscreen.grokking.published.records)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headscreen.grokking.analysis.detect import fit_power_law, onset_ratio
from headscreen.grokking.analysis.leadlaw import fixed_onset_null, lead_law, rank_correlation
from headscreen.grokking.published.records import published_events, published_records

T_GROK = np.array([2500.0, 3100, 3600, 5000, 9000, 15000, 22000, 30000, 38000])


def test_null_equals_raw_fit_for_constant_onsets():
    onset = np.full(T_GROK.size, 2000.0)
    raw = fit_power_law(T_GROK, T_GROK - onset)
    null = fixed_onset_null(T_GROK, onset)
    assert null.alpha == pytest.approx(raw.alpha, abs=1e-12)
    assert null.r2 == pytest.approx(raw.r2, abs=1e-12)
    assert raw.alpha > 1.0  # a fixed detector alone gives a super-linear exponent


def test_null_differs_when_onsets_scale_with_grokking():
    onset = 0.4 * T_GROK  # lead = 0.6 t_grok exactly: alpha 1
    raw = fit_power_law(T_GROK, T_GROK - onset)
    null = fixed_onset_null(T_GROK, onset)
    assert raw.alpha == pytest.approx(1.0, abs=1e-9)
    assert abs(null.alpha - raw.alpha) > 0.1
    rank = rank_correlation(onset, T_GROK)
    assert rank.rho == pytest.approx(1.0)
    assert rank.p_value < 0.01 and rank.method == "monte-carlo"


def test_null_medians_are_per_group():
    t = np.array([3000.0, 3500, 4000, 30000, 35000, 40000])
    onset = np.array([1000.0, 1100, 1200, 5000, 5100, 5200])
    groups = ["a", "a", "a", "b", "b", "b"]
    null = fixed_onset_null(t, onset, groups)
    manual = fit_power_law(t, t - np.array([1100.0] * 3 + [5100.0] * 3))
    assert null.alpha == pytest.approx(manual.alpha, abs=1e-12)


def test_rank_correlation_exact_and_ties():
    # 5 runs, perfectly monotone: exact two-sided p = 2/120
    r = rank_correlation([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert r.method == "exact" and r.rho == pytest.approx(1.0) and r.p_value == pytest.approx(2 / 120)
    # independent computation of Spearman with ties: Pearson of average ranks
    o = np.array([1.0, 2, 2, 3, 5, 4])
    t = np.array([5.0, 6, 7, 7, 9, 8])
    ro = np.array([1, 2.5, 2.5, 4, 6, 5])
    rt = np.array([1, 2, 3.5, 3.5, 6, 5])
    assert rank_correlation(o, t).rho == pytest.approx(np.corrcoef(ro, rt)[0, 1], abs=1e-12)


def test_stratified_rank_removes_a_group_effect():
    # within each group the onset is unrelated to grokking; across groups both move together
    t = [3000, 3200, 3400, 3600, 30000, 32000, 34000, 36000]
    o = [1900, 2000, 1800, 2100, 2500, 2300, 2600, 2400]
    pooled = rank_correlation(o, t)
    within = rank_correlation(o, t, groups=["x"] * 4 + ["y"] * 4)
    assert pooled.rho > 0.6 and pooled.p_value < 0.05
    assert within.stratified and within.p_value > 0.3 and within.method == "exact"


def test_verdict_names_both_cases():
    t = T_GROK
    law = lead_law(t, 0.4 * t)
    assert "tracks the grokking time" in law.verdict
    rng = np.random.default_rng(1)
    law = lead_law(t, 2000 + rng.permutation(np.arange(t.size)) * 10.0)
    assert "does not track" in law.verdict and math.isfinite(law.null.alpha)


# ---- the published records ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def events():
    return published_events()


def test_published_rules_give_published_steps(events):
    row = events[(events.study == "lr_sweep") & (events.op == "add") & (events.lr == 1e-3) & (events.seed == 42)]
    assert row["onset"].item() == 1800 and row["grok_90"].item() == 3100 and row["lead"].item() == 1300
    # the same rows through the project's rule without the published search start: same answer here
    rec = published_records()
    g = rec[(rec.study == "lr_sweep") & (rec.op == "add") & (rec.lr == 1e-3) & (rec.seed == 42)].sort_values("step")
    assert onset_ratio(g.step.to_numpy(), g.defect_median.to_numpy()) == 1800
    lr3 = events[(events.study == "lr_sweep") & (events.lr == 1e-3) & events.op.isin(["add", "sub"])]
    assert lr3["lead"].min() == 600 and lr3["lead"].max() == 1600  # the published 600-1600 steps


def test_published_lead_law_and_null(events):
    sel = events[(events.study == "lr_sweep") & events.op.isin(["add", "sub"]) & events.lr.isin([1e-4, 1e-3])]
    t = sel["grok_90"].astype(float).to_numpy()
    o = sel["onset"].astype(float).to_numpy()
    law = lead_law(t, o, groups=list(zip(sel.op, sel.lr, strict=True)))
    assert law.fit.n == 12
    assert law.fit.alpha == pytest.approx(1.38, abs=0.01) and law.fit.r2 == pytest.approx(0.99, abs=0.01)
    assert law.null.alpha == pytest.approx(1.52, abs=0.01) and law.null.r2 == pytest.approx(0.98, abs=0.01)
    per_op = fixed_onset_null(t, o, groups=list(sel.op))
    assert per_op.alpha == pytest.approx(1.50, abs=0.01)
    # within (op, lr) the onset does not track grokking in the published runs
    assert law.rank.stratified and law.rank.p_value > 0.05
    assert "does not track" in law.verdict


def test_sweep_fit_carries_null_rank_and_verdict():
    import pandas as pd

    from headscreen.grokking.analysis.summary import power_law_by_weight_decay

    t = T_GROK
    df = pd.DataFrame({"weight_decay": 1.0, "tasks": "add", "grok_step": t, "lead_time": t - 2000.0})
    row = power_law_by_weight_decay(df).iloc[0]
    assert row["null_alpha"] == pytest.approx(row["alpha"])  # a constant onset: the null is the fit
    assert np.isnan(row["rank_rho"]) and row["verdict"] is None  # constant onsets: no rank statistic
    df["lead_time"] = 0.6 * t
    row = power_law_by_weight_decay(df).iloc[0]
    assert row["rank_rho"] == pytest.approx(1.0) and "tracks the grokking time" in row["verdict"]
