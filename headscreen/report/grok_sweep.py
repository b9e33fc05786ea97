"""Report sections of a grok sweep: one row per run (sweep.parquet), the lead-time scaling (the fits the
report pipeline prepared: headscreen.grokking.analysis.summary.power_law_by_weight_decay, via
report/inputs.py), the grok/memorise pairs, the dose-response and the published comparison. Nothing is
computed here: `headscreen report` brings sweep.parquet up to date first (pipelines/report_prep.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from headscreen.report import grok_figures as gf
from headscreen.report.content import Section, Table, figure_to_png
from headscreen.report.grok_sections import load_grok_run, pair_section
from headscreen.report.inputs import ReportInputs
from headscreen.rundir.jsonsafe import json_safe

SUMMARY_COLUMNS = {"complete", "grok_step", "key_frequencies"}  # a sweep.parquet without them predates the analysis


def summary_is_current(sweep_dir: Path) -> bool:
    """sweep.parquet holds the analysed summary of every run, all finished (else the pipeline rewrites it:
    no summary yet after a --no-analysis sweep or failed runs, or unfinished runs that may have finished since)."""
    path = Path(sweep_dir) / "sweep.parquet"
    if not path.is_file():
        return False
    df = pd.read_parquet(path)
    return SUMMARY_COLUMNS <= set(df.columns) and bool(df["complete"].all())


def sweep_run_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories of a sweep (<dir>/runs/<name>/ with a manifest.json), sorted by name."""
    return sorted(p for p in (Path(sweep_dir) / "runs").glob("*") if (p / "manifest.json").is_file())


def _runs_section(df: pd.DataFrame, unfinished: list[str]) -> Section:
    cols = ["run", "weight_decay", "lr", "seed", "grok_step", "defect_onset_step", "gap_open_step", "lead_time",
            "final_test_acc", "key_frequencies"]
    rows = [[None if pd.isna(v) else v for v in r] for r in df[cols].astype(object).values.tolist()]
    notices = ([f"UNFINISHED: {len(unfinished)} of {len(df)} runs have not finished training ({', '.join(unfinished)}): "
                "their rows are empty and they are left out of the fits and pairs; rerun the sweep to resume them."]
               if unfinished else [])
    table = Section(key="grok_sweep", title="Sweep runs", tables=[Table(cols, rows)], notices=notices,
                    data={"runs": json_safe(df[cols].astype(object).where(df[cols].notna(), None).to_dict("records"))})
    wd = df["weight_decay"].astype(float)
    grokked = df["grok_step"].notna()
    gap_before = df["gap_open_step"].notna() & (~grokked | (df["gap_open_step"] < df["grok_step"]).fillna(False))
    onset_before = df["defect_onset_step"].notna() & grokked & (df["defect_onset_step"] < df["grok_step"]).fillna(False)
    counts = {"with_wd": {"n": int((wd > 0).sum()), "grokked": int((grokked & (wd > 0)).sum()),
                          "gap_opens_before_grokking": int((gap_before & grokked & (wd > 0)).sum()),
                          "onset_before_grokking": int((onset_before & (wd > 0)).sum())},
              "without_wd": {"n": int((wd == 0).sum()), "grokked": int((grokked & (wd == 0)).sum()),
                             "gap_opens": int((df["gap_open_step"].notna() & (wd == 0)).sum())}}
    w, z = counts["with_wd"], counts["without_wd"]
    table.tables.append(Table(["", "runs", "grokked", "gap opens (before grokking)", "defect onset before grokking"], [
        ["with weight decay", w["n"], w["grokked"], w["gap_opens_before_grokking"], w["onset_before_grokking"]],
        ["without", z["n"], z["grokked"], z["gap_opens"], None]]))
    table.data["counts"] = counts
    return table


def _scaling_section(df: pd.DataFrame, fits: pd.DataFrame, slug: str) -> Section:
    scaling = Section(key="grok_lead_scaling", title="Lead-time scaling ℓ ∝ t_grok^α",
                      data={"fits": json_safe(fits.to_dict("records"))})
    scaling.tables.append(Table(["weight decay", "α", "prefactor", "R²", "n", "fixed-onset null α", "null R²",
                                 "rank ρ (onset, grokking)", "rank p"],
                                fits.drop(columns=["verdict"]).astype(object).where(fits.drop(columns=["verdict"]).notna(),
                                                                                    None).values.tolist(),
                                caption="null: every onset replaced by its operation's median onset "
                                        "(headscreen.grokking.analysis.leadlaw)"))
    scaling.notices.extend(f"weight decay {r['weight_decay']:g}: {r['verdict']}" for _, r in fits.iterrows()
                           if isinstance(r["verdict"], str))
    if np.isfinite(fits["alpha"]).any():
        best = fits.dropna(subset=["alpha"]).iloc[0]
        title = f"α = {best['alpha']:.2f} (R² {best['r2']:.2f}, n = {int(best['n'])}) at weight decay {best['weight_decay']:g}"
    else:
        title = "Too few runs with a positive lead time for a fit (need 3 per weight decay)"
        scaling.notices.append(title)
    scaling.figures.append(figure_to_png(gf.lead_time_scaling(df, fits, title=title), f"{slug}-lead-scaling",
                                         "lead time against grokking step, log-log, with the fitted power law"))
    return scaling


def sweep_sections(sweep_dir: Path, slug: str, inputs: ReportInputs) -> list[Section]:
    fits = inputs.need("sweep_fits", sweep_dir)
    df = pd.read_parquet(sweep_dir / "sweep.parquet")
    unfinished = df.loc[~df["complete"].astype(bool), "run"].tolist()
    table, scaling = _runs_section(df, unfinished), _scaling_section(df, fits, slug)
    runs = [load_grok_run(p, inputs) for p in sweep_run_dirs(sweep_dir) if p.name not in unfinished]
    from headscreen.report.grok_interventions import dose_response_section

    dose = dose_response_section(df, slug)
    from headscreen.report.grok_compare import sweep_comparison_section

    published = sweep_comparison_section(sweep_dir)
    return [table, scaling, pair_section(runs, prefix=slug), *([dose] if dose is not None else []),
            *([published] if published is not None else [])]
