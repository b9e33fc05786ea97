"""Recompute the commutator defect on a run's snapshots under other measurement settings (issue 22's
diagnosis: which factor moves the defect's onset ahead of grokking; docs/methods.md).

`recompute_defect(run, pairs, batch_size, form)` evaluates the defect at every snapshot with K pairs
of `batch_size` training examples drawn from the stateless per-step generator (train.defect_pairs, so
every setting sees the same batches at the same step for a given K and batch size) in the `exact` or
the published `float32_direct` form, and records the median gradient norm of the pairs' batches
(the float32 form's rounding term scales as 1/(‖g_A‖‖g_B‖)). `onsets_by_setting` applies the published
onset rule and grokking thresholds to each setting's series.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from headscreen.grokking.config import GrokConfig
from headscreen.grokking.published.records import run_events
from headscreen.grokking.tasks.base import make_task
from headscreen.grokking.training.defect import commutator_defect, defect_summary
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.grokking.training.train import defect_pairs


def _grad_norm(model, loss_fn, batch, params) -> float:
    loss = loss_fn(model, batch)
    gs = torch.autograd.grad(loss, params)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))


def recompute_defect(run_dir: str | Path, *, pairs: int, batch_size: int, form: str,
                     steps: list[int] | None = None) -> pd.DataFrame:
    """step, defect_median/q25/q75, grad_norm (median over the 2K batches) at each snapshot (or `steps`)."""
    run = Path(run_dir)
    cfg = GrokConfig.from_dict(json.loads((run / "manifest.json").read_text())["config"])
    cfg = cfg.replace(defect_pairs=pairs, defect_batch_size=batch_size)
    task = make_task(cfg)
    model = task.build_model(cfg.seed).train()
    params = [q for q in model.parameters() if q.requires_grad]
    traj = Trajectory(run)
    rows = []
    for step in steps if steps is not None else traj.steps:
        model.load_state_dict(traj.load(step))
        batches = defect_pairs(cfg, task.train(), step)
        d = commutator_defect(model, task.loss_fn, batches, eta=cfg.defect_eta, params=params, form=form)
        norms = [_grad_norm(model, task.loss_fn, b, params) for pair in batches for b in pair]
        rows.append({"step": step, **defect_summary(d), "grad_norm": float(np.median(norms))})
    return pd.DataFrame(rows)


def onsets_by_setting(curves: pd.DataFrame, series: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per defect setting: baseline, onset (published rule) and grokking at 0.5/0.9/0.95 with the lead."""
    acc = curves.groupby("step")["test_acc"].min()
    rows = []
    for name, df in series.items():
        df = df.sort_values("step")
        test = acc.reindex(df["step"]).to_numpy()
        ev = run_events(df["step"].to_numpy(), df["defect_median"].to_numpy(), np.nan_to_num(test, nan=-1.0))
        ev["lead_95"] = None if ev["onset"] is None or ev["grok_95"] is None else ev["grok_95"] - ev["onset"]
        rows.append({"defect": name, **ev})
    return pd.DataFrame(rows)
