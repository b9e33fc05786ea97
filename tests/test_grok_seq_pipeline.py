"""Dyck/SCAN through the CLI, analyse_run and the report: intervention section and dose-response."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from headscreen.config import ConfigError
from headscreen.grokking.analysis.summary import write_sweep_summary
from headscreen.grokking.config import GrokConfig, SweepConfig
from headscreen.grokking.training.train import train_run
from pipelines.grok import grok, load_grok_config
from pipelines.report import report as render_report

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}


def _cli(*argv: str) -> int:
    from pipelines.cli import main

    return main(list(argv))


def test_dyck_scan_configs_and_cli_flags(tmp_path, capsys):
    for name, task in (("dyck", "dyck"), ("scan", "scan"), ("grok-dyck-full", "dyck"), ("grok-scan-full", "scan")):
        _, cfg, sweep = load_grok_config(name)
        assert cfg.task_name == task and sweep is not None
    _, cfg, _ = load_grok_config("scan", {"intervention.kind": "amplify", "intervention.strength": 1.0,
                                          "task_options.split": "addjump"})
    assert cfg.intervention.factor == 2.0 and cfg.task_options["split"] == "addjump"
    assert cfg.task_options["n_train"] == 1024  # the YAML's other options are kept
    _, cfg, sweep = load_grok_config("grok-dyck-suppress")
    names = [n for n, _ in sweep.grid(cfg)]
    assert names[-1].endswith("_s1") and len(names) == 5
    with pytest.raises(ConfigError, match="intervention.kind"):
        SweepConfig(intervention_strength=(0.0, 1.0)).grid(GrokConfig())
    assert _cli("grok", "modadd", "--split", "simple", "--out", str(tmp_path / "x")) == 2
    assert "take none" in capsys.readouterr().err
    assert _cli("grok", "dyck", "--intervention", "suppress", "--strength", "2", "--out", str(tmp_path / "y")) == 2


def test_scan_run_is_analysed_without_fourier(tmp_path):
    out = tmp_path / "scan"
    result = grok("scan", out, progress=False, overrides={
        "model": TINY, "task_options": {"n_train": 32, "n_test": 16}, "steps": 4, "batch_size": 16,
        "eval_every": 2, "snapshot_every": 2, "defect_every": 2, "defect_batch_size": 8})
    assert result["key_frequencies"] == [] and result["fourier_gini"] is None and result["intervention"] is None
    assert not (out / "fourier.parquet").exists()
    assert len(pd.read_parquet(out / "defect.parquet")) == 3
    doc = json.loads(render_report([out], out=tmp_path / "rep")["json"].read_text())
    secs = doc["runs"][0]["sections"]
    assert "grok_fourier" not in secs and "grok_intervention" not in secs and "grok_curves" in secs


def test_dyck_run_with_full_windows_is_analysed_without_modular_window_analyses(tmp_path):
    # W + 1 = 11 snapshots or more: the edge windows exist, and the modes/coupling window analyses (which
    # need the p x p grid of a modular task) are skipped rather than loading a modular model
    out = tmp_path / "dyck"
    result = grok("dyck", out, progress=False, overrides={
        "model": TINY, "task_options": {"n_train": 8, "n_test": 16}, "steps": 24, "eval_every": 4,
        "snapshot_every": 2, "defect_every": 0})
    assert result["n_snapshots"] == 13 and result["window_analyses"] is None
    assert len(pd.read_parquet(out / "edge.parquet")) > 0


def test_dose_response_sweep_report(tmp_path):
    sweep = tmp_path / "sweep"
    base = GrokConfig.from_dict({"task": "dyck", "model": TINY, "task_options": {"n_train": 8, "n_test": 16},
                                 "batch_size": None, "steps": 8, "eval_every": 2, "snapshot_every": 2,
                                 "defect_every": 0, "intervention": {"kind": "suppress", "k": 2, "start": 4,
                                                                     "window": 4}})
    grid = SweepConfig(intervention_strength=(0.0, 1.0)).grid(base)
    for name, cfg in grid:
        train_run(cfg, sweep / "runs" / name, progress=False)
    (sweep / "sweep.json").write_text("{}")
    df = write_sweep_summary(sweep, progress=False)
    assert sorted(df.intervention_strength) == [0.0, 1.0] and set(df.intervention) == {"suppress"}
    paths = render_report([sweep], out=tmp_path / "srep")
    secs = json.loads(paths["json"].read_text())["runs"][0]["sections"]
    dose = secs["grok_dose_response"]
    assert [r["intervention_strength"] for r in dose["data"]["runs"]] == [0.0, 1.0]
    assert len(dose["figures"]) == 1 and (tmp_path / "srep" / dose["figures"][0]).is_file()
    run = sweep / "runs" / grid[1][0]
    grok_json = json.loads((run / "grok.json").read_text())
    assert grok_json["intervention"]["factor"] == 0.0 and grok_json["intervention"]["n_rho"] >= 1
    rep = json.loads(render_report([run], out=tmp_path / "rrep")["json"].read_text())["runs"][0]["sections"]
    assert rep["grok_intervention"]["data"]["strength"] == 1.0 and len(rep["grok_intervention"]["figures"]) == 1
