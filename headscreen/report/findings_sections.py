"""The sections that lead the report: a findings summary, the findings check against the published
results (docs/methods.md), and the pre-identification analysis (preid.json / preid.parquet, read from the run
or as the report pipeline prepared it: report/inputs.py; nothing is computed here)."""

from __future__ import annotations

import pandas as pd

from headscreen.heads import head_label
from headscreen.report import timeline_figures
from headscreen.report.causal_sections import primary_record
from headscreen.report.content import Section, Table, figure_to_png, head_list, human_count
from headscreen.report.inputs import MissingReportInput
from headscreen.report.runinfo import Context, grid_shape
from headscreen.report.schema import bos_layers01_records, emergence_records, for_probe, validation_records
from headscreen.rundir.jsonsafe import json_safe


def preid_staleness(run, probe: str | None) -> str | None:
    """Why the run's preid.json / preid.parquet do not serve a report on `probe` (None when they do): missing,
    written before validation.json named a validated circuit, or computed for another probe. The report
    pipeline (pipelines/report_prep.py) computes the analysis first where this is not None."""
    doc = run.preid_doc
    validated = isinstance(run.validation, dict) and run.validation.get("status") == "done"
    if doc is not None and validated and doc.get("circuit_source") != "validated":
        return "preid.json predates validation.json"
    if doc is not None and not validated and probe is not None and doc.get("probe") != probe:
        return f"preid.json is for the {doc.get('probe')} probe"
    if doc is None or run.preid is None:
        return "preid.json / preid.parquet are not in the run"
    return None


def preid_of(ctx: Context) -> tuple[dict | None, pd.DataFrame | None, str | None]:
    """(preid.json document, preid.parquet table, notice): the analysis the report pipeline prepared in memory,
    else the run's files. Files that do not serve (preid_staleness) and nothing prepared: `MissingReportInput`."""
    run = ctx.run
    prepared = ctx.inputs.preid.get(ctx.inputs.key(run.path))
    if prepared is not None:
        return prepared.doc, prepared.table, prepared.notice
    why = preid_staleness(run, ctx.probe)
    if why is None:
        return run.preid_doc, run.preid, None
    if run.classes is None:
        return None, None, None
    raise MissingReportInput(f"{run.path}: {why}, and the pre-identification was not prepared; render the report "
                             "with `headscreen report` (pipelines.report.report), which computes it first")


def _fmt_step(step, tokens: dict) -> str:
    if step is None:
        return "–"
    t = tokens.get(int(step))
    return f"step {int(step)}" + (f" ({human_count(t)} tokens)" if t else "")


def _selectivities(ctx: Context, heads, column: str) -> str:
    c = ctx.of_probe(ctx.run.classes)
    if c is None:
        return head_list(heads)
    at = c[c["step"] == ctx.step].set_index(["layer", "head"])
    parts = []
    for layer, head in heads:
        v = at[column].get((layer, head)) if column in at else None
        parts.append(head_label((layer, head)) + (f" ({v:.0f}×)" if v is not None and pd.notna(v) else ""))
    return ", ".join(parts) or "none"


def _emerged(ctx: Context, heads, cls: str) -> str:
    if ctx.run.circuits is None:
        return "–"
    em = {(r["layer"], r["head"]): r["step"] for r in for_probe(emergence_records(ctx.run.circuits), ctx.probe)
          if r["class"] == cls}
    steps = sorted((em.get(tuple(h)), tuple(h)) for h in heads if em.get(tuple(h)) is not None)
    if not steps:
        return "no head stays in the class to the last checkpoint"
    return "; ".join(f"{head_label(h)} at {_fmt_step(s, ctx.tokens)}" for s, h in steps)


def _ablation(ctx: Context) -> tuple[str, dict | None]:
    recs = validation_records(ctx.run.validation) if isinstance(ctx.run.validation, dict | list) else []
    rec = primary_record(recs, ctx.step, ctx.probe)
    if rec is None:
        return "not validated (run `headscreen validate`)", None
    test = (rec.get("tests") or {}).get(rec["metric"]) or {}
    drop, null = test.get("observed_drop"), test.get("null_mean_drop")
    ratio = rec["effect_ratio"]
    parts = [f"{rec['ablation']} ablation of {head_list(rec['circuit'])} at step {rec['step']}"]
    if drop is not None:
        parts.append(f"{rec['metric']} drop {drop:.3g} vs {null:.3g} for matched-random sets")
    parts.append(f"effect ratio {ratio:.3g}" if ratio is not None else "effect ratio undefined (mean random drop ≤ 0)")
    if rec["p_value"] is not None:
        n = rec["n_draws"]
        parts.append(f"p = {rec['p_value']:.3g} ({n} matched-random set{'' if n == 1 else 's'})")
    return "; ".join(parts), rec


def _preid_sentence(doc: dict | None) -> str:
    if doc is None:
        return "not computed (needs classes.parquet and a spectral table)"
    if doc.get("status") != "done":
        return f"not tested: {doc.get('reason', doc.get('status'))}"
    best, null = doc.get("earliest"), doc["null"]
    if best is None:
        alpha = doc["settings"]["alpha"]
        top = max((r for r in doc["metrics"] if r["max_auc_before"] is not None), default=None,
                  key=lambda r: r["max_auc_before"])
        seen = ("" if top is None else f"; best AUC before emergence {top['max_auc_before']:.2g} ({top['metric']}, "
                f"{'raw' if top['scope'] == 'raw' else 'within-layer z'}, step {top['step_of_max_auc']})")
        if null["p_floor"] >= alpha:
            return (f"not testable at p < {alpha:g}: the within-layer null has only {null['n_labelings']} relabellings "
                    f"(p ≥ {null['p_floor']:.2g}); no metric separates it{seen}")
        return f"no metric separates it before emergence{seen}"
    if best["lead_steps"] is None:  # the circuit never reaches the threshold on the probe
        lead = "with no emergence to lead (no circuit head reaches the induction threshold)"
    else:
        lead = f"{best['lead_steps']:.0f} steps" + (f" ({human_count(best['lead_tokens'])} tokens)"
                                                     if best.get("lead_tokens") else "") + " before emergence"
    scope = "raw" if best["scope"] == "raw" else "within-layer z"
    rel = doc.get("earliest_layer_z")
    within = ("no metric separates it within its layer" if rel is None else
              f"within its layer, {rel['metric']} from step {rel['earliest_separating_step']}")
    return (f"{best['metric']} ({scope}) separates it from step {best['earliest_separating_step']}, {lead}"
            f"; family-wise p = {best['p_family']:.2g} (same-layer relabellings separating as early); {within}")


def findings_summary_section(ctx: Context) -> Section:
    sec = Section(key="summary", title="Findings summary",
                  intro="What this run found, at a glance; the sections below hold the evidence and provenance is last.")
    at = ctx.circuit_at_step()
    if at is None:
        sec.notices.append(f"circuits.json records no circuits at step {ctx.step}: run `headscreen screen`."
                           if ctx.run.circuits is None or ctx.step is None else
                           f"circuits.json records no circuits at step {ctx.step}.")
        return sec
    probe = f", {ctx.probe} probe" if ctx.probe else ""
    rows = [[f"Induction circuit (step {ctx.step}{probe})", _selectivities(ctx, at["induction"], "induction_selectivity")],
            ["Induction heads emerged", _emerged(ctx, at["induction"], "induction")]]
    ablation, rec = _ablation(ctx)
    rows.append(["Ablation of the circuit", ablation])
    doc, _, _ = preid_of(ctx)
    rows.append(["Spectral pre-identification", _preid_sentence(doc)])
    rows += [[f"Previous-token circuit (step {ctx.step})", _selectivities(ctx, at["previous"], "best_selectivity")],
             ["Previous-token heads emerged", _emerged(ctx, at["previous"], "previous")],
             [f"BOS heads (step {ctx.step})", _selectivities(ctx, at["bos"], "best_selectivity")],
             ["BOS heads in layers 0–1", _bos_sentence(ctx)[0]]]
    sec.tables.append(Table(columns=["", "Finding"], rows=rows))
    sec.data = {"step": ctx.step, "probe": ctx.probe, "circuits": {k: [list(h) for h in at[k]] for k in
                                                                   ("induction", "previous", "bos")},
                "ablation": json_safe(rec) if rec else None,
                "preid": {k: doc.get(k) for k in ("status", "earliest", "emergence_step", "circuit", "circuit_source")}
                if doc else None}
    return sec


def _bos_sentence(ctx: Context) -> tuple[str, list[dict]]:
    if ctx.run.circuits is None:
        return "not screened", []
    recs = bos_layers01_records(ctx.run.circuits)
    broken = [r for r in recs if r["total"]]
    n_ckpt = len({r["step"] for r in recs})
    if not recs:
        return "not recorded", []
    if not broken:
        return f"none at any of {n_ckpt} checkpoints on any probe", []
    by_probe: dict = {}
    for r in broken:
        by_probe.setdefault(r["probe"], []).append(r["step"])
    parts = [f"{probe or 'all'} probe: {len(s)} of {n_ckpt} checkpoints (step {_steps(s)})" for probe, s in by_probe.items()]
    clean = sorted({str(r["probe"]) for r in recs if r["probe"] is not None} - {str(p) for p in by_probe})
    if clean:
        parts.append(f"none on the {', '.join(clean)} probe{'s' if len(clean) > 1 else ''}")
    return "; ".join(parts), broken


def _steps(steps: list[int], limit: int = 8) -> str:
    return ", ".join(map(str, steps[:limit])) + (f", … ({len(steps) - limit} more)" if len(steps) > limit else "")


# ------------------------------------------------------------------------------------------------ findings check


def _check_induction(ctx: Context) -> list | None:
    at = ctx.circuit_at_step()
    if at is None:
        return ["3–4-head induction circuit at ≥ 50×", "cannot test", "no circuits.json at the report step"]
    n = len(at["induction"])
    verdict = "held" if 3 <= n <= 4 else "not held"
    thr = ctx.thresholds["induction_circuit"]
    return ["3–4-head induction circuit at ≥ 50×", verdict,
            f"{n} head{'s' if n != 1 else ''} ≥ {thr:g}× at step {ctx.step}: "
            + _selectivities(ctx, at["induction"], "induction_selectivity")]


def _check_bos(ctx: Context) -> list | None:
    finding = "no BOS heads in layers 0 and 1"
    text, broken = _bos_sentence(ctx)
    if ctx.run.circuits is None:
        return [finding, "cannot test", "not screened"]
    shape = grid_shape(ctx.run)
    if shape is not None and shape[0] <= 2:
        return [finding, "cannot test", f"the model has {shape[0]} layers, so layers 0 and 1 are all of it; observed: {text}"]
    return [finding, "not held" if broken else "held", text]


def _check_preid(ctx: Context) -> list | None:
    finding = "the spectral signal pre-identifies the circuit"
    doc, _, _ = preid_of(ctx)
    if doc is None or doc.get("status") != "done":
        return [finding, "cannot test", _preid_sentence(doc)]
    best, alpha = doc.get("earliest"), doc["settings"]["alpha"]
    if best is None:
        verdict = "cannot test" if doc["null"]["p_floor"] >= alpha else "not held"
    else:
        verdict = "held" if best["p_family"] < alpha else "not significant"
    return [finding, verdict, _preid_sentence(doc)]


FINDING_CHECKS = (_check_induction, _check_bos, _check_preid)  # each returns [finding, verdict, evidence] or None


def findings_section(ctx: Context) -> Section:
    sec = Section(key="findings", title="Findings check",
                  intro="Each published finding this run's data can test (docs/methods.md), with the verdict and "
                        "the figure behind it. 'cannot test' says why the run cannot answer.")
    rows = [r for r in (check(ctx) for check in FINDING_CHECKS) if r is not None]
    sec.tables.append(Table(columns=["Published finding", "Verdict", "This run"], rows=rows))
    sec.data = {"checks": [{"finding": f, "verdict": v, "evidence": e} for f, v, e in rows]}
    return sec


# ------------------------------------------------------------------------------------------------ pre-identification


def preid_section(ctx: Context) -> Section:
    sec = Section(key="preid", title="Pre-identification: does a spectral metric single out the circuit early?",
                  intro="For each spectral metric and checkpoint: the ROC AUC of the circuit heads against every "
                        "other head, and p from relabelling the circuit within its layers (each layer keeps its "
                        "number of circuit heads). A metric separates the circuit when AUC ≥ the bar and p < α at "
                        "consecutive checkpoints before emergence; the family-wise p is the share of relabellings that "
                        "some metric separates as early (docs/methods.md, Pre-identification).")
    doc, table, notice = preid_of(ctx)
    if notice:
        sec.notices.append(notice)
    if doc is None:
        sec.notices.append("The pre-identification needs classes.parquet: run `headscreen screen` on this run.")
        return sec
    if doc.get("status") != "done":
        sec.notices.append(f"Not computed: {doc.get('reason', doc.get('status'))}.")
        sec.data = {"status": doc.get("status")}
        return sec
    st = doc["settings"]
    emergence = doc.get("emergence_step")
    sec.data = json_safe({k: doc.get(k) for k in ("probe", "circuit", "circuit_source", "circuit_note", "emergence_step",
                                                  "emergence_tokens", "settings", "null", "earliest", "earliest_raw",
                                                  "earliest_layer_z", "metrics")})
    sec.intro += (f" Circuit: {head_list(doc['circuit'])} ({doc['circuit_source']}: {doc['circuit_note']}); "
                       f"emergence = first checkpoint any of them reaches the induction threshold: "
                       f"{_fmt_step(emergence, ctx.tokens)}; null: {doc['null']['kind']}, "
                  f"{doc['null']['n_labelings']} possible.")
    title = f"Pre-identification of {head_list(doc['circuit'])}: {_preid_sentence(doc)}"
    fig = timeline_figures.preid_auc(table, emergence_step=emergence, auc_bar=st["auc_bar"], title=title)
    sec.figures.append(figure_to_png(fig, ctx.figure_name("preid"), "ROC AUC of the circuit heads per spectral metric "
                                                                   "and checkpoint, raw and within-layer"))
    rows = [[r["metric"], "raw" if r["scope"] == "raw" else "within-layer z", r["earliest_separating_step"],
             r["lead_steps"], human_count(r["lead_tokens"]), r["p_family"], r["max_auc_before"], r["step_of_max_auc"],
             r["p_at_max_auc"]] for r in doc["metrics"]]
    sec.tables.append(Table(
        columns=["Metric", "Scope", "Separates from step", "Lead (steps)", "Lead (tokens)", "Family-wise p",
                 "Best AUC before emergence", "at step", "p there"], rows=rows,
        caption=f"Per metric: bar AUC ≥ {st['auc_bar']:g}, p < {st['alpha']:g}, for {st['persist']} checkpoints in a "
                f"row; {doc['null']['n_perm']} relabellings (seed {st['seed']}). Every step's AUC, precision@k and "
                "p are in preid.parquet. Dots in the figure: AUC ≥ bar and p < α at that checkpoint."))
    return sec
