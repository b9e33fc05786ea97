"""The Dyck/SCAN early-warning study's event rules and lead-time law, applied to our run directories.

The study (arXiv 2602.16967; its code is the dyck_scan repository) defines, per run (docs/methods.md,
"Grokking II: the published recipes"):

* grokking step: the first evaluation of `GROK_SUSTAINED` (3) in a row with test accuracy >= `GROK_ACC`
  (0.98): token accuracy on Dyck, sequence accuracy on SCAN (the run's own `test_acc` column);
* defect onset: the ratio rule with the study's baseline floor and search start
  (`detect.onset_ratio(..., **detect.PUBLISHED_ONSET)`: D > max(10 × max(median of the first 3, 0.1), 20),
  the third measurement included);
* lead ℓ = t_grok − t_onset, and the law ℓ ∝ t_grok^α fitted over the runs with ℓ > 0
  (`detect.fit_power_law`, least squares in log–log space as the study's `linregress`).

`lead_table` reads a sweep's run directories (curves.parquet, defect.parquet, manifest.json) and gives one
row per run; `lead_law` fits α and puts beside it the fixed-onset null and the rank statistic of
`headscreen.grokking.analysis.leadlaw` (the one implementation of both).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from headscreen.grokking.analysis import leadlaw
from headscreen.grokking.analysis.detect import (
    PUBLISHED_ONSET,
    SeriesTooShort,
    grok_step,
    lead_time,
    onset_ratio,
)

GROK_ACC, GROK_SUSTAINED = 0.98, 3
PUBLISHED_LAW = {"dyck": {"alpha": 1.13, "r2": 0.908, "n": 14}, "scan": {"alpha": 1.18, "r2": 0.990, "n": 11}}
LEAD_COLUMNS = ["run", "task", "lr", "seed", "last_step", "complete", "final_test_acc", "grok_step", "onset_step",
                "lead", "lead_fraction"]


def run_events(run_dir: str | Path) -> dict:
    """The study's grokking step, onset and lead of one run directory (None where an event is absent)."""
    run = Path(run_dir)
    manifest = json.loads((run / "manifest.json").read_text())
    cfg = manifest["config"]
    curves = pd.read_parquet(run / "curves.parquet").sort_values("step")
    defect_path = run / "defect.parquet"
    defect = pd.read_parquet(defect_path).sort_values("step") if defect_path.exists() else None
    t_grok = grok_step(curves["step"].to_numpy(), curves["test_acc"].to_numpy(), GROK_ACC,
                       consecutive=GROK_SUSTAINED) if len(curves) else None
    t_onset = None
    if defect is not None and len(defect):
        try:
            t_onset = onset_ratio(defect["step"].to_numpy(), defect["defect_median"].to_numpy(), **PUBLISHED_ONSET)
        except SeriesTooShort:  # fewer measurements than the baseline and one more: no onset yet
            t_onset = None
    lead = lead_time(t_grok, t_onset)
    meta = run / "trajectory" / "series.json"
    complete = bool(json.loads(meta.read_text()).get("complete")) if meta.exists() else False
    return {"run": run.name, "task": cfg["tasks"][0], "lr": cfg["lr"], "seed": cfg["seed"],
            "last_step": int(curves["step"].iloc[-1]) if len(curves) else None, "complete": complete,
            "final_test_acc": float(curves["test_acc"].iloc[-1]) if len(curves) else None,
            "grok_step": t_grok, "onset_step": t_onset, "lead": lead,
            "lead_fraction": None if lead is None or not t_grok else lead / t_grok}


def lead_table(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per run directory under `sweep_dir`/runs (or `sweep_dir` itself holding run directories)."""
    root = Path(sweep_dir)
    base = root / "runs" if (root / "runs").is_dir() else root
    rows = [run_events(p) for p in sorted(base.iterdir()) if (p / "curves.parquet").exists()]
    if not rows:
        raise FileNotFoundError(f"no run directory with curves.parquet under {base}; give a sweep's --out folder")
    return pd.DataFrame(rows, columns=LEAD_COLUMNS)


def lead_law(table: pd.DataFrame, task: str) -> dict:
    """α, R², n over the grokking runs with an onset (the fit keeps those with a positive lead), beside the
    published figures; `null` (fixed-onset fit), `rank` (Spearman of onset with t_grok) and `verdict` from
    leadlaw.lead_law."""
    grokked = table.dropna(subset=["grok_step"])
    with_onset = grokked.dropna(subset=["onset_step"])
    out = {"task": task, "published": PUBLISHED_LAW.get(task), "runs": len(table), "grokked": len(grokked),
           "onset_before_grok": int((with_onset["lead"] > 0).sum()), "with_onset": len(with_onset)}
    try:
        law = leadlaw.lead_law(with_onset["grok_step"].to_numpy(dtype=float),
                               with_onset["onset_step"].to_numpy(dtype=float))
    except ValueError as e:
        out["fit"] = {"status": "cannot fit", "why": str(e)}
        return out
    out.update(law.to_dict())
    out["fit"] = law.fit.to_dict()
    return out
