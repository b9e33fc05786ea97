"""Sections over the whole checkpoint series: fingerprint curves, lead times, in-context copying."""

from __future__ import annotations

import numpy as np
import pandas as pd

from headscreen.heads import head_label
from headscreen.report import figures
from headscreen.report.content import Section, Table, figure_to_png, human_count
from headscreen.report.runinfo import Context
from headscreen.report.schema import emergence_records, for_probe, lead_time_records
from headscreen.report.screen_sections import missing_notice
from headscreen.rundir.jsonsafe import json_safe

FINGERPRINT_METRICS = ("ratio_12", "ratio_23", "kstar", "pr", "update_norm")
_PREFERRED_PR_PROBES = ("retrieval", "repeated", "synthetic")


def _circuit_heads(ctx: Context) -> dict[tuple[int, int], str]:
    """Heads to highlight: the induction and previous-token circuits at the report step."""
    out: dict[tuple[int, int], str] = {}
    rec = ctx.circuit_at_step()
    if rec is not None:
        for cls in ("previous", "induction"):
            for h in rec[cls]:
                out[h] = f"{head_label(h)} ({cls})"
    elif ctx.run.classes is not None and "in_induction_circuit" in ctx.run.classes.columns:
        c = ctx.run.classes
        sel = c[(c["step"] == ctx.step) & c["in_induction_circuit"].fillna(False).astype(bool)]
        out = {(int(a), int(b)): f"{head_label((a, b))} (induction)" for a, b in zip(sel["layer"], sel["head"], strict=True)}
    return out


def pr_probe(df: pd.DataFrame) -> str:
    probes = [str(p) for p in df["probe"].unique()]
    return next((p for p in _PREFERRED_PR_PROBES if p in probes), sorted(probes)[0])


def fingerprints_section(ctx: Context) -> Section:
    sec = Section(key="fingerprints", title="Spectral fingerprints: circuit heads against other heads",
                  intro="Update-Gram statistics (docs/methods.md#update-gram-and-spectral-edge, docs/methods.md#per-head-update-gram-fingerprint) and the activation participation ratio (docs/methods.md#participation-ratio) "
                        "per checkpoint. Coloured lines: circuit heads at the report step; grey: every other head.")
    fp, part = ctx.run.fingerprints, ctx.run.participation
    if fp is None and part is None:
        sec.notices.append(missing_notice("fingerprints.parquet and participation.parquet", ctx, "Fingerprint curves"))
        return sec
    status = ctx.run.manifest.get("fingerprints")
    if fp is None and isinstance(status, dict) and status.get("reason"):
        sec.notices.append(f"The screen skipped the update-Gram fingerprints: {status['reason']}")
    panels: dict[str, pd.DataFrame | None] = {}
    probe = None
    for metric in FINGERPRINT_METRICS:
        if metric == "pr":
            if part is None or part.empty:
                panels[metric] = None
                continue
            probe = ctx.probe if ctx.probe in set(part["probe"].astype(str)) else pr_probe(part)
            sub = part[part["probe"] == probe]
            panels[metric] = pd.DataFrame({"x": sub["step"], "layer": sub["layer"], "head": sub["head"],
                                           "value": sub["pr"]})
        else:
            sub = fp[fp["metric"] == metric] if fp is not None else None
            panels[metric] = None if sub is None or sub.empty else pd.DataFrame(
                {"x": sub["step"], "layer": sub["layer"], "head": sub["head"], "value": sub["value"]})
    for name, file in (("fingerprints.parquet", fp), ("participation.parquet", part)):
        if file is None and not (name == "fingerprints.parquet" and isinstance(status, dict) and status.get("reason")):
            sec.notices.append(missing_notice(name, ctx, "Part of the fingerprint curves"))
    absent = [m for m, df in panels.items() if df is None]
    if absent and len(absent) < len(panels):
        sec.notices.append("Not stored in this run: " + ", ".join(absent) + ".")
    highlight = _circuit_heads(ctx)
    if not highlight:
        sec.notices.append(f"No circuit heads at step {ctx.step}: every head is drawn as 'other'.")
    sec.data = {"highlight": [list(h) for h in sorted(highlight)], "pr_probe": probe, "metrics": {}}
    for metric, df in panels.items():
        if df is None:
            continue
        sec.data["metrics"][metric] = _metric_summary(df, highlight)
    title = _fingerprint_headline(panels.get("pr"), highlight, len(_all_heads(panels)), ctx.step)
    fig = figures.fingerprint_curves(panels, highlight=highlight, x_label="training step", title=title)
    sec.figures.append(figure_to_png(fig, ctx.figure_name("fingerprints"),
                                     "Fingerprint curves of circuit heads against the other heads"))
    return sec


def _all_heads(panels) -> set:
    heads = set()
    for df in panels.values():
        if df is not None:
            heads.update(zip(df["layer"].astype(int), df["head"].astype(int), strict=True))
    return heads


def _metric_summary(df: pd.DataFrame, highlight) -> dict:
    is_hl = np.array([(int(a), int(b)) in highlight for a, b in zip(df["layer"], df["head"], strict=True)], dtype=bool)
    others = df[~is_hl].groupby("x")["value"].median()
    heads = {}
    for h in sorted(highlight):
        sub = df[(df["layer"] == h[0]) & (df["head"] == h[1])].sort_values("x")
        heads[head_label(h)] = {"steps": json_safe(sub["x"].tolist()), "values": json_safe(sub["value"].tolist())}
    return {"circuit_heads": heads,
            "other_heads_median": {"steps": json_safe(others.index.tolist()), "values": json_safe(others.tolist())}}


def _fingerprint_headline(pr: pd.DataFrame | None, highlight: dict, n_heads: int, step) -> str:
    """Where the circuit heads' PR ends against the other heads (the induction heads if there are any)."""
    n_other = n_heads - len(highlight)
    if not highlight:
        return f"No circuit heads at step {step}: median and 10–90% band of all {n_heads} heads"
    generic = f"{len(highlight)} circuit heads (colour) against the other {n_other} heads (grey)"
    if pr is None:
        return generic
    focus = {h for h, label in highlight.items() if "induction" in label} or set(highlight)
    kind = "induction-circuit" if any("induction" in highlight[h] for h in focus) else "circuit"
    last = pr["x"].max()
    at = pr[pr["x"] == last]
    heads = list(zip(at["layer"].astype(int), at["head"].astype(int), strict=True))
    is_focus = np.array([h in focus for h in heads], dtype=bool)
    is_other = np.array([h not in highlight for h in heads], dtype=bool)
    if not is_focus.any() or not is_other.any():
        return generic
    q90 = float(np.quantile(at.loc[is_other, "value"], 0.9))
    above = int((at.loc[is_focus, "value"] > q90).sum())
    return (f"At step {last}, the PR of {above} of {int(is_focus.sum())} {kind} heads is above the 90th percentile "
            f"of the {int(is_other.sum())} non-circuit heads")


def lead_times_section(ctx: Context) -> Section:
    sec = Section(key="lead_times", title="Lead time: spectral onset against behavioural emergence",
                  intro="Lead = emergence step − spectral onset step; a positive lead means the fingerprint moved "
                        "before the head became selective.")
    if ctx.run.circuits is None:
        sec.notices.append(missing_notice("circuits.json", ctx, "The lead-time table"))
        return sec
    records = for_probe(lead_time_records(ctx.run.circuits), ctx.probe)
    if not records:
        records = _leads_from_onsets(ctx)
        if records:
            sec.notices.append("circuits.json has no 'lead_times'; the leads below are emergence step (circuits.json) "
                               "− onset step (onsets.parquet).")
    if not records:
        sec.notices.append(_no_lead_reason(ctx))
        return sec
    for r in records:
        if "lead_tokens" not in r:
            a, b = ctx.tokens.get(_int(r["onset_step"])), ctx.tokens.get(_int(r["emergence_step"]))
            r["lead_tokens"] = b - a if a is not None and b is not None else None
    leads = [r["lead_steps"] for r in records if r["lead_steps"] is not None and r.get("class", "induction") == "induction"]
    sec.data = {"probe": ctx.probe, "records": records, "median_lead_steps_induction": float(np.median(leads)) if leads else None,
                "n_heads_with_lead": len(leads)}
    sec.tables.append(Table(
        columns=["Head", "Class", "Metric", "Spectral onset (step)", "Emergence (step)", "Lead (steps)", "Lead (tokens)"],
        rows=[[head_label((r["layer"], r["head"])), r.get("class"), r["metric"], r["onset_step"], r["emergence_step"],
               r["lead_steps"], human_count(r["lead_tokens"])] for r in records],
        caption=(f"Median lead over {len(leads)} induction heads: {sec.data['median_lead_steps_induction']:g} steps."
                 if leads else "No induction head has both a spectral onset and an emergence step.")))
    return sec


def _no_lead_reason(ctx: Context) -> str:
    onsets = ctx.run.onsets
    n_onsets = 0 if onsets is None else int(onsets["onset_step"].notna().sum())
    n_emerged = sum(r["step"] is not None for r in for_probe(emergence_records(ctx.run.circuits), ctx.probe))
    if "lead_times" in ctx.run.circuits and (n_onsets == 0 or n_emerged == 0):
        return (f"No lead times: a lead needs a head with both a spectral onset and an emergence step; this run "
                f"has {n_onsets} spectral onsets (onsets.parquet) and {n_emerged} emerged (head, class) pairs.")
    if "lead_times" in ctx.run.circuits:
        return "No lead times: no head that emerged has a spectral onset."
    return ("No lead times: circuits.json has no 'lead_times' and onsets.parquet or the emergence steps are "
            "missing. Re-run `headscreen screen` to compute them.")


def _int(v):
    return None if v is None else int(v)


def _leads_from_onsets(ctx: Context) -> list[dict]:
    onsets = ctx.run.onsets
    if onsets is None:
        return []
    out = []
    for e in for_probe(emergence_records(ctx.run.circuits), ctx.probe):
        if e["step"] is None:
            continue
        rows = onsets[(onsets["layer"] == e["layer"]) & (onsets["head"] == e["head"])]
        for metric, onset in zip(rows["metric"], rows["onset_step"], strict=True):
            onset = None if pd.isna(onset) else float(onset)
            emerged = None if e["step"] is None else float(e["step"])
            lead = emerged - onset if onset is not None and emerged is not None else None
            out.append({"layer": e["layer"], "head": e["head"], "metric": str(metric), "class": e["class"],
                        "onset_step": onset, "emergence_step": emerged, "lead_steps": lead})
    return out


def copying_section(ctx: Context) -> Section:
    sec = Section(key="copying", title="In-context copying",
                  intro="Loss on the first and on the second occurrence of a repeated span. A checkpoint is flagged "
                        "when the model copies in context although no head reaches the induction-circuit threshold.")
    df = ctx.run.copying
    if df is None:
        sec.notices.append(missing_notice("copying.parquet", ctx, "The in-context-copying table"))
        return sec
    df = df.sort_values("step")
    cols = [c for c in ("step", "loss_first", "loss_second", "loss_gap", "max_induction_selectivity",
                        "noncanonical_copying") if c in df.columns]
    records = [json_safe(dict(zip(cols, row, strict=True))) for row in df[cols].itertuples(index=False)]
    for r in records:
        if "noncanonical_copying" in r and r["noncanonical_copying"] is not None:
            r["noncanonical_copying"] = bool(r["noncanonical_copying"])
    flagged = [r["step"] for r in records if r.get("noncanonical_copying")]
    sec.data = {"records": records, "noncanonical_steps": flagged}
    labels = {"step": "Step", "loss_first": "Loss, first (nats)", "loss_second": "Loss, second (nats)",
              "loss_gap": "Loss gap (nats)", "max_induction_selectivity": "Max induction selectivity (×)",
              "noncanonical_copying": "Copying without canonical heads"}
    sec.tables.append(Table(columns=[labels[c] for c in cols], rows=[[r[c] for c in cols] for r in records],
                            caption=(f"{len(flagged)} checkpoint{' copies' if len(flagged) == 1 else 's copy'} "
                                     "without canonical induction heads"
                                     + (": step " + ", ".join(map(str, flagged)) if flagged else "")),
                            folded=True))  # per checkpoint: the figure above carries it
    if {"loss_first", "loss_second"} <= set(df.columns) and len(df) >= 2:
        first, second = df["loss_first"].to_numpy(float), df["loss_second"].to_numpy(float)
        flags = df["noncanonical_copying"].fillna(False).to_numpy(bool) if "noncanonical_copying" in df else np.zeros(len(df), bool)
        last_gap = first[-1] - second[-1]
        title = (f"At step {int(df['step'].iloc[-1])} the second occurrence costs {abs(last_gap):.2f} nats "
                 f"{'less' if last_gap >= 0 else 'more'} than the first; "
                 f"{len(flagged)} checkpoint{' copies' if len(flagged) == 1 else 's copy'} without canonical induction heads")
        fig = figures.copying_losses(df["step"].to_numpy(float), first, second, flagged=flags, title=title)
        sec.figures.append(figure_to_png(fig, ctx.figure_name("copying"), "Loss on first and second occurrence per step"))
    return sec
