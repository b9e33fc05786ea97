"""Report sections for runs and sweeps on the published preset: the run beside the published records.

They read <run>/comparison.json and <sweep>/sweep_comparison.json (written by the pipeline or by
`headscreen grok compare`; headscreen/grokking/published/compare.py) and compute nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from headscreen.report.content import Section, Table, figure_to_png  # noqa: E402
from headscreen.report.figures import _new_figure, _wrap  # noqa: E402

EVENT_COLUMNS = ("baseline", "onset", "grok_50", "grok_90", "grok_95", "lead")


def comparison_figure(comp: dict, *, title: str) -> Figure:
    """Defect (left, log) and test accuracy (right) of the run over the published band (median, min–max
    over the published seeds of the same operation, lr and weight decay)."""
    fig = _new_figure(10, 3.8)
    ax_d, ax_a = fig.subplots(1, 2)
    band = comp["published"].get("band")
    run = comp["run"]["curve"]
    for ax, key, label in ((ax_d, "defect", "commutator defect (median of K)"), (ax_a, "test_acc", "test accuracy")):
        if band:
            steps = np.asarray(band["step"])
            ax.fill_between(steps, band[f"{key}_min"], band[f"{key}_max"], color="#999999", alpha=0.35,
                            label=f"published range ({len(comp['published']['seeds'])} seeds)")
            ax.plot(steps, band[f"{key}_median"], color="#555555", linewidth=1.2, label="published median")
        vals = np.array([np.nan if v is None else v for v in run[key]], dtype=float)
        ax.plot(run["step"], vals, color="#d62728", linewidth=1.4, label=f"this run (seed {comp['seed']})")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
    ax_d.set_yscale("log")
    ax_d.axhline(20, color="black", linestyle=":", linewidth=0.8, label="onset floor 20")
    ev = comp["run"]["events"]
    for ax in (ax_d, ax_a):
        if ev.get("onset") is not None:
            ax.axvline(ev["onset"], color="#d62728", linestyle=":", linewidth=1.2, label=f"onset ({ev['onset']})")
        if ev.get("grok_90") is not None:
            ax.axvline(ev["grok_90"], color="black", linewidth=1.2, label=f"test acc ≥ 0.9 ({ev['grok_90']})")
    handles, labels = {}, []
    for ax in (ax_d, ax_a):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def _rows(comp: dict) -> list[list]:
    rows = [["this run", comp["seed"], *[comp["run"]["events"].get(k) for k in EVENT_COLUMNS]]]
    rows += [["published", e.get("seed"), *[e.get(k) for k in EVENT_COLUMNS]] for e in comp["published"]["events"]]
    return rows


def comparison_section(run) -> Section | None:
    """The run's comparison.json as a figure and a table; None when the run has none."""
    path = Path(run.path) / "comparison.json"
    if not path.is_file():
        return None
    comp = json.loads(path.read_text())
    ev = comp["run"]["events"]
    sec = Section(key="grok_published", title="Beside the published records", data=comp,
                  intro=f"{comp['op']} at lr {comp['lr']:g}, weight decay {comp['weight_decay']:g}; rules: {comp['rules']}.")
    if comp.get("p") != comp.get("published_p"):
        sec.notices.append(f"this run is mod {comp.get('p')}, the published runs mod {comp.get('published_p')}: "
                           "the band is shown for orientation only")
    if not comp["published"]["events"]:
        sec.notices.append(f"the published records hold no run of {comp['op']} at lr {comp['lr']:g}, "
                           f"wd {comp['weight_decay']:g}: the run is shown alone")
    title = (f"onset {ev.get('onset')}, test accuracy ≥ 0.9 at {ev.get('grok_90')}, lead {ev.get('lead')} "
             f"(published seeds: {', '.join(str(e.get('lead')) for e in comp['published']['events']) or 'none'})")
    sec.figures.append(figure_to_png(comparison_figure(comp, title=title), f"{run.slug}-published",
                                     "defect and test accuracy over the published band"))
    sec.tables.append(Table(["source", "seed", *EVENT_COLUMNS], _rows(comp),
                            caption="events by the published rules (– = never)"))
    return sec


def _law_row(label: str, law: dict | None) -> list:
    if not law or "error" in law:
        return [label, None, None, None, None, None, None, (law or {}).get("error", "no counterpart")]
    f, n, r = law["fit"], law["null"], law["rank"]
    return [label, f["alpha"], f["r2"], f["n"], n["alpha"], n["r2"], r["p_value"], law["verdict"]]


def sweep_comparison_section(sweep_dir: Path) -> Section | None:
    """<sweep>/sweep_comparison.json as tables; None when absent."""
    path = Path(sweep_dir) / "sweep_comparison.json"
    if not path.is_file():
        return None
    comp = json.loads(path.read_text())
    sec = Section(key="grok_published_sweep", title="The sweep beside the published records", data=comp)
    cols = ["runs", "grokked", "onset_before_grokking", "lead_min", "lead_max", "baseline_min", "baseline_max"]
    rows = []
    for g in comp["groups"]:
        rows.append([f"lr {g['lr']:g} wd {g['wd']:g}", "ours", *[g["ours"].get(c) for c in cols]])
        rows.append(["", "published", *[(g["published"] or {}).get(c) for c in cols]])
    sec.tables.append(Table(["setting", "source", *cols], rows, caption="onset before grokking at test accuracy ≥ 0.9"))
    if "law" in comp:
        sec.tables.append(Table(["source", "α", "R²", "n", "null α", "null R²", "rank p", "verdict"],
                                [_law_row("ours", comp["law"]["ours"]), _law_row("published", comp["law"]["published"])],
                                caption=f"lead-time law over lr {comp['law']['lrs']} with its fixed-onset null"))
    return sec
