"""Sections built from causal validation (docs/methods.md#causal-validation): ablation with its null distribution, and patching."""

from __future__ import annotations

import numpy as np
import pandas as pd

from headscreen.heads import head_label
from headscreen.report import figures
from headscreen.report.content import Section, Table, figure_to_png, head_list
from headscreen.report.runinfo import Context
from headscreen.report.schema import validation_records, validation_status
from headscreen.rundir.jsonsafe import json_safe

MAX_FIGURES = 4  # per section: the latest validated (checkpoint, probe, ablation) groups
_PREFERRED_METRICS = ("top1", "top5", "logit_diff", "target_logit", "cross_entropy")
_KIND_ORDER = {"zero": 0, "mean": 1, "resample": 2}


def not_validated_notice(ctx: Context, files: str) -> str:
    return (f"Validation has not been run for this run: {files} not in {ctx.run.path}. "
            f"Run `headscreen validate` on this run to add the ablation effects, their null distributions "
            f"and the patching scores.")


def _nothing_validated(ctx: Context) -> str | None:
    """The reason validation.json gives for having validated nothing, if it gives one."""
    status, reason = validation_status(ctx.run.validation)
    if ctx.run.validation is None or status == "done":
        return None
    doc = ctx.run.validation if isinstance(ctx.run.validation, dict) else {}
    where = f" at step {doc['step']}" if doc.get("step") is not None else ""
    return f"Validation ran{where} but did not ablate anything ({status}): {reason or 'no reason recorded'}."


def condition_role(name: str) -> str:
    """clean | circuit | random | upper | single | other, from a condition name of validation.parquet."""
    n = str(name).lower()
    if n in ("clean", "none", "baseline", "unablated"):
        return "clean"
    if n in ("circuit", "circuit_ablated"):
        return "circuit"
    if "random" in n or "null" in n:
        return "random"
    if "upper" in n or "all_heads" in n or "layers" in n:
        return "upper"
    if n.startswith(("single", "head")):
        return "single"
    return "other"


def _metric_order(metrics) -> list[str]:
    metrics = [str(m) for m in metrics]
    return [m for m in _PREFERRED_METRICS if m in metrics] + sorted(set(metrics) - set(_PREFERRED_METRICS))


def primary_record(records: list[dict], step: int | None, probe: str | None) -> dict | None:
    """The record the comparison quotes: at `step` (else the latest), on `probe` if validated, zero-ablation first."""
    if not records:
        return None
    at = step if any(r["step"] == step for r in records) else max(r["step"] for r in records)
    cands = [r for r in records if r["step"] == at]
    cands.sort(key=lambda r: (r["probe"] not in (None, probe), _KIND_ORDER.get(r["ablation"], 9)))
    return cands[0]


def ablation_section(ctx: Context) -> Section:
    sec = Section(key="ablation", title="Ablation and null distributions",
                  intro="The circuit is ablated (zero, mean or resample, as validated) against matched-random "
                        "head sets: same layers, same count per layer, no overlap. Drop = degradation from clean "
                        "(positive = worse). Effect ratio = circuit drop / mean matched-random drop; p-value = "
                        "(1 + #{random drop ≥ circuit drop}) / (1 + draws).")
    doc, long = ctx.run.validation, ctx.run.validation_long
    if doc is None and long is None:
        sec.notices.append(not_validated_notice(ctx, "validation.json and validation.parquet are"))
        sec.data = {"validated": False}
        return sec
    nothing = _nothing_validated(ctx)
    if nothing:
        sec.notices.append(nothing)
    records = validation_records(doc) if doc is not None else []
    if doc is None:
        sec.notices.append(not_validated_notice(ctx, "validation.json (effect ratios, p-values) is"))
    if long is None and not nothing:
        sec.notices.append("validation.parquet is missing: the null distributions cannot be drawn. "
                           "Re-run `headscreen validate` on this run.")
    sec.data = {"validated": not nothing, "status": validation_status(doc)[0], "records": json_safe(records),
                "null_distributions": []}
    if records:
        sec.tables.append(Table(
            columns=["Step", "Probe", "Ablation", "Circuit", "Size", "Metric", "Effect ratio", "p-value",
                     "Random draws", "Seed"],
            rows=[[r["step"], r["probe"], r["ablation"], head_list(r["circuit"]), len(r["circuit"]), r["metric"],
                   r["effect_ratio"], r["p_value"], r["n_draws"], r["seeds"]] for r in records],
            caption="Summary per validated checkpoint, probe and ablation (validation.json); effect ratio "
                    "'–' = undefined (mean random drop ≤ 0: random heads do not hurt on average)."))
        for r in records:
            sec.tables += [t for t in (_tests_table(r), _conditions_table(r)) if t is not None]
            if r.get("null_skipped"):
                sec.notices.append(f"Step {r['step']} ({r['ablation']}): {r['null_skipped']}")
    if long is not None:
        _null_figures(ctx, sec, long, records)
    return sec


def _where(rec: dict) -> str:
    parts = [f"step {rec['step']}"] + [x for x in (rec["probe"] and f"{rec['probe']} probe",
                                                   rec["ablation"] and f"{rec['ablation']} ablation") if x]
    return ", ".join(parts)


def _tests_table(rec: dict) -> Table | None:
    tests = rec.get("tests") or {}
    if not tests:
        return None
    rows = [[m, t.get("observed_drop"), t.get("null_mean_drop"), t.get("null_std_drop"), t.get("effect_ratio"),
             t.get("p_value"), t.get("n_null")]
            for m, t in ((m, tests[m]) for m in _metric_order(tests))]
    null = ""
    if rec.get("null_kind"):
        null = f" Null: {rec['null_kind']}"
        if rec.get("n_matched_sets") is not None:
            null += f" ({rec['n_matched_sets']} matched sets exist)"
        null += "; p cannot go below 1/(1 + draws)."
    return Table(columns=["Metric", "Circuit drop", "Mean random drop", "SD random drop", "Effect ratio", "p-value",
                          "Draws"], rows=rows,
                 caption=f"Circuit against the matched-random null, {_where(rec)}; the draws are distinct head "
                         f"sets.{null}")


def _conditions_table(rec: dict) -> Table | None:
    conds = rec["conditions"]
    if not conds or not all(isinstance(v, dict) for v in conds.values()):
        return None
    metrics = _metric_order({m for v in conds.values() for m in v})
    rows = [[name] + [json_safe(v.get(m)) for m in metrics] for name, v in conds.items()]
    return Table(columns=["Condition"] + metrics, rows=rows, caption=f"Metric per condition, {_where(rec)}.")


def _null_figures(ctx: Context, sec: Section, long: pd.DataFrame, records: list[dict]) -> None:
    long = long.assign(role=long["condition"].map(condition_role))
    keys = ["step"] + [c for c in ("probe", "ablation") if c in long.columns]
    groups = list(long.groupby(keys, sort=False))
    groups.sort(key=lambda kg: (int(kg[0][0]), str(kg[0][1]) if len(kg[0]) > 1 else "",
                                _KIND_ORDER.get(str(kg[0][2]), 9) if len(kg[0]) > 2 else 0))
    if len(groups) > MAX_FIGURES:
        sec.notices.append(f"Null distributions are drawn for the latest {MAX_FIGURES} of {len(groups)} validated "
                           "(checkpoint, probe, ablation) groups; report.json holds all of them.")
    for index, (key, g) in enumerate(groups):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        step, probe, kind = int(key["step"]), key.get("probe"), key.get("ablation")
        probe, kind = (None if probe is None else str(probe)), (None if kind is None else str(kind))
        metrics = _metric_order(g["metric"].unique())
        draws = {m: g[(g["role"] == "random") & (g["metric"] == m)]["value"].to_numpy(float) for m in metrics}
        point = {role: {m: _mean(g, role, m) for m in metrics} for role in ("circuit", "clean", "upper")}
        sec.data["null_distributions"].append(json_safe({
            "step": step, "probe": probe, "ablation": kind, "random_draws": {m: v.tolist() for m, v in draws.items()},
            "circuit": point["circuit"], "clean": point["clean"], "upper_bound": point["upper"]}))
        if index < len(groups) - MAX_FIGURES or not any(v.size for v in draws.values()):
            continue
        rec = next((r for r in records if r["step"] == step and r["probe"] in (None, probe)
                    and r["ablation"] in (None, kind)), None)
        title = _ablation_headline(step, probe, kind, metrics, draws, point, rec)
        fig = figures.ablation_null(draws, circuit=point["circuit"], clean=point["clean"], upper=point["upper"],
                                    title=title)
        sec.figures.append(figure_to_png(
            fig, ctx.figure_name(f"ablation_step{step}_{probe or 'all'}_{kind or 'ablation'}"),
            f"Matched-random null distribution against the circuit, step {step}"
            + (f", {probe} probe" if probe else "") + (f", {kind} ablation" if kind else "")))


def _mean(g: pd.DataFrame, role: str, metric: str) -> float | None:
    v = g[(g["role"] == role) & (g["metric"] == metric)]["value"].to_numpy(float)
    return float(v.mean()) if v.size else None


def _ablation_headline(step, probe, kind, metrics, draws, point, rec) -> str:
    metric = rec["metric"] if rec and rec["metric"] in metrics else metrics[0]
    where = f"Step {step}" + "".join(f", {x}" for x in (probe, kind and f"{kind} ablation") if x)
    clean, circ = point["clean"].get(metric), point["circuit"].get(metric)
    d = draws[metric]
    parts = [where]
    if clean is not None and circ is not None:
        parts.append(f"ablating the circuit moves {metric} {clean:.3g} → {circ:.3g}")
    if d.size:
        parts.append(f"matched-random {d.mean():.3g} ± {d.std():.2g}")
    if rec and rec["effect_ratio"] is not None:
        parts.append(f"effect ratio {rec['effect_ratio']:.3g}")
    if rec and rec["p_value"] is not None:
        parts.append(f"p\u00a0=\u00a0{rec['p_value']:.3g}")  # no-break spaces: the title wraps elsewhere
    return "; ".join(parts)


def _head_rows(df: pd.DataFrame) -> pd.Series:
    """Per-head denoising rows; path-patching rows have a kind naming 'path' (or sender columns)."""
    if not {"layer", "head"} <= set(df.columns):
        return pd.Series(False, index=df.index)
    keep = df["layer"].notna() & df["head"].notna() & (df["layer"] >= 0) & (df["head"] >= 0)
    for col in ("kind", "type", "method"):
        if col in df.columns:
            keep &= ~df[col].astype(str).str.contains("path", case=False)
    for col in ("sender_layer", "receiver_layer"):
        if col in df.columns:
            keep &= df[col].isna()
    return keep


def _patching_notices(ctx: Context) -> list[str]:
    doc = ctx.run.validation if isinstance(ctx.run.validation, dict) else {}
    summary = doc.get("patching") if isinstance(doc.get("patching"), dict) else {}
    out = []
    if summary.get("unchanged_heads"):
        out.append("Patching these heads changed nothing (their score is blank): "
                   + head_list([tuple(h) for h in summary["unchanged_heads"]]) + ".")
    path = summary.get("path_patching")
    if isinstance(path, dict) and path.get("skipped"):
        out.append(f"Path patching was skipped: {path['skipped']}.")
    excluded = summary.get("path_patching_excluded_senders")
    if isinstance(excluded, dict) and excluded.get("heads"):
        out.append("Previous-token heads left out of the path-patching senders: "
                   + head_list([tuple(h) for h in excluded["heads"]]) + f" ({excluded.get('why', '')}).")
    return out


def patching_section(ctx: Context) -> Section:
    sec = Section(key="patching", title="Activation patching",
                  intro="Denoising patching (docs/methods.md#causal-validation): the clean hook_z of one head is patched into a corrupted "
                        "run. Score = (LD_patch − LD_corr)/(LD_clean − LD_corr); 1 restores the clean logit difference.")
    df = ctx.run.patching
    if df is None:
        nothing = _nothing_validated(ctx)
        if ctx.run.validation is None and ctx.run.validation_long is None:
            sec.notices.append(not_validated_notice(ctx, "patching.parquet is"))
        elif nothing:
            sec.notices.append(nothing)
        else:
            sec.notices.append(f"Patching was not part of this run's validation: patching.parquet is not in "
                               f"{ctx.run.path}. Run `headscreen validate` on this run to add it.")
        sec.data = {"validated": ctx.run.validation is not None and not nothing, "patched": False}
        return sec
    sec.notices += _patching_notices(ctx)
    heads = _head_rows(df)
    per_head, paths = df[heads], df[~heads]
    sec.data = {"validated": True, "patched": True, "steps": {}}
    steps = sorted(int(s) for s in per_head["step"].dropna().unique())
    if not steps:
        sec.notices.append("patching.parquet has no per-head rows.")
    n_layers = int(per_head["layer"].max()) + 1 if steps else 0
    n_heads = int(per_head["head"].max()) + 1 if steps else 0
    for step in steps:
        sub = per_head[per_head["step"] == step].groupby(["layer", "head"])["score"].mean()
        grid = np.full((n_layers, n_heads), np.nan)
        for (layer, head), v in sub.items():
            grid[int(layer), int(head)] = v
        sec.data["steps"][str(step)] = json_safe(grid.tolist())
        top = sub.dropna().sort_values(ascending=False)
        sec.tables.append(Table(columns=["Head", "Patching score"],
                                rows=[[head_label((a, b)), float(v)] for (a, b), v in top.head(5).items()],
                                caption=f"Top heads by patching score at step {step}."))
        if step not in steps[-MAX_FIGURES:] or top.empty:
            continue
        (tl, th), tv = top.index[0], float(top.iloc[0])
        title = (f"Step {step}: patching {head_label((tl, th))} restores {tv:.0%} of the clean logit difference; "
                 f"{int((top > 0.1).sum())} of {sub.size} heads restore > 10%")
        fig = figures.patching_heatmap(grid, title=title)
        sec.figures.append(figure_to_png(fig, ctx.figure_name(f"patching_step{step}"),
                                         f"Patching score per layer and head at step {step}"))
    if len(paths):
        records = [json_safe(r) for r in paths.to_dict(orient="records")]
        sec.data["path_patching"] = records
        cols = list(paths.columns)
        sec.tables.append(Table(columns=cols, rows=[[r[c] for c in cols] for r in records[:50]],
                                caption=f"Path-patching rows ({len(records)}"
                                        + (", first 50 shown)." if len(records) > 50 else ").")))
    return sec
