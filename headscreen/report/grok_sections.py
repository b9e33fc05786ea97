"""Report sections for grokking runs and sweeps (the tables of docs/run-format.md, "grok runs").

`grok_kind(path)` says whether a report argument is a grok run ("run"), a grok sweep ("sweep") or
neither (None); `grok_report(paths, generated_by)` builds the renderer-neutral Report that
render_html / render_md / render_json lay out, exactly as for screened series. A run without
analysis is read from the run (grok.json and the analysis tables) or, where it could not be written (an
unfinished or read-only run), taken from what the report pipeline prepared (report/inputs.py); nothing is
analysed here. Every number a section shows in a table is also in its `data` (report.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from headscreen.heads import head_label
from headscreen.report import grok_figures as gf
from headscreen.report.content import Section, Table, figure_to_png
from headscreen.report.inputs import ANALYSED_NOW, GrokAnalysis, ReportInputs
from headscreen.report.runinfo import slugify
from headscreen.rundir.jsonsafe import json_safe

TABLES = ("curves", "defect", "edge", "portrait", "fourier", "progress", "pca")
SCALARS = ("grok_step", "memorisation_step", "defect_onset_step", "defect_onset_rule", "lead_time",
           "gap_open_step", "commutator_peak_step", "final_train_acc", "final_test_acc", "key_frequencies",
           "fourier_gini", "n_snapshots")
SETTINGS = ("tasks", "p", "train_frac", "lr", "weight_decay", "batch_size", "steps", "seed", "snapshot_every",
            "defect_every")


def grok_kind(path: str | Path) -> str | None:
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            return "run" if json.loads(manifest.read_text()).get("kind") == "grok" else None
        except (OSError, json.JSONDecodeError):
            return None
    if (path / "sweep.json").is_file() or (path / "sweep.parquet").is_file():
        return "sweep"
    return None


@dataclass
class GrokRun:
    path: Path
    manifest: dict
    grok: dict
    tables: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    analysed_now: bool = False
    unfinished: bool = False  # training has not finished: the analysis is in memory, nothing was written
    slug: str = "run"  # prefix of this run's figure names (unique within a report)

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    @property
    def events(self) -> dict:
        return {k: self.grok.get(k) for k in gf.EVENT_STYLE}

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)


def load_grok_run(path: str | Path, inputs: ReportInputs) -> GrokRun:
    """A grok run's analysis as the report pipeline prepared it (report/inputs.py): grok.json and the
    analysis tables from the run, or in memory where they were not written (an unfinished or read-only run)."""
    path = Path(path)
    analysis: GrokAnalysis = inputs.need("grok", path)
    manifest = json.loads((path / "manifest.json").read_text())
    grok = analysis.grok if analysis.grok is not None else json.loads((path / "grok.json").read_text())
    tables = {n: pd.read_parquet(path / f"{n}.parquet") if (path / f"{n}.parquet").is_file() else None for n in TABLES}
    if analysis.tables is not None:  # in memory: the analysis tables come from it, the training tables from disk
        tables.update({n: analysis.tables.get(n) for n in TABLES if n not in ("curves", "defect")})
    return GrokRun(path=path, manifest=manifest, grok=grok, tables=tables, analysed_now=analysis.how in ANALYSED_NOW,
                   unfinished=analysis.how == "unfinished")


def unfinished_note(run: GrokRun) -> str:
    """The line that marks an unfinished run's report (title, findings)."""
    t = run.grok.get("trajectory") or {}
    return (f"UNFINISHED: trained to step {t.get('last_step')} of {run.config.get('steps')}; every section covers "
            "only the steps trained so far, and the 'final' accuracies are the last evaluated ones. Nothing "
            "was written to the run; rerun its `headscreen grok` command to finish it.")


def _label(run: GrokRun) -> str:
    c = run.config
    return (f"{'+'.join(c.get('tasks', ['?']))} p={c.get('p')} wd={c.get('weight_decay')} "
            f"lr={c.get('lr')} seed={c.get('seed')}")


# ----------------------------------------------------------------------------------------------
# sections of one run


def settings_section(run: GrokRun) -> Section:
    prov = run.manifest.get("provenance", {})
    data = {"training": {k: run.config.get(k) for k in SETTINGS}, "model": run.config.get("model"),
            "analysis": run.grok.get("settings", {}).get("analysis"), "provenance": prov}
    rows = [[k, v] for k, v in data["training"].items()] + [["model", run.config.get("model")]]
    rows += [[k, prov.get(k)] for k in ("git_commit", "python", "created", "torch") if k in prov]
    notices = (["grok.json was missing or computed from another trajectory; the run was analysed while building "
                "this report."] if run.analysed_now and not run.unfinished else [])
    return Section(key="grok_settings", title="Run settings and provenance", notices=notices,
                   intro=f"Run directory {run.path}.", tables=[Table(["Setting", "Value"], rows)],
                   data=json_safe(data))


def grok_events_section(run: GrokRun) -> Section:
    data = {k: run.grok.get(k) for k in SCALARS}
    data["defect_onsets"] = run.grok.get("defect_onsets")
    data["tasks"] = run.grok.get("tasks")
    rows = [[k, "none" if data[k] == [] else data[k]] for k in SCALARS]
    tables = [Table(["Quantity", "Value"], rows, caption="grok.json (steps are training steps; – = never)")]
    tasks = run.grok.get("tasks") or {}
    if len(tasks) > 1:
        cols = ["grok_step", "memorisation_step", "lead_time", "final_test_acc"]
        tables.append(Table(["task", *cols], [[t, *[e.get(c) for c in cols]] for t, e in tasks.items()],
                            caption="per task"))
    notes = [unfinished_note(run)] if run.unfinished else []
    notes += [f"analysis note: {n}" for n in run.grok.get("notes", [])]
    return Section(key="grok_summary", title="Grokking events", notices=notes, tables=tables, data=json_safe(data))


def _table_or_notice(run: GrokRun, name: str, sec: Section) -> pd.DataFrame | None:
    """The run's `name` table, or None with a notice on `sec` when it is missing or empty."""
    df = run.table(name)
    if df is None or df.empty:
        sec.notices.append(f"{name}.parquet is missing or empty.")
        return None
    return df


def curves_section(run: GrokRun) -> Section:
    sec = Section(key="grok_curves", title="Training curves")
    curves = _table_or_notice(run, "curves", sec)
    if curves is None:
        return sec
    g = run.grok.get("grok_step")
    title = (f"Test accuracy reaches the bar at step {g}" if g is not None else "Test accuracy never reaches the bar")
    sec.figures.append(figure_to_png(gf.training_curves(curves, run.events, title=title),
                                     f"{run.slug}-curves", "train and test accuracy and loss against step"))
    sec.data = {"grok_step": g, "memorisation_step": run.grok.get("memorisation_step")}
    return sec


def edge_section(run: GrokRun) -> Section:
    sec = Section(key="grok_edge", title="Spectral edge and commutator defect",
                  intro="Rolling W = 10 update-Gram statistics of the whole trunk (attention and MLP weights) and "
                        "the median commutator defect; vertical lines mark grokking, the gap opening and the "
                        "defect onset (definitions: docs/methods.md).")
    edge, defect = run.table("edge"), run.table("defect")
    ev = run.events
    lead = run.grok.get("lead_time")
    def say(v):
        return "never" if v is None else v

    title = (f"Defect onset at {say(ev['defect_onset_step'])}, gap opens at {say(ev['gap_open_step'])}, "
             f"grokking at {say(ev['grok_step'])} (lead time {say(lead)})")
    sec.figures.append(figure_to_png(gf.edge_and_defect(edge, defect, ev, title=title), f"{run.slug}-edge-defect",
                                     "trunk spectral edge and commutator defect against step"))
    e = run.grok.get("edge", {})
    heads = e.get("heads") or []
    rows = [["trunk", e.get("peak_step"), e.get("collapse_step"), ev["gap_open_step"]]]
    rows += [[head_label((h["layer"], h["head"])), h["peak_step"], h["collapse_step"], h["gap_open_step"]] for h in heads]
    sec.tables.append(Table(["scope", "σ₂/σ₃ peak step", "collapse step", "gap-open step"], rows,
                            caption=f"phases (transient: {e.get('transient_windows')} windows skipped)"))
    sec.data = json_safe({**ev, "lead_time": lead, "defect_onsets": run.grok.get("defect_onsets"),
                          "edge": e})
    return sec


def portrait_section(run: GrokRun) -> Section:
    sec = Section(key="grok_portrait", title="Phase portrait of layer 0 (W_Q, W_K)")
    pf = _table_or_notice(run, "portrait", sec)
    if pf is None:
        return sec
    peak = run.grok.get("commutator_peak_step")
    title = f"Smoothed commutator peaks at step {peak} (after memorisation)"
    sec.figures.append(figure_to_png(gf.phase_portraits(pf, "step", colour_label="training step", title=title),
                                     f"{run.slug}-portrait-step", "phase portraits coloured by step"))
    for col in [c for c in pf.columns if c.startswith("test_acc_")]:
        task = col.removeprefix("test_acc_")
        sec.figures.append(figure_to_png(
            gf.phase_portraits(pf, col, colour_label=f"test accuracy ({task})", title=f"{title}; colour: {task} test accuracy"),
            f"{run.slug}-portrait-acc-{slugify(task)}", f"phase portraits coloured by {task} test accuracy"))
    if not pf.loc[pf["head"] == -1, "square"].all():
        sec.notices.append("H·d_head ≠ d_model: the whole-layer commutator is undefined (NaN); per-head blocks shown.")
    sec.data = {"commutator_peak_step": peak}
    return sec


def fourier_section(run: GrokRun) -> Section | None:
    if run.grok.get("fourier_gini") is None and run.table("fourier") is None:
        return None  # a sequence task (dyck, scan): no modular embedding to analyse
    sec = Section(key="grok_fourier", title="Fourier modes of the embedding and progress measures")
    fourier, prog = _table_or_notice(run, "fourier", sec), run.table("progress")
    keys = run.grok.get("key_frequencies") or []
    if fourier is None:
        return sec
    last = fourier[fourier["step"] == fourier["step"].max()].sort_values("frequency")
    sec.figures.append(figure_to_png(
        gf.fourier_norms(last["frequency"].to_numpy(), last["norm"].to_numpy(), keys,
                         title=f"Key frequencies at step {int(last['step'].iloc[0])}: {keys or 'none'} "
                               f"(Gini {run.grok.get('fourier_gini', float('nan')):.2f})"),
        f"{run.slug}-fourier", "per-frequency norms of the embedding's Fourier components"))
    if prog is not None and not prog.empty:
        sec.figures.append(figure_to_png(gf.progress_measures(prog, run.events, title="Progress measures over training"),
                                         f"{run.slug}-progress", "Gini, weight norm and restricted/excluded loss"))
    sec.tables.append(Table(["frequency", "norm", "share"], last[["frequency", "norm", "share"]].values.tolist(),
                            caption="final snapshot"))
    sec.data = json_safe({"key_frequencies": keys, "fourier_gini": run.grok.get("fourier_gini"),
                          "final_norms": dict(zip(last["frequency"].tolist(), last["norm"].tolist(), strict=True))})
    return sec


def pca_section(run: GrokRun) -> Section:
    pca = run.grok.get("pca") or {}
    rows = [["PC1 share", pca.get("pc1_share")], ["mean ρ (adjacent-window PC1 |cos|)", pca.get("rho_mean")],
            ["basis", pca.get("basis")]]
    return Section(key="grok_pca", title="Trajectory PCA (backbone)", tables=[Table(["Quantity", "Value"], rows)],
                   data=json_safe(pca))


def _li2_sections():
    from headscreen.report.li2_sections import li2_section, window_section

    return (li2_section, window_section)


def _intervention_section(run: GrokRun) -> Section | None:
    from headscreen.report.grok_interventions import intervention_section

    return intervention_section(run)


def _published_section(run: GrokRun) -> Section | None:
    from headscreen.report.grok_compare import comparison_section

    return comparison_section(run)


RUN_SECTIONS = (settings_section, grok_events_section, curves_section, edge_section, portrait_section,
                fourier_section, pca_section, _intervention_section, *_li2_sections(),
                _published_section)  # a section may be None: left out


# ----------------------------------------------------------------------------------------------
# comparison: grokking against memorising (wd > 0 against wd 0, same seed)


def memorise_pairs(runs: list[GrokRun]) -> list[tuple[GrokRun, GrokRun]]:
    """(wd > 0 run, wd 0 run) with the same seed, tasks, p and lr."""
    def key(r):
        c = r.config
        return (c.get("seed"), tuple(c.get("tasks", [])), c.get("p"), c.get("lr"))

    zero = {key(r): r for r in runs if not r.config.get("weight_decay")}
    return [(r, zero[key(r)]) for r in runs if r.config.get("weight_decay") and key(r) in zero]


def pair_section(runs: list[GrokRun], prefix: str = "grok") -> Section:
    sec = Section(key="grok_pair", title="Grokking against memorising (weight decay against none, same seed)")
    pairs = memorise_pairs(runs)
    if not pairs:
        sec.notices.append("No pair of runs with the same seed, task and lr, one with weight decay and one without; "
                           "give both runs (e.g. `--wd 1` and `--wd 0`) to see the pair.")
        return sec
    cols = ["grok_step", "gap_open_step", "defect_onset_step", "lead_time", "final_test_acc"]
    rows, data = [], []
    for i, (g, m) in enumerate(pairs):
        panels = [(f"wd {r.config.get('weight_decay')}", {"events": r.events, "curves": r.table("curves"),
                                                         "edge": r.table("edge"), "defect": r.table("defect")})
                  for r in (g, m)]
        title = (f"seed {g.config.get('seed')}: wd {g.config.get('weight_decay')} groks at {g.grok.get('grok_step')}, "
                 f"wd 0 {'never groks' if m.grok.get('grok_step') is None else 'groks at ' + str(m.grok.get('grok_step'))}")
        sec.figures.append(figure_to_png(gf.pair_panels(panels, title=title), f"{prefix}-pair-{i + 1}",
                                         "test accuracy, trunk σ₂/σ₃ and defect of the pair"))
        for r in (g, m):
            rows.append([_label(r), *[r.grok.get(c) for c in cols]])
            data.append({"run": str(r.path), **{c: r.grok.get(c) for c in cols}})
    sec.tables.append(Table(["run", *cols], rows))
    sec.data = json_safe({"pairs": data})
    return sec
