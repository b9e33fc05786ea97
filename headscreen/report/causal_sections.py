"""Sections built from causal validation (METHODS §8): ablation with its null distribution, and patching."""

from __future__ import annotations

import numpy as np
import pandas as pd

from headscreen.report import figures
from headscreen.report.content import Section, Table, figure_to_png, head_list, to_python
from headscreen.report.runinfo import Context
from headscreen.report.schema import validation_records

MAX_FIGURES = 4  # per section: the latest validated checkpoints
_PREFERRED_METRICS = ("top1", "top5", "ce", "loss", "logit_target", "target_logit")


def not_validated_notice(ctx: Context, files: str) -> str:
    return (f"Validation has not been run for this run: {files} not in {ctx.run.path}. "
            f"Run `headscreen validate` on this run to add the ablation effects, their null distributions "
            f"and the patching scores.")


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
    if n.startswith(("single", "head")) or n[:1] == "l" and "h" in n:
        return "single"
    return "other"


def _metric_order(metrics) -> list[str]:
    metrics = [str(m) for m in metrics]
    return [m for m in _PREFERRED_METRICS if m in metrics] + sorted(set(metrics) - set(_PREFERRED_METRICS))


def ablation_section(ctx: Context) -> Section:
    sec = Section(key="ablation", title="Ablation and null distributions",
                  intro="Zero-ablation of the circuit against matched-random head sets (same layers, same count, "
                        "no overlap). Effect ratio = circuit effect / mean matched-random effect; the p-value is "
                        "the share of random draws at least as effective as the circuit.")
    doc, long = ctx.run.validation, ctx.run.validation_long
    if doc is None and long is None:
        sec.notices.append(not_validated_notice(ctx, "validation.json and validation.parquet are"))
        sec.data = {"validated": False}
        return sec
    records = validation_records(doc) if doc is not None else []
    if doc is None:
        sec.notices.append(not_validated_notice(ctx, "validation.json (effect ratios, p-values) is"))
    if long is None:
        sec.notices.append("validation.parquet is missing: the null distributions cannot be drawn. "
                           "Re-run `headscreen validate` on this run.")
    sec.data = {"validated": True, "records": to_python(records), "null_distributions": []}
    if records:
        sec.tables.append(Table(
            columns=["Step", "Probe", "Circuit", "Size", "Metric", "Effect ratio", "p-value", "Random draws", "Seeds"],
            rows=[[r["step"], r["probe"], head_list(r["circuit"]), len(r["circuit"]), r["metric"], r["effect_ratio"],
                   r["p_value"], r["n_draws"], r["seeds"]] for r in records],
            caption="Summary per validated checkpoint (validation.json)."))
        for r in records:
            table = _conditions_table(r)
            if table is not None:
                sec.tables.append(table)
    if long is not None:
        _null_figures(ctx, sec, long, records)
    return sec


def _conditions_table(rec: dict) -> Table | None:
    conds = rec["conditions"]
    if not conds or not all(isinstance(v, dict) for v in conds.values()):
        return None
    metrics = _metric_order({m for v in conds.values() for m in v})
    rows = [[name] + [to_python(v.get(m)) for m in metrics] for name, v in conds.items()]
    probe = f", {rec['probe']} probe" if rec["probe"] else ""
    return Table(columns=["Condition"] + metrics, rows=rows,
                 caption=f"Metrics per ablation condition at step {rec['step']}{probe}.")


def _null_figures(ctx: Context, sec: Section, long: pd.DataFrame, records: list[dict]) -> None:
    long = long.assign(role=long["condition"].map(condition_role))
    probe_col = "probe" if "probe" in long.columns else None
    groups = list(long.groupby(["step", probe_col] if probe_col else ["step"], sort=True))
    if len(groups) > MAX_FIGURES:
        sec.notices.append(f"Null distributions drawn for the latest {MAX_FIGURES} of {len(groups)} validated "
                           "(checkpoint, probe) pairs; report.json holds all of them.")
    for index, (key, g) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        step, probe = int(key[0]), (str(key[1]) if probe_col else None)
        metrics = _metric_order(g["metric"].unique())
        draws = {m: g[(g["role"] == "random") & (g["metric"] == m)]["value"].to_numpy(float) for m in metrics}
        point = {role: {m: _mean(g, role, m) for m in metrics} for role in ("circuit", "clean", "upper")}
        sec.data["null_distributions"].append(to_python({
            "step": int(step), "probe": probe,
            "random_draws": {m: v.tolist() for m, v in draws.items()},
            "circuit": point["circuit"], "clean": point["clean"], "upper_bound": point["upper"]}))
        if index < len(groups) - MAX_FIGURES or not any(v.size for v in draws.values()):
            continue
        rec = next((r for r in records if r["step"] == step and (probe is None or r["probe"] in (None, probe))), None)
        title = _ablation_headline(int(step), probe, metrics, draws, point, rec)
        fig = figures.ablation_null(draws, circuit=point["circuit"], clean=point["clean"], upper=point["upper"],
                                    title=title)
        sec.figures.append(figure_to_png(fig, ctx.figure_name(f"ablation_step{int(step)}_{probe or 'all'}"),
                                         f"Null distribution of matched-random ablations at step {int(step)}"))


def _mean(g: pd.DataFrame, role: str, metric: str) -> float | None:
    v = g[(g["role"] == role) & (g["metric"] == metric)]["value"].to_numpy(float)
    return float(v.mean()) if v.size else None


def _ablation_headline(step, probe, metrics, draws, point, rec) -> str:
    metric = rec["metric"] if rec and rec["metric"] in metrics else metrics[0]
    where = f"Step {step}" + (f" ({probe})" if probe else "")
    clean, circ = point["clean"].get(metric), point["circuit"].get(metric)
    d = draws[metric]
    parts = [where]
    if clean is not None and circ is not None:
        parts.append(f"ablating the circuit moves {metric} {clean:.3g} → {circ:.3g}")
    if d.size:
        parts.append(f"matched-random {d.mean():.3g} ± {d.std():.2g}")
    if rec and rec["effect_ratio"] is not None:
        parts.append(f"effect ratio {rec['effect_ratio']:.3g}" +
                     (f", p = {rec['p_value']:.3g}" if rec["p_value"] is not None else ""))
    return "; ".join(parts)


def _head_rows(df: pd.DataFrame) -> pd.Series:
    """Denoising per-head rows; the path-patching rows carry a kind/type naming 'path' or sender columns."""
    keep = df["layer"].notna() & df["head"].notna() if {"layer", "head"} <= set(df.columns) else pd.Series(False, df.index)
    for col in ("kind", "type", "method"):
        if col in df.columns:
            keep &= ~df[col].astype(str).str.contains("path", case=False)
    for col in ("sender_layer", "receiver_layer", "sender", "receiver"):
        if col in df.columns:
            keep &= df[col].isna()
    return keep


def patching_section(ctx: Context) -> Section:
    sec = Section(key="patching", title="Activation patching",
                  intro="Denoising patching (METHODS §8): the clean hook_z of one head is patched into a corrupted "
                        "run. Score = (LD_patch − LD_corr)/(LD_clean − LD_corr); 1 restores the clean logit difference.")
    df = ctx.run.patching
    if df is None:
        if ctx.run.validation is None:
            sec.notices.append(not_validated_notice(ctx, "patching.parquet is"))
        else:
            sec.notices.append(f"Patching was not part of this run's validation: patching.parquet is not in "
                               f"{ctx.run.path}. Run `headscreen validate` with patching on this run to add it.")
        sec.data = {"validated": ctx.run.validation is not None or ctx.run.validation_long is not None, "patched": False}
        return sec
    heads = _head_rows(df)
    per_head, paths = df[heads], df[~heads]
    sec.data = {"validated": True, "patched": True, "steps": {}}
    steps = sorted(int(s) for s in per_head["step"].unique())
    if not steps:
        sec.notices.append("patching.parquet has no per-head rows.")
    n_layers = int(per_head["layer"].max()) + 1 if steps else 0
    n_heads = int(per_head["head"].max()) + 1 if steps else 0
    for step in steps:
        sub = per_head[per_head["step"] == step].groupby(["layer", "head"])["score"].mean()
        grid = np.full((n_layers, n_heads), np.nan)
        for (layer, head), v in sub.items():
            grid[int(layer), int(head)] = v
        sec.data["steps"][str(step)] = to_python(grid.tolist())
        top = sub.sort_values(ascending=False)
        sec.tables.append(Table(columns=["Head", "Patching score"],
                                rows=[[f"L{int(a)}H{int(b)}", float(v)] for (a, b), v in top.head(5).items()],
                                caption=f"Top heads by patching score at step {step}."))
        if step not in steps[-MAX_FIGURES:]:
            continue
        (tl, th), tv = top.index[0], float(top.iloc[0])
        title = (f"Step {step}: patching L{int(tl)}H{int(th)} restores {tv:.0%} of the clean logit difference; "
                 f"{int((sub > 0.1).sum())} of {sub.size} heads restore > 10%")
        fig = figures.patching_heatmap(grid, title=title)
        sec.figures.append(figure_to_png(fig, ctx.figure_name(f"patching_step{step}"),
                                         f"Patching score per layer and head at step {step}"))
    if len(paths):
        records = [to_python(r) for r in paths.to_dict(orient="records")]
        sec.data["path_patching"] = records
        cols = list(paths.columns)
        sec.tables.append(Table(columns=cols, rows=[[r[c] for c in cols] for r in records[:50]],
                                caption=f"Path-patching rows ({len(records)}" + (", first 50 shown)" if len(records) > 50 else ")")))
    return sec
