"""The grokking report: figures present, report.json numbers equal to the run's tables and grok.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from grok_fixtures import make_run

from headscreen.grokking.analysis.analyse import analyse_run
from headscreen.grokking.analysis.summary import power_law_by_weight_decay
from headscreen.report.grok_sections import grok_kind
from pipelines.report import report as render_report

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:only 0 of")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("grokrep")
    g = make_run(base / "wd1", weight_decay=1.0)
    m = make_run(base / "wd0", weight_decay=0.0, grok_at=None, onset_at=None, switch=10_000)
    analyse_run(g, progress=False)  # wd0 is analysed by the report pipeline first (no grok.json yet)
    return base, g, m


def test_single_run_report(pair, tmp_path):
    _, g, _ = pair
    assert grok_kind(g) == "run" and grok_kind(tmp_path) is None
    paths = render_report([g], out=tmp_path / "rep")
    doc = json.loads(paths["json"].read_text())
    html = paths["html"].read_text()
    assert "headscreen grokking report" in html and html.count("data:image/png;base64") >= 6
    secs = doc["runs"][0]["sections"]
    assert set(secs) == {"grok_settings", "grok_summary", "grok_curves", "grok_edge", "grok_portrait",
                         "grok_fourier", "grok_pca", "grok_window"}
    for key, n in (("grok_curves", 1), ("grok_edge", 1), ("grok_portrait", 2), ("grok_fourier", 2)):
        assert len(secs[key]["figures"]) == n
        for f in secs[key]["figures"]:
            assert (tmp_path / "rep" / f).is_file()
    grok = json.loads((g / "grok.json").read_text())
    s = secs["grok_summary"]["data"]
    for k in ("grok_step", "memorisation_step", "defect_onset_step", "gap_open_step", "lead_time", "key_frequencies"):
        assert s[k] == grok[k]
    e = secs["grok_edge"]["data"]
    assert e["gap_open_step"] == grok["gap_open_step"] == 380 and e["edge"]["peak_step"] == grok["edge"]["peak_step"]
    fourier = pd.read_parquet(g / "fourier.parquet")
    last = fourier[fourier.step == fourier.step.max()]
    norms = secs["grok_fourier"]["data"]["final_norms"]
    assert {int(k): v for k, v in norms.items()} == pytest.approx(dict(zip(last.frequency, last.norm, strict=True)))
    assert secs["grok_pca"]["data"]["pc1_share"] == grok["pca"]["pc1_share"]
    md = paths["md"].read_text()
    assert "## wd1" in md and "Grokking events" in md


def test_pair_report(pair, tmp_path):
    _, g, m = pair
    paths = render_report([g, m], out=tmp_path / "cmp")
    doc = json.loads(paths["json"].read_text())
    comp = doc["comparison"]
    assert comp["figures"] == ["comparison-pair-1.png"] and (tmp_path / "cmp/comparison-pair-1.png").is_file()
    rows = {r["run"]: r for r in comp["data"]["pairs"]}
    assert rows[str(g)]["grok_step"] == 400 and rows[str(m)]["grok_step"] is None
    assert rows[str(m)]["gap_open_step"] is None
    assert (m / "grok.json").is_file()  # analysed while building the report
    assert doc["runs"][1]["sections"]["grok_settings"]["notices"]


def test_sweep_report(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    for lr, grok_at, onset in ((1e-3, 500, 200), (2e-3, 420, 220), (3e-3, 360, 200), (5e-3, 300, 180)):
        make_run(sweep / "runs" / f"wd1_lr{lr:g}", n_snap=26, lr=lr, grok_at=grok_at, onset_at=onset)
    make_run(sweep / "runs" / "wd0_lr0.001", n_snap=26, lr=1e-3, weight_decay=0.0, grok_at=None, onset_at=None,
             switch=10_000)
    assert grok_kind(sweep) == "sweep"
    paths = render_report([sweep], out=tmp_path / "srep")
    doc = json.loads(paths["json"].read_text())
    secs = doc["runs"][0]["sections"]
    df = pd.read_parquet(sweep / "sweep.parquet")
    fits = power_law_by_weight_decay(df)
    got = secs["grok_lead_scaling"]["data"]["fits"]
    assert got[0]["alpha"] == pytest.approx(fits["alpha"].iloc[0]) and got[0]["n"] == 4
    assert secs["grok_lead_scaling"]["figures"] == ["sweep-sweep-lead-scaling.png"]
    counts = secs["grok_sweep"]["data"]["counts"]
    assert counts["with_wd"] == {"n": 4, "grokked": 4, "gap_opens_before_grokking": int(
        (df[df.weight_decay > 0].gap_open_step < df[df.weight_decay > 0].grok_step).sum()), "onset_before_grokking": 4}
    assert counts["without_wd"]["n"] == 1 and counts["without_wd"]["grokked"] == 0
    assert secs["grok_pair"]["figures"] == ["sweep-sweep-pair-1.png"]
    assert len(secs["grok_sweep"]["data"]["runs"]) == 5
