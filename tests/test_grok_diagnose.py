"""diagnose.recompute_defect reproduces a run's own defect measurements from its snapshots."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from headscreen.grokking.config import GrokConfig
from headscreen.grokking.published.diagnose import onsets_by_setting, recompute_defect
from headscreen.grokking.training.train import train_run


def test_recompute_equals_in_run_defect(tmp_path):
    torch.set_num_threads(1)
    cfg = GrokConfig(p=11, steps=20, eval_every=10, snapshot_every=10, defect_every=10, defect_pairs=3,
                     defect_batch_size=16, batch_size=32, model={"preset": "curv", "n_layers": 1, "d_model": 32,
                                                                 "d_head": 8, "d_mlp": 64})
    cfg = GrokConfig.from_dict(cfg.to_dict())
    train_run(cfg, tmp_path, progress=False)
    again = recompute_defect(tmp_path, pairs=3, batch_size=16, form="exact")
    rec = pd.read_parquet(tmp_path / "defect.parquet")
    assert again["step"].tolist() == rec["step"].tolist() == [0, 10, 20]
    assert again["defect_median"].to_numpy() == pytest.approx(rec["defect_median"].to_numpy(), rel=1e-9)
    assert (again["grad_norm"] > 0).all()
    ev = onsets_by_setting(pd.read_parquet(tmp_path / "curves.parquet"), {"exact": again})
    assert ev["defect"].tolist() == ["exact"] and "lead_95" in ev
