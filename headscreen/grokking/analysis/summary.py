"""`summarise_sweep`: one row per run of a grok sweep, and the lead-time power law ℓ ∝ t_grok^α.

Sweep layout (docs/run-format.md): <dir>/runs/<name>/ (one grok run each), <dir>/sweep.json, and the
table this module computes, <dir>/sweep.parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from headscreen.grokking.analysis.detect import MIN_FIT_POINTS, fit_power_law
from headscreen.rundir.store import atomic_write

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


NULL_COLUMNS = ("null_alpha", "null_r2", "rank_rho", "rank_p", "verdict")


def _null_and_rank(grp: pd.DataFrame) -> dict:
    """The fixed-onset null (median onset per operation) and the onset/grokking rank correlation (within
    operations) of one weight decay's runs (headscreen.grokking.analysis.leadlaw); NaN where undefined."""
    from headscreen.grokking.analysis.leadlaw import fixed_onset_null, rank_correlation, verdict

    t = grp["grok_step"].astype(float).to_numpy()
    onset = t - grp["lead_time"].astype(float).to_numpy()
    ops = list(grp["tasks"]) if "tasks" in grp else None
    out = dict.fromkeys(NULL_COLUMNS, np.nan)
    out["verdict"] = None
    try:
        fit, null = fit_power_law(t, t - onset), fixed_onset_null(t, onset, ops)
        out.update(null_alpha=null.alpha, null_r2=null.r2)
        rank = rank_correlation(onset, t, ops)
        out.update(rank_rho=rank.rho, rank_p=rank.p_value, verdict=verdict(fit, null, rank))
    except ValueError:
        pass
    return out


def power_law_by_weight_decay(df: pd.DataFrame) -> pd.DataFrame:
    """The fit ℓ ∝ t_grok^α within each weight-decay value > 0 (an lr/seed sweep at fixed wd); one row
    per weight decay with alpha, prefactor, r2, n (NaN when fewer than 3 usable runs), and beside it the
    fixed-onset null, the rank statistic and the verdict (NULL_COLUMNS)."""
    rows = []
    for wd, grp in df[df["weight_decay"].astype(float) > 0].groupby("weight_decay"):
        t = grp["grok_step"].astype(float).to_numpy()
        lead = grp["lead_time"].astype(float).to_numpy()
        usable = int((np.isfinite(t) & np.isfinite(lead) & (t > 0) & (lead > 0)).sum())
        if usable >= MIN_FIT_POINTS and np.ptp(t[np.isfinite(t)]) > 0:
            fit = fit_power_law(t, lead)
            rows.append({"weight_decay": wd, "alpha": fit.alpha, "prefactor": fit.prefactor, "r2": fit.r2, "n": fit.n,
                         **_null_and_rank(grp)})
        else:
            rows.append({"weight_decay": wd, "alpha": np.nan, "prefactor": np.nan, "r2": np.nan, "n": usable,
                         **dict.fromkeys(NULL_COLUMNS, np.nan), "verdict": None})
    return pd.DataFrame(rows, columns=["weight_decay", "alpha", "prefactor", "r2", "n", *NULL_COLUMNS])


def summarise_sweep(sweep_dir: str | Path, *, analyse_missing: bool = True, settings=None,
                    progress: bool = True) -> pd.DataFrame:
    """One row per run (settings + grok.json's scalar fields) with the power-law fit of its weight
    decay's group in the power_law_* columns. A finished run without a current grok.json (missing, or
    computed from another trajectory: headscreen.grokking.training.lifecycle) is analysed first
    (`analyse_missing`) or raises; an unfinished run (a failed or killed worker, training in progress)
    gets its settings, complete = False and empty results."""
    from headscreen.grokking.analysis.analyse import analyse_run
    from headscreen.grokking.training.lifecycle import current_analysis, lock_holder
    from headscreen.grokking.training.snapshots import Trajectory

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
    fits = power_law_by_weight_decay(df).drop(columns=list(NULL_COLUMNS)).rename(columns={
        "alpha": FIT_COLUMNS[0], "prefactor": FIT_COLUMNS[1], "r2": FIT_COLUMNS[2], "n": FIT_COLUMNS[3]})
    df = df.merge(fits, on="weight_decay", how="left")
    df["power_law_n"] = pd.array(df["power_law_n"].to_numpy(), dtype="Int64")
    return df


def write_sweep_summary(sweep_dir: str | Path, **kwargs) -> pd.DataFrame:
    """`summarise_sweep` written atomically to <dir>/sweep.parquet."""
    df = summarise_sweep(sweep_dir, **kwargs)
    atomic_write(Path(sweep_dir) / "sweep.parquet", lambda p: df.to_parquet(p, index=False))
    return df
