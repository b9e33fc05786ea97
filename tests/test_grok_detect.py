"""headscreen.grokking.analysis.detect: event detection on synthetic curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from headscreen.grokking.analysis.detect import (
    SeriesTooShort,
    curve_events,
    defect_onsets,
    fit_power_law,
    grok_step,
    lead_time,
    memorisation_step,
    onset_ratio,
    onset_z,
    threshold_step,
)

STEPS = np.arange(0, 5000, 100)


def _sigmoid_acc(t_mid: float, width: float = 150.0, lo: float = 0.05, hi: float = 1.0) -> np.ndarray:
    return lo + (hi - lo) / (1 + np.exp(-(STEPS - t_mid) / width))


def test_grok_and_memorisation_steps_on_sigmoids():
    test = _sigmoid_acc(2500)
    # first step whose accuracy is >= 0.95, computed independently from the inverse sigmoid
    expected = STEPS[np.argmax(test >= 0.95)]
    assert grok_step(STEPS, test) == expected
    assert 2500 < expected < 3500
    # configurable threshold (CURV's 0.90 fires earlier)
    assert grok_step(STEPS, test, 0.90) < expected
    train = _sigmoid_acc(300, 50, hi=1.0)
    assert memorisation_step(STEPS, train) == STEPS[np.argmax(train >= 0.99)]


def test_never_groks_returns_none():
    flat = np.full(STEPS.shape, 0.1)
    assert grok_step(STEPS, flat) is None
    assert grok_step(STEPS, _sigmoid_acc(2500, hi=0.94)) is None  # saturates just below the bar


def test_nan_never_crosses_and_consecutive():
    acc = np.array([0.1, np.nan, 0.97, 0.5, 0.96, 0.99])
    steps = np.arange(6) * 10
    assert grok_step(steps, acc) == 20
    assert grok_step(steps, acc, consecutive=2) == 40
    assert grok_step(steps, np.full(6, np.nan)) is None


def test_bad_series():
    with pytest.raises(ValueError, match="equal length"):
        grok_step([0, 1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="strictly increasing"):
        grok_step([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="empty"):
        grok_step([], [])
    with pytest.raises(ValueError, match="integers"):
        threshold_step([0.5, 1.0], [0.1, 0.2], 0.5)


def _defect(onset_index: int | None, n: int = 40, base: float = 2.0, jump: float = 80.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = base * (1 + 0.05 * rng.standard_normal(n))
    if onset_index is not None:
        d[onset_index:] = jump * (1 + 0.05 * rng.standard_normal(n - onset_index))
    return np.arange(n) * 50, d


def test_onset_rules_find_a_planted_jump():
    steps, d = _defect(22)
    assert onset_ratio(steps, d) == steps[22]
    assert onset_z(steps, d) == steps[22]


def test_onset_rules_never_fire_on_flat_defect():
    steps, d = _defect(None)
    assert onset_ratio(steps, d) is None
    # mean + 3σ of i.i.d. noise: a single exceedance can happen, two in a row are rare; this seed has none
    assert onset_z(steps, d) is None


def test_ratio_rule_needs_both_factor_and_floor():
    steps = np.arange(8) * 10
    # baseline median 1: 15 is > 10× but not > 20; 25 passes both
    d = np.array([1.0, 1.0, 1.0, 15.0, 15.0, 25.0, 3.0, 30.0])
    assert onset_ratio(steps, d) == 50
    # baseline median 5: 25 is > 20 but not > 10×5 = 50
    d2 = np.array([5.0, 5.0, 5.0, 25.0, 49.0, 51.0, 3.0, 3.0])
    assert onset_ratio(steps, d2) == 50
    # the baseline measurements are never candidates
    assert onset_ratio(steps[:4], [100.0, 1.0, 1.0, 1.0]) is None


def test_z_rule_needs_two_consecutive():
    steps = np.arange(16) * 10
    base = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0]
    thr = np.mean(base) + 3 * np.std(base, ddof=1)
    d = np.array(base + [thr + 1, 0.5, thr + 1, thr + 2, 0.1, 0.1])
    assert onset_z(steps, d) == 120  # the isolated spike at 100 does not count
    assert onset_z(steps, d, consecutive=1) == 100


def test_onset_nan_handling():
    steps, d = _defect(22)
    d[23] = np.nan  # NaN breaks a consecutive run for the z rule, not for the ratio rule's first hit
    assert onset_ratio(steps, d) == steps[22]
    assert onset_z(steps, d) == steps[24]
    d[1] = np.nan  # NaN inside the baselines: the finite values define them
    assert onset_ratio(steps, d) == steps[22]
    assert onset_z(steps, d) == steps[24]
    with pytest.raises(ValueError, match="all NaN"):
        onset_ratio(steps, np.r_[np.nan, np.nan, np.nan, d[3:]])


def test_too_short_series_raise_clearly():
    with pytest.raises(SeriesTooShort, match="more than 3 defect measurements"):
        onset_ratio([0, 1, 2], [1.0, 1.0, 1.0])
    with pytest.raises(SeriesTooShort, match="at least 12 defect measurements"):
        onset_z(np.arange(11), np.ones(11))
    # the table helper reports a rule it cannot apply as None
    df = pd.DataFrame({"step": np.arange(5) * 10, "defect_median": [1.0, 1.0, 1.0, 50.0, 60.0]})
    assert defect_onsets(df) == {"ratio": 30, "z": None}


def test_lead_time():
    assert lead_time(3000, 2200) == 800
    assert lead_time(2000, 2500) == -500
    assert lead_time(None, 2200) is None and lead_time(3000, None) is None


def test_power_law_recovers_planted_exponent():
    t = np.array([800.0, 1500, 2600, 4000, 7000])
    lead = 0.02 * t**1.3
    fit = fit_power_law(t, lead)
    assert fit.alpha == pytest.approx(1.3, abs=1e-9)
    assert fit.prefactor == pytest.approx(0.02, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 5
    # noisy: R² < 1, computed independently
    noisy = lead * np.array([1.1, 0.9, 1.05, 0.95, 1.0])
    f2 = fit_power_law(t, noisy)
    x, y = np.log(t), np.log(noisy)
    a, c = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - a * x - c) ** 2) / np.sum((y - y.mean()) ** 2)
    assert f2.alpha == pytest.approx(a) and f2.r2 == pytest.approx(r2) and f2.r2 < 1


def test_power_law_drops_unusable_runs_and_needs_three():
    t = [800.0, 1500, 2600, math.nan, 4000]
    lead = [100.0, -50.0, 400, 300, 900]  # one negative lead, one never-grokked run
    fit = fit_power_law(t, lead)
    assert fit.n == 3
    with pytest.raises(ValueError, match="at least 3 runs"):
        fit_power_law([800.0, 1500], [100.0, 200.0])
    with pytest.raises(ValueError, match="same step"):
        fit_power_law([1000.0, 1000, 1000], [100.0, 200, 300])


def test_curve_events_per_task():
    rows = []
    acc_add, acc_mul = _sigmoid_acc(2000), _sigmoid_acc(3000, hi=0.6)
    for i, s in enumerate(STEPS):
        rows.append({"step": s, "task": "add", "train_loss": 0.0, "test_loss": 0.0, "train_acc": 1.0, "test_acc": acc_add[i]})
        rows.append({"step": s, "task": "mul", "train_loss": 0.0, "test_loss": 0.0, "train_acc": 1.0, "test_acc": acc_mul[i]})
    ev = curve_events(pd.DataFrame(rows))
    assert ev["add"]["grok_step"] == grok_step(STEPS, acc_add)
    assert ev["mul"]["grok_step"] is None
    assert ev["add"]["memorisation_step"] == 0
    assert ev["mul"]["final_test_acc"] == pytest.approx(acc_mul[-1])
    with pytest.raises(ValueError, match="lacks columns"):
        curve_events(pd.DataFrame({"step": [0]}))
