"""`summarise_sweep`: one row per run of a grok sweep, and the lead-time power law ℓ ∝ t_grok^α.

Sweep layout (docs/run-format.md): <dir>/runs/<name>/ (one grok run each), <dir>/sweep.json, and the
table this module computes, <dir>/sweep.parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from headscreen.grokking.detect import MIN_FIT_POINTS, fit_power_law
from headscreen.store import atomic_write

RUNS = "runs"
STEP_FIELDS = ("grok_step", "memorisation_step", "defect_onset_step", "gap_open_step", "lead_time",
               "commutator_peak_step")
SETTING_FIELDS = ("weight_decay", "lr", "seed", "p", "train_frac")
FIT_COLUMNS = ("power_law_alpha", "power_law_prefactor", "power_law_r2", "power_law_n")


def sweep_runs(sweep_dir: str | Path) -> list[Path]:
    """The run directories of a sweep (sorted by name); a clear error if there are none."""
    root = Path(sweep_dir)
    runs = sorted(p for p in (root / RUNS).glob("*") if (p / "manifest.json").is_file())
    if not runs:
        raise FileNotFoundError(f"{root} holds no sweep runs (expected {root / RUNS}/<name>/manifest.json); "
                                "give the --out directory of `headscreen grok sweep`")
    return runs


def _row(run: Path, grok: dict, manifest: dict) -> dict:
    cfg = manifest.get("config", {})
    series = run / "trajectory" / "series.json"
    complete = bool(json.loads(series.read_text()).get("complete")) if series.is_file() else False
    row = {"run": run.name, "complete": complete, "tasks": ",".join(cfg.get("tasks", []))}
    row.update({k: cfg.get(k) for k in SETTING_FIELDS})
    row.update({k: grok.get(k) for k in STEP_FIELDS})
    row["final_train_acc"] = grok.get("final_train_acc")
    row["final_test_acc"] = grok.get("final_test_acc")
    row["key_frequencies"] = ",".join(str(k) for k in grok.get("key_frequencies") or [])
    row["pc1_share"] = (grok.get("pca") or {}).get("pc1_share")
    iv = cfg.get("intervention") or {}
    row["intervention"] = iv.get("kind", "none")
    row["intervention_strength"] = iv.get("strength", 0.0)
    row["rho_ratio_median"] = (grok.get("intervention") or {}).get("rho_ratio_median")
    return row


def power_law_by_weight_decay(df: pd.DataFrame) -> pd.DataFrame:
    """The fit ℓ ∝ t_grok^α within each weight-decay value > 0 (an lr/seed sweep at fixed wd); one row
    per weight decay with alpha, prefactor, r2, n (NaN when fewer than 3 usable runs)."""
    rows = []
    for wd, grp in df[df["weight_decay"].astype(float) > 0].groupby("weight_decay"):
        t = grp["grok_step"].astype(float).to_numpy()
        lead = grp["lead_time"].astype(float).to_numpy()
        usable = int((np.isfinite(t) & np.isfinite(lead) & (t > 0) & (lead > 0)).sum())
        if usable >= MIN_FIT_POINTS and np.ptp(t[np.isfinite(t)]) > 0:
            fit = fit_power_law(t, lead)
            rows.append({"weight_decay": wd, "alpha": fit.alpha, "prefactor": fit.prefactor, "r2": fit.r2, "n": fit.n})
        else:
            rows.append({"weight_decay": wd, "alpha": np.nan, "prefactor": np.nan, "r2": np.nan, "n": usable})
    return pd.DataFrame(rows, columns=["weight_decay", "alpha", "prefactor", "r2", "n"])


def summarise_sweep(sweep_dir: str | Path, *, analyse_missing: bool = True, settings=None,
                    progress: bool = True) -> pd.DataFrame:
    """One row per run (settings + grok.json's scalar fields) with the power-law fit of its weight
    decay's group in the power_law_* columns. A finished run without a current grok.json (missing, or
    computed from another trajectory: headscreen.grokking.lifecycle) is analysed first
    (`analyse_missing`) or raises; an unfinished run (a failed or killed worker, training in progress)
    gets its settings, complete = False and empty results."""
    from headscreen.grokking.analyse import analyse_run
    from headscreen.grokking.lifecycle import current_analysis, lock_holder
    from headscreen.grokking.snapshots import Trajectory

    rows = []
    for run in sweep_runs(sweep_dir):
        grok = current_analysis(run, settings, any_settings=settings is None)
        if grok is None and Trajectory(run).complete and lock_holder(run) is None:
            if not analyse_missing:
                raise FileNotFoundError(f"{run / 'grok.json'} is missing or stale; run analyse_run on it or pass "
                                        "analyse_missing=True")
            grok = analyse_run(run, settings=settings, progress=progress)
        rows.append(_row(run, grok or {}, json.loads((run / "manifest.json").read_text())))
    df = pd.DataFrame(rows)
    for col in STEP_FIELDS:
        df[col] = pd.array(df[col].to_numpy(), dtype="Int64")
    fits = power_law_by_weight_decay(df).rename(columns={"alpha": FIT_COLUMNS[0], "prefactor": FIT_COLUMNS[1],
                                                         "r2": FIT_COLUMNS[2], "n": FIT_COLUMNS[3]})
    df = df.merge(fits, on="weight_decay", how="left")
    df["power_law_n"] = pd.array(df["power_law_n"].to_numpy(), dtype="Int64")
    return df


def write_sweep_summary(sweep_dir: str | Path, **kwargs) -> pd.DataFrame:
    """`summarise_sweep` written atomically to <dir>/sweep.parquet."""
    df = summarise_sweep(sweep_dir, **kwargs)
    atomic_write(Path(sweep_dir) / "sweep.parquet", lambda p: df.to_parquet(p, index=False))
    return df
