"""Pre-identification: does a spectral metric separate the circuit before it emerges? (probes/preid.py)"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from headscreen.probes.preid import FINGERPRINT_METRICS, PreidSettings, preid_from_tables, within_layer_z
from headscreen.probes.separation import (
    auc_from_ranks,
    average_ranks,
    layer_permutations,
    n_labelings,
    permutation_p,
    precision_at_k,
)
from headscreen.spectral import SpectralConfig, compute_fingerprint
from headscreen.spectral.planted import planted_head_series

CIRCUIT = [[2, 1], [2, 5], [3, 0], [3, 6]]
STEP = 100


def _tables(rng, *, n_steps=30, emerge=25, plant_from=None, shift=6.0, n_layers=4, n_heads=8,
            metrics=FINGERPRINT_METRICS):
    """Fingerprint rows ~ N(0, 1) per head, metric and step; circuit heads get +shift from checkpoint
    `plant_from` on; classes put the circuit heads in the induction circuit from checkpoint `emerge` on."""
    circuit = {tuple(h) for h in CIRCUIT}
    fp, cl = [], []
    for i in range(n_steps):
        for layer in range(n_layers):
            for head in range(n_heads):
                member = (layer, head) in circuit
                for m in metrics:
                    v = rng.normal() + (shift if member and plant_from is not None and i >= plant_from else 0.0)
                    fp.append((i * STEP, layer, head, m, v))
                cl.append((i * STEP, layer, head, "retrieval", member and i >= emerge))
    return (pd.DataFrame(fp, columns=["step", "layer", "head", "metric", "value"]),
            pd.DataFrame(cl, columns=["step", "layer", "head", "probe", "in_induction_circuit"]))


VALIDATED = {"status": "done", "circuit": CIRCUIT, "probe": "retrieval", "step": 2900}


@pytest.mark.parametrize("lead", [1, 3, 6])
def test_a_planted_lead_of_k_checkpoints_is_found(lead):
    fp, cl = _tables(np.random.default_rng(lead), plant_from=25 - lead, metrics=("update_norm",))
    tokens = {i * STEP: i * STEP * 512.0 for i in range(30)}
    table, doc = preid_from_tables(classes=cl, fingerprints=fp, validation=VALIDATED, tokens=tokens)
    assert doc["status"] == "done" and doc["circuit_source"] == "validated" and doc["emergence_step"] == 2500
    best = doc["earliest"]
    assert best["metric"] == "update_norm" and best["earliest_separating_step"] == (25 - lead) * STEP
    assert best["lead_steps"] == lead * STEP and best["lead_tokens"] == lead * STEP * 512.0
    assert best["p_family"] < 0.05  # relabelled sets of the same layers rarely separate that early
    raw = table[(table["scope"] == "raw") & table["before_emergence"]]
    planted = raw[raw["step"] >= (25 - lead) * STEP]
    assert (planted["auc"] > 0.99).all() and (planted["precision_at_k"] > 0.99).all()
    assert (planted["p_value"] <= 1 / 784 + 1e-12).all()  # C(8,2)^2 = 784 relabellings, all enumerated
    assert doc["null"]["n_labelings"] == 784 and doc["null"]["kind"].startswith("exact")
    assert not raw[raw["step"] < (25 - lead) * STEP]["separates"].any()


def test_no_difference_gives_chance_auc_spread_p_and_nothing_separating():
    fp, cl = _tables(np.random.default_rng(7))
    table, doc = preid_from_tables(classes=cl, fingerprints=fp, validation=VALIDATED)
    before = table[table["before_emergence"]]
    assert abs(before["auc"].mean() - 0.5) < 0.03
    p = before["p_value"].to_numpy()
    assert 0 < p.min() and p.max() <= 1 and abs(p.mean() - 0.5) < 0.06
    hist = np.histogram(p, bins=5, range=(0, 1))[0] / p.size  # roughly uniform over (0, 1)
    assert hist.min() > 0.1 and hist.max() < 0.3
    assert doc["earliest"] is None and all(r["earliest_separating_step"] is None for r in doc["metrics"])
    assert all(r["p_family"] is None for r in doc["metrics"])


def test_the_planted_spectral_series_separates_at_the_first_full_window():
    window, onset, n_ckpt = 10, 18, 40
    planted = {(0, 1): 1, (1, 2): 2}  # the rank-1 and rank-2 heads are the "circuit"
    theta = planted_head_series(n_ckpt, 2, 8, 64, planted, onset=onset, amp=3.0, seed=3)
    steps = [i * STEP for i in range(n_ckpt)]
    fp = compute_fingerprint(theta, steps).to_frame()
    assert SpectralConfig().window == window  # the default the fingerprint used (the first full window's width)
    cl = pd.DataFrame([(s, layer, head, "retrieval", (layer, head) in planted and s == steps[-1])
                       for s in steps for layer in range(2) for head in range(8)],
                      columns=["step", "layer", "head", "probe", "in_induction_circuit"])
    table, doc = preid_from_tables(classes=cl, fingerprints=fp, validation={"status": "done", "probe": "retrieval",
                                                                      "circuit": [list(h) for h in planted]})
    first_full = steps[onset + window - 1]  # the first window whose W updates are all planted ones
    by = {(r["metric"], r["scope"]): r for r in doc["metrics"]}
    for metric in ("update_norm", "gap_norm"):
        for scope in ("raw", "layer_z"):
            assert steps[onset] <= by[metric, scope]["earliest_separating_step"] <= first_full
    # a windowed metric may flicker on noise before the onset: the family-wise p says how often chance does
    assert 0 < by["update_norm", "raw"]["p_family"] <= 1
    assert doc["null"]["n_labelings"] == 64 and doc["null"]["p_floor"] == 1 / 64
    at = table[(table["step"] == first_full) & (table["scope"] == "raw")].set_index("metric")
    assert at.loc["update_norm", "auc"] == 1.0 and at.loc["gap_norm", "auc"] == 1.0


def test_within_layer_permutations_never_move_a_head_across_layers():
    layers = np.repeat(np.arange(4), 6)
    labels = np.zeros(24, bool)
    labels[[7, 9, 20]] = True  # two heads in layer 1, one in layer 3
    for n_perm, exact in ((1000, True), (50, False)):
        perms, was_exact = layer_permutations(layers, labels, n_perm, seed=0)
        assert was_exact is exact
        for layer in range(4):
            counts = perms[:, layers == layer].sum(1)
            assert (counts == labels[layers == layer].sum()).all()
        assert not perms[:, (layers == 0) | (layers == 2)].any()
    perms, _ = layer_permutations(layers, labels, 1000, seed=0)
    assert perms.shape[0] == n_labelings(layers, labels) == math.comb(6, 2) * 6
    assert len({row.tobytes() for row in perms}) == perms.shape[0] and labels.tolist() in perms.tolist()
    again, _ = layer_permutations(layers, labels, 50, seed=0)
    assert np.array_equal(again, layer_permutations(layers, labels, 50, seed=0)[0])  # seeded


def test_auc_precision_and_p_against_direct_counts():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 12))
    scores[0, :4] = 5.0  # four heads tied for the top 3 places
    labels = np.zeros(12, bool)
    labels[[0, 4, 8]] = True
    auc = auc_from_ranks(average_ranks(scores), labels)[0]
    for s in range(5):
        pos, neg = scores[s, labels], scores[s, ~labels]
        direct = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
        assert auc[s] == pytest.approx(direct)
    prec = precision_at_k(scores, labels)
    assert prec[0] == pytest.approx(0.75 / 3)  # head 0 is in the top 3 with chance 3/4
    top3 = np.argsort(-scores[1])[:3]
    assert prec[1] == pytest.approx(labels[top3].mean())
    null = np.array([[0.2, 0.9], [0.6, 0.9], [0.9, 0.1]])
    assert permutation_p(np.array([0.6, 0.9]), null, exact=True).tolist() == [2 / 3, 2 / 3]
    assert permutation_p(np.array([0.6, 0.9]), null, exact=False).tolist() == [3 / 4, 3 / 4]


def test_within_layer_z_removes_a_shift_shared_by_the_layer():
    cols = pd.MultiIndex.from_tuples([(0, 0), (0, 1), (1, 0), (1, 1)], names=["layer", "head"])
    wide = pd.DataFrame([[1.0, 3.0, 101.0, 103.0]], index=[0], columns=cols)
    assert within_layer_z(wide).to_numpy().tolist() == [[-1.0, 1.0, -1.0, 1.0]]


def test_without_validation_the_selectivity_circuit_is_used_and_said():
    fp, cl = _tables(np.random.default_rng(2), plant_from=20, metrics=("ratio_12",))
    _, doc = preid_from_tables(classes=cl, fingerprints=fp, validation=None)
    assert doc["circuit_source"] == "selectivity" and doc["circuit"] == sorted(CIRCUIT)
    assert "no causally validated circuit" in doc["circuit_note"]
    _, none = preid_from_tables(classes=cl.assign(in_induction_circuit=False), fingerprints=fp)
    assert none["status"] == "no circuit"


def test_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="auc_bar"):
        PreidSettings(auc_bar=0.4)
    with pytest.raises(ValueError, match="n_perm"):
        PreidSettings(n_perm=3)


def test_a_circuit_that_never_emerges_has_no_lead_and_the_report_says_so():
    from headscreen.report.findings_sections import _preid_sentence

    fp, cl = _tables(np.random.default_rng(4), emerge=100, plant_from=20, metrics=("gap_norm",))
    _, doc = preid_from_tables(classes=cl, fingerprints=fp, validation=VALIDATED)
    assert doc["emergence_step"] is None and doc["earliest"]["earliest_separating_step"] == 2000
    assert doc["earliest"]["lead_steps"] is None and doc["earliest"]["lead_tokens"] is None
    assert "no emergence to lead" in _preid_sentence(doc)
