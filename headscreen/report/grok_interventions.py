"""Report sections of the gradient interventions (docs/methods.md, "Grokking II: interventions"):
the invariance ratio ρ of one run against its random-basis control, and the dose-response of a sweep
over the intervention strength. Both return None when there is nothing to show, and the grok report
leaves them out."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from headscreen.report.content import Section, Table, figure_to_png  # noqa: E402
from headscreen.report.figures import _new_figure  # noqa: E402
from headscreen.rundir.jsonsafe import json_safe  # noqa: E402


def rho_figure(rho: pd.DataFrame, events: dict, *, title: str):
    fig = _new_figure(7.5, 3.4)
    ax = fig.subplots()
    ax.plot(rho.step, rho.rho, color="#d62728", label="ρ against the trajectory-PCA basis")
    m, s = rho.rho_random_mean.to_numpy(), rho.rho_random_std.to_numpy()
    ax.plot(rho.step, m, color="#7f7f7f", label="ρ against random bases (mean ± sd)")
    ax.fill_between(rho.step, m - s, m + s, color="#7f7f7f", alpha=0.25)
    if events.get("grok_step") is not None:
        ax.axvline(events["grok_step"], color="black", linewidth=1.2, label=f"grokking ({events['grok_step']})")
    ax.set_xlabel("step")
    ax.set_ylabel("ρ = ‖δ⊥‖ / ‖δ‖")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    return fig


def intervention_section(run) -> Section | None:
    iv = run.grok.get("intervention")
    path = run.path / "intervention.parquet"
    if not iv or not path.is_file():
        return None
    rho = pd.read_parquet(path)
    sec = Section(key="grok_intervention", title="Gradient intervention and invariance ratio",
                  intro=f"{iv['kind']} with strength {iv['strength']} (transverse factor {iv['factor']:g}) from step "
                        f"{iv['start']}, relative to the top-{iv['k']} trajectory-PCA basis of the {iv['window']} "
                        "updates before it; ρ of each recorded update against that basis and against "
                        f"{iv['random_bases']} random bases (docs/methods.md).")
    keys = ["kind", "strength", "factor", "start", "k", "rho_median", "rho_random_median", "rho_ratio_median", "n_rho"]
    sec.tables.append(Table(["Quantity", "Value"], [[k, iv.get(k)] for k in keys]))
    if len(rho):
        title = (f"median ρ {iv['rho_median']:.3f} against random {iv['rho_random_median']:.3f}"
                 if iv.get("rho_median") is not None else "invariance ratio")
        sec.figures.append(figure_to_png(rho_figure(rho, run.events, title=title), f"{run.slug}-rho",
                                         "invariance ratio against the step"))
    sec.data = json_safe(iv)
    return sec


def dose_response_section(df: pd.DataFrame, slug: str) -> Section | None:
    """Grok step and final test accuracy against the intervention strength (sweeps over it)."""
    if "intervention_strength" not in df or df["intervention"].eq("none").all() or df["intervention_strength"].nunique() < 2:
        return None
    cols = ["intervention", "intervention_strength", "seed", "lr", "grok_step", "defect_onset_step", "final_test_acc",
            "rho_ratio_median"]
    d = df[cols].sort_values(["intervention", "intervention_strength", "seed"])
    fig = _new_figure(9, 3.4)
    a1, a2 = fig.subplots(1, 2)
    for kind, g in d.groupby("intervention"):
        steps = g["grok_step"].astype(float)
        never = steps.isna()
        top = float(np.nanmax(df["grok_step"].astype(float))) if df["grok_step"].notna().any() else 1.0
        a1.plot(g["intervention_strength"][~never], steps[~never], "o-", label=f"{kind}: grok step")
        a1.plot(g["intervention_strength"][never], np.full(int(never.sum()), top * 1.1), "x", color="#d62728",
                label=f"{kind}: never groks")
        a2.plot(g["intervention_strength"], g["final_test_acc"], "o-", label=kind)
    a1.set_xlabel("strength")
    a1.set_ylabel("grokking step")
    a2.set_xlabel("strength")
    a2.set_ylabel("final test accuracy")
    a1.legend(fontsize=8)
    fig.suptitle("dose-response of the gradient intervention", fontsize=10)
    rows = [[None if pd.isna(v) else v for v in r] for r in d.astype(object).values.tolist()]
    sec = Section(key="grok_dose_response", title="Intervention dose-response", tables=[Table(cols, rows)],
                  data={"runs": json_safe(d.astype(object).where(d.notna(), None).to_dict("records"))})
    sec.figures.append(figure_to_png(fig, f"{slug}-dose-response", "grok step and final accuracy against strength"))
    return sec
