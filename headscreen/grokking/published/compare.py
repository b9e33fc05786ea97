"""A grok run (or sweep) side by side with the published records (docs/methods.md, "Reproducing the published
grokking results"; file layout: docs/run-format.md, "comparison.json").

`run_comparison(run)` applies the published event rules (published.run_events) to the run's defect and
test-accuracy tables, and takes from the published records of the same operation, learning rate and
weight decay (all published seeds) the band of both curves (median, min and max per step) and each
seed's events. `write_comparison` stores it as <run>/comparison.json, which the report renders
(headscreen/report/grok_compare.py) without computing anything. `sweep_comparison` adds the table over a
sweep's runs, the counts and the lead-time law with its fixed-onset null and rank statistic, beside the
same quantities computed from the published records.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from headscreen.grokking.analysis.leadlaw import lead_law
from headscreen.grokking.published.records import (
    GROK_LEVELS,
    OP_TASKS,
    level_key,
    published_events,
    published_records,
    run_events,
)
from headscreen.rundir.jsonsafe import json_safe
from headscreen.rundir.store import atomic_write

COMPARISON = "comparison.json"
SWEEP_COMPARISON = "sweep_comparison.json"
TASK_OPS = {task: op for op, task in OP_TASKS.items()}
PUBLISHED_P = 97  # every published run is mod 97
LAW_LRS = (1e-4, 1e-3)  # the published lead-time law's learning rates
EVENT_COLUMNS = ("baseline", "onset", *(level_key(lv) for lv in GROK_LEVELS), "lead")


def _reference_rows(records: pd.DataFrame, op: str, lr: float, wd: float) -> pd.DataFrame:
    sel = records[(records["op"] == op) & np.isclose(records["lr"], lr) & np.isclose(records["wd"], wd)]
    if sel.empty:
        return sel
    # the lr 1e-3 runs appear in both published studies with the same rows: keep one study per seed
    first = sel.groupby("seed")["study"].transform("min")
    return sel[sel["study"] == first]


def _band(rows: pd.DataFrame) -> dict:
    g = rows.groupby("step")
    out = {"step": g.size().index.astype(int).tolist(), "n_seeds": g.size().astype(int).tolist()}
    for col, name in (("defect_median", "defect"), ("test_acc", "test_acc")):
        out[f"{name}_median"] = g[col].median().tolist()
        out[f"{name}_min"] = g[col].min().tolist()
        out[f"{name}_max"] = g[col].max().tolist()
    return out


def _setting(manifest: dict) -> tuple[str, float, float, int]:
    cfg = manifest.get("config", {})
    tasks = cfg.get("tasks") or []
    if len(tasks) != 1:
        raise ValueError(f"the comparison needs a single-task run; this one trains {tasks}")
    return tasks[0], float(cfg["lr"]), float(cfg["weight_decay"]), int(cfg["seed"])


def run_comparison(run_dir: str | Path, reference: str | Path | pd.DataFrame | None = None) -> dict:
    """The run's curves and events beside the published band and events (module docstring)."""
    run = Path(run_dir)
    manifest = json.loads((run / "manifest.json").read_text())
    task, lr, wd, seed = _setting(manifest)
    defect = pd.read_parquet(run / "defect.parquet").sort_values("step")
    curves = pd.read_parquet(run / "curves.parquet").sort_values("step")
    if defect.empty or curves.empty:
        raise ValueError(f"{run}: the comparison needs defect and curve rows; train the run with defect_every > 0")
    acc = curves.groupby("step")["test_acc"].min()
    steps = defect["step"].to_numpy()
    test_at = acc.reindex(steps).to_numpy()
    ours = run_events(steps, defect["defect_median"].to_numpy(), np.nan_to_num(test_at, nan=-1.0))
    records = reference if isinstance(reference, pd.DataFrame) else published_records(reference)
    op = TASK_OPS.get(task, task)
    rows = _reference_rows(records, op, lr, wd)
    pub = published_events(rows) if not rows.empty else pd.DataFrame(columns=["seed", *EVENT_COLUMNS])
    return json_safe({
        "task": task, "op": op, "lr": lr, "weight_decay": wd, "seed": seed, "p": manifest["config"].get("p"),
        "published_p": PUBLISHED_P,
        "rules": "onset: first measurement from the third on with defect > 10 × max(median of first 3, 0.1) and "
                 "> 20; grokking: first measurement with test accuracy >= 0.5 / 0.9 / 0.95; lead to 0.9",
        "run": {"events": ours, "curve": {"step": steps.astype(int).tolist(),
                                          "defect": defect["defect_median"].tolist(),
                                          "test_acc": [None if np.isnan(v) else float(v) for v in test_at]}},
        "published": {"seeds": [int(s) for s in sorted(rows["seed"].unique())] if not rows.empty else [],
                      "events": pub[["seed", *EVENT_COLUMNS]].astype(object).where(pub.notna(), None)
                      .to_dict("records") if not pub.empty else [],
                      "band": _band(rows) if not rows.empty else None},
    })


def write_comparison(run_dir: str | Path, reference=None) -> dict:
    """run_comparison written atomically to <run>/comparison.json."""
    comp = run_comparison(run_dir, reference)
    path = Path(run_dir) / COMPARISON
    atomic_write(path, lambda p: p.write_text(json.dumps(comp, indent=1)))
    return comp


def comparison_table(comp: dict) -> pd.DataFrame:
    """One row for the run and one per published seed: onset, grok_50/90/95, lead, baseline."""
    rows = [{"source": "this run", "seed": comp["seed"], **{k: comp["run"]["events"].get(k) for k in EVENT_COLUMNS}}]
    rows += [{"source": "published", **{k: e.get(k) for k in ("seed", *EVENT_COLUMNS)}} for e in comp["published"]["events"]]
    return pd.DataFrame(rows, columns=["source", "seed", *EVENT_COLUMNS])


# --- sweeps ----------------------------------------------------------------------------------------------
def _law(df: pd.DataFrame) -> dict | None:
    """Lead-time law over rows with op, lr, grok_90, onset (groups: op × lr); None when it cannot be fitted."""
    t = df["grok_90"].astype(float).to_numpy()
    o = df["onset"].astype(float).to_numpy()
    try:
        return lead_law(t, o, groups=list(zip(df["op"], df["lr"], strict=True))).to_dict()
    except ValueError as e:
        return {"error": str(e)}


def _counts(df: pd.DataFrame) -> dict:
    grokked = df["grok_90"].notna()
    before = grokked & df["onset"].notna() & (df["onset"].astype(float) < df["grok_90"].astype(float))
    leads = df.loc[before, "lead"].astype(float)
    base = df["baseline"].astype(float)
    return {"runs": int(len(df)), "grokked": int(grokked.sum()), "onset_before_grokking": int(before.sum()),
            "lead_min": float(leads.min()) if len(leads) else None, "lead_max": float(leads.max()) if len(leads) else None,
            "baseline_min": float(base.min()) if len(base) else None, "baseline_max": float(base.max()) if len(base) else None}


def sweep_comparison(sweep_dir: str | Path, reference=None, *, write: bool = True) -> dict:
    """Every run's comparison (written into the run when `write`), the table, and per (lr, wd) the counts
    and the lead-time law over the grokking operations, beside the published ones."""
    from headscreen.grokking.analysis.summary import sweep_runs

    records = published_records(reference)
    rows = []
    for run in sweep_runs(sweep_dir):
        if not (run / "defect.parquet").is_file():
            continue
        comp = write_comparison(run, records) if write else run_comparison(run, records)
        rows.append({"run": run.name, "op": comp["op"], "lr": comp["lr"], "wd": comp["weight_decay"],
                     "seed": comp["seed"], **comp["run"]["events"]})
    ours = pd.DataFrame(rows)
    pub = published_events(records)
    pub = pub[pub["study"] == pub.groupby(["op", "lr", "wd", "seed"])["study"].transform("min")]
    out = {"runs": json_safe(ours.astype(object).where(ours.notna(), None).to_dict("records")), "groups": []}
    if ours.empty:
        return out
    for (lr, wd), grp in ours.groupby(["lr", "wd"]):
        ref = pub[np.isclose(pub["lr"], lr) & np.isclose(pub["wd"], wd)]
        ref = ref[ref["op"].isin(grp["op"].unique())]
        out["groups"].append({"lr": lr, "wd": wd, "ours": _counts(grp), "published": _counts(ref) if len(ref) else None})
    grokking = ours[(ours["wd"] > 0) & ours["lr"].isin(LAW_LRS)]
    if len(grokking):
        ref = pub[(pub["wd"] > 0) & pub["op"].isin(grokking["op"].unique())
                  & pub["lr"].isin(grokking["lr"].unique())]
        out["law"] = {"ours": _law(grokking), "published": _law(ref) if len(ref) else None,
                      "lrs": sorted(float(x) for x in grokking["lr"].unique())}
    return json_safe(out)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.3g}" if isinstance(v, float) and not float(v).is_integer() else str(int(v) if isinstance(v, float) else v)


def _law_line(law: dict | None) -> str:
    if not law:
        return "no published counterpart"
    if "error" in law:
        return f"no fit: {law['error']}"
    f, n, r = law["fit"], law["null"], law["rank"]
    return (f"α {f['alpha']:.2f} (R² {f['r2']:.2f}, n {f['n']}); fixed-onset null α {n['alpha']:.2f} (R² {n['r2']:.2f}); "
            f"rank ρ within op×lr {r['rho']:.2f} (p {r['p_value']:.3g}, n {r['n']})\n      {law['verdict']}")


def print_sweep_report(sweep_dir: str | Path, reference=None) -> dict:
    """Print the sweep's comparison (benchmarks/bench_curv_published.py report) and return it."""
    comp = sweep_comparison(sweep_dir, reference)
    cols = ["run", "baseline", "onset", "grok_50", "grok_90", "grok_95", "lead"]
    print("  ".join(f"{c:>26}" if c == "run" else f"{c:>8}" for c in cols))
    for r in comp["runs"]:
        print("  ".join(f"{r['run']:>26}" if c == "run" else f"{_fmt(r.get(c)):>8}" for c in cols))
    for g in comp["groups"]:
        o, p = g["ours"], g["published"] or {}
        print(f"\nlr {g['lr']:g} wd {g['wd']:g}: onset before grokking (>= 0.9) {o['onset_before_grokking']}/{o['grokked']} "
              f"grokked of {o['runs']} (published {p.get('onset_before_grokking', '–')}/{p.get('grokked', '–')} of "
              f"{p.get('runs', '–')}); leads {_fmt(o['lead_min'])}..{_fmt(o['lead_max'])} (published "
              f"{_fmt(p.get('lead_min'))}..{_fmt(p.get('lead_max'))}); first-3 baseline {_fmt(o['baseline_min'])}.."
              f"{_fmt(o['baseline_max'])} (published {_fmt(p.get('baseline_min'))}..{_fmt(p.get('baseline_max'))})")
    if "law" in comp:
        print(f"\nlead-time law over lr {comp['law']['lrs']} (wd > 0):")
        print(f"  ours:      {_law_line(comp['law']['ours'])}")
        print(f"  published: {_law_line(comp['law']['published'])}")
        print("  published paper (4 ops incl. mul, a²+b², not in the records): α 1.32, R² 0.97, n 24")
    return comp
