"""A tiny real grok run (grok-train's trainer) through analyse_run and the report CLI, checked against what
the run's own files say when read directly: it learns (train loss falls, snapshots move from the init), and
grok.json's events are the curves' (first evaluation at test accuracy >= 0.95, the last row), by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from headscreen.grokking.analysis.analyse import analyse_run
from headscreen.grokking.config import GrokConfig
from headscreen.grokking.models.transformer import ModelSpec
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.grokking.training.train import train_run

torch.set_num_threads(1)
TINY = ModelSpec(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64)


@pytest.mark.filterwarnings("ignore:only")
def test_tiny_multitask_run_end_to_end(tmp_path):
    cfg = GrokConfig(tasks=("add", "mul"), p=11, train_frac=0.5, model=TINY, lr=1e-2, batch_size=32, steps=48,
                     eval_every=4, snapshot_every=4, defect_every=8, defect_pairs=2, defect_batch_size=16)
    run = train_run(cfg, tmp_path / "run", progress=False)
    out = analyse_run(run, progress=False)
    curves = pd.read_parquet(run / "curves.parquet").sort_values("step")
    traj = Trajectory(run)
    first, last = traj.load(0), traj.load(48)
    assert traj.steps == list(range(0, 49, 4)) and first.keys() == last.keys()
    assert all(not torch.equal(first[k], last[k]) for k in first if k.endswith(("W_Q", "W_K", "W_V", "W_O")))
    assert set(out["tasks"]) == {"add", "mul"}
    final = {}
    for task in ("add", "mul"):
        c = curves[curves.task == task]
        assert c["train_loss"].iloc[-1] < 0.5 * c["train_loss"].iloc[0]  # it learned
        hits = c.loc[c["test_acc"] >= 0.95, "step"]
        assert out["tasks"][task]["grok_step"] == (int(hits.iloc[0]) if len(hits) else None)
        final[task] = float(c["test_acc"].iloc[-1])
        assert out["tasks"][task]["final_test_acc"] == final[task]
    assert out["final_test_acc"] == min(final.values())
    assert out["n_snapshots"] == 13 and out["settings"]["training"]["tasks"] == ["add", "mul"]
    assert out["settings"]["device"]["device"] == "cpu"  # where it trained (headscreen/compute/device.py)
    assert isinstance(out["key_frequencies"], list)
    edge = pd.read_parquet(run / "edge.parquet")
    assert set(edge.loc[edge.scope == "head", "head"]) == {0, 1}
    trunk_steps = sorted(edge.loc[edge.scope == "trunk", "step"].unique())
    assert trunk_steps == list(range(40, 49, 4))  # windows end at snapshots 10..12
    portrait = pd.read_parquet(run / "portrait.parquet")
    assert {"test_acc_add", "test_acc_mul"} <= set(portrait.columns) and portrait["square"].all()
    progress = pd.read_parquet(run / "progress.parquet")
    assert progress["restricted_loss"].isna().all()  # multi-task: not applicable
    assert np.isfinite(progress["weight_norm_sq"]).all()
    from pipelines.cli import main

    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["runs"][0]["sections"]["grok_summary"]["data"]["tasks"]["mul"]["grok_step"] == out["tasks"]["mul"]["grok_step"]
