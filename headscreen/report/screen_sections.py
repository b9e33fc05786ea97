"""Sections built from the screen's outputs at one checkpoint: selectivity, classified heads and circuits,
emergence, BOS heads in layers 0 and 1."""

from __future__ import annotations

import numpy as np

from headscreen.heads import head_label, heads_label
from headscreen.report import figures, timeline_figures
from headscreen.report.content import Section, Table, figure_to_png, head_list, human_count
from headscreen.report.runinfo import Context, grid_shape
from headscreen.report.schema import bos_layers01_records, emergence_records, for_probe, pr_ranking_records
from headscreen.rundir.jsonsafe import json_safe

CLASS_ORDER = ("induction", "duplicate", "previous", "self", "first", "bos", "local")
CLASS_LABELS = {"first": "first token (BOS)", "bos": "BOS"}


def missing_notice(file: str, ctx: Context, what: str, fix: str = "headscreen screen") -> str:
    return f"{what} is not available: {file} is not in {ctx.run.path}. Run `{fix}` on this run to produce it."


def _ordered_classes(classes) -> list[str]:
    known = [c for c in CLASS_ORDER if c in set(classes)]
    return known + sorted(set(classes) - set(known))


def selectivity_section(ctx: Context) -> Section:
    sec = Section(key="selectivity", title="Selectivity heatmaps",
                  intro="Attention to each class's target position divided by the baseline attention "
                        "(docs/methods.md#selectivity-screen), for every layer × head. Outlined cells pass the class threshold.")
    df = ctx.run.selectivity
    if df is None:
        sec.notices.append(missing_notice("selectivity.parquet", ctx, "The selectivity screen"))
        return sec
    at = df[df["step"] == ctx.step]
    shape = grid_shape(ctx.run)
    if at.empty or shape is None:
        sec.notices.append(f"selectivity.parquet has no rows at step {ctx.step}; the screen did not reach it.")
        return sec
    thr = ctx.thresholds
    sec.data = {"step": ctx.step, "threshold_class": thr["class"], "threshold_induction_circuit": thr["induction_circuit"],
                "probes": {}}
    for probe in sorted(at["probe"].astype(str).unique(), key=lambda p: (p != ctx.probe, p)):  # report probe first
        sub = at[at["probe"] == probe]
        grids = {}
        for cls in _ordered_classes(sub["class"].unique()):
            g = np.full(shape, np.nan)
            rows = sub[sub["class"] == cls].groupby(["layer", "head"])["selectivity"].mean()
            for (layer, head), v in rows.items():
                g[int(layer), int(head)] = v
            grids[cls] = g
        sec.data["probes"][str(probe)] = {cls: json_safe(g.tolist()) for cls, g in grids.items()}
        title = _selectivity_headline(grids, ctx.step, probe, thr)
        fig = figures.selectivity_heatmaps(grids, threshold=thr["class"], title=title)
        sec.figures.append(figure_to_png(fig, ctx.figure_name(f"selectivity_{probe}"),
                                         f"Selectivity heatmaps per class at step {ctx.step}, {probe} probe"))
    return sec


def _selectivity_headline(grids: dict[str, np.ndarray], step, probe, thr: dict) -> str:
    parts = [f"Step {step}, {probe} probe"]
    if "induction" in grids:
        g = np.nan_to_num(grids["induction"])
        hits = [(int(i), int(j)) for i, j in zip(*np.nonzero(g >= thr["induction_circuit"]), strict=True)]
        parts.append(f"induction ≥ {thr['induction_circuit']:g}× in {head_list(hits)}" if hits
                     else f"no head reaches {thr['induction_circuit']:g}× induction selectivity")
    best_cls, best = None, (-np.inf, 0, 0)
    for cls, g in grids.items():
        if np.isfinite(g).any():
            i, j = np.unravel_index(np.nanargmax(g), g.shape)
            if g[i, j] > best[0]:
                best_cls, best = cls, (float(g[i, j]), int(i), int(j))
    if best_cls is not None:
        parts.append(f"most selective: {head_label(best[1:3])} {CLASS_LABELS.get(best_cls, best_cls)} ({best[0]:.3g}×)")
    return "; ".join(parts)


def circuits_section(ctx: Context) -> Section:
    sec = Section(key="circuits", title="Classified heads and circuits",
                  intro="A head's class is its most selective class if it reaches the class threshold. "
                        "Circuit membership is screened over all heads, whatever their best class (docs/methods.md#selectivity-screen).")
    thr = ctx.thresholds
    classes = ctx.of_probe(ctx.run.classes)
    sec.data["probe"] = ctx.probe
    if classes is None:
        sec.notices.append(missing_notice("classes.parquet", ctx, "The per-head classification"))
    else:
        at = classes[classes["step"] == ctx.step].sort_values(["layer", "head"])
        flags = [c for c in ("in_induction_circuit", "in_previous_circuit", "is_bos") if c in at.columns]
        keep = at["best_class"].astype(str) != "unclassified"
        for c in flags:
            keep |= at[c].fillna(False).astype(bool)
        at = at[keep]
        cols = ["layer", "head"] + [c for c in ("probe", "best_class", "best_selectivity", "induction_selectivity")
                                    if c in at.columns] + flags
        records = [json_safe(dict(zip(cols, row, strict=True))) for row in at[cols].itertuples(index=False)]
        sec.data["classified"] = records
        labels = {"probe": "Probe", "best_class": "Best class", "best_selectivity": "Best selectivity (×)",
                  "induction_selectivity": "Induction selectivity (×)", "in_induction_circuit": "Induction circuit",
                  "in_previous_circuit": "Previous-token circuit", "is_bos": "BOS head"}
        rows = [[head_label((r["layer"], r["head"]))] + [r[c] for c in cols[2:]] for r in records]
        on = f", {ctx.probe} probe" if ctx.probe else ""
        caption = (f"Heads classified (≥ {thr['class']:g}×) or in a circuit at step {ctx.step}{on}: "
                   f"{len({(r['layer'], r['head']) for r in records})} heads.")
        sec.tables.append(Table(columns=["Head"] + [labels[c] for c in cols[2:]], rows=rows, caption=caption))
    if ctx.run.circuits is None:
        sec.notices.append(missing_notice("circuits.json", ctx, "The circuit list per checkpoint"))
        return sec
    at_step = ctx.circuit_at_step()
    if at_step is None:
        sec.notices.append(f"circuits.json records no circuits at step {ctx.step}.")
    else:
        sec.data["circuits_at_step"] = {k: [list(h) for h in at_step[k]] for k in ("induction", "previous", "bos")}
        sec.data["step"] = ctx.step
        sec.tables.append(Table(
            columns=["Circuit", "Heads", "Size"],
            rows=[[f"Induction (induction selectivity ≥ {thr['induction_circuit']:g}×)", head_list(at_step["induction"]),
                   len(at_step["induction"])],
                  [f"Previous-token (best class, ≥ {thr['previous_circuit']:g}×)", head_list(at_step["previous"]),
                   len(at_step["previous"])],
                  [f"BOS (best class first token, ≥ {thr['bos']:g}×)", head_list(at_step["bos"]), len(at_step["bos"])]],
            caption=f"Circuits at step {ctx.step}" + (f", {ctx.probe} probe." if ctx.probe else ".")))
    sec.data["by_step"] = [{"step": r["step"], "induction": [list(h) for h in r["induction"]],
                            "previous": [list(h) for h in r["previous"]], "n_bos": len(r["bos"])} for r in ctx.circuits]
    if ctx.circuits:
        fig = timeline_figures.circuit_timeline(ctx.circuits, title=_circuit_timeline_headline(ctx.circuits, thr))
        sec.figures.append(figure_to_png(fig, ctx.figure_name("circuit_timeline"),
                                         "Circuit membership of each head at every screened checkpoint"))
    sec.tables.append(Table(
        columns=["Step", "Induction circuit", "Size", "Previous-token circuit", "BOS heads"],
        rows=[[r["step"], head_list(r["induction"]), len(r["induction"]), head_list(r["previous"]), len(r["bos"])]
              for r in ctx.circuits],
        caption="Circuits at every screened checkpoint" + (f", {ctx.probe} probe" if ctx.probe else ""), folded=True))
    ranking = for_probe(pr_ranking_records(ctx.run.circuits), ctx.probe)
    if ranking:
        sec.data["pr_ranking"] = ranking
        top = ranking[: max(1, min(len(ranking), 10))]
        sec.tables.append(Table(columns=["Rank", "Head", "PR integral", "Picked"],
                                rows=[[r["rank"], head_label((r["layer"], r["head"])), r["integral"], r["picked"]] for r in top],
                                caption=f"Top {len(top)} of {len(ranking)} heads by PR integral (docs/methods.md#participation-ratio)."))
    return sec


def _circuit_timeline_headline(by_step: list[dict], thr: dict) -> str:
    sizes = [len(r["induction"]) for r in by_step]
    first = next((r["step"] for r in by_step if r["induction"]), None)
    if first is None:
        return f"No head reaches {thr['induction_circuit']:g}× induction selectivity at any of {len(by_step)} checkpoints"
    return (f"The induction circuit first appears at step {first} and holds {sizes[-1]} head"
            f"{'s' if sizes[-1] != 1 else ''} at the last checkpoint (at most {max(sizes)})")


def emergence_section(ctx: Context) -> Section:
    sec = Section(key="emergence", title="Emergence timeline",
                  intro="When each head joined its class, as circuits.json records it (`headscreen screen`: the "
                        "first checkpoint from which the head stays in the class through the last one).")
    if ctx.run.circuits is None:
        sec.notices.append(missing_notice("circuits.json", ctx, "The emergence timeline"))
        return sec
    every = for_probe(emergence_records(ctx.run.circuits), ctx.probe)
    records = [r for r in every if r["step"] is not None]
    if not records:
        sec.notices.append("No head is in any class at the last checkpoint, so none has an emergence step.")
        return sec
    for r in records:
        r["tokens"] = ctx.tokens.get(r["step"])
    sec.data = {"probe": ctx.probe, "records": records, "n_not_emerged": len(every) - len(records)}
    sec.tables.append(Table(
        columns=["Head", "Class", "Emergence step", "Tokens seen"],
        rows=[[head_label((r["layer"], r["head"])), r["class"], r["step"], human_count(r["tokens"])] for r in records],
        caption=("Heads that join a class and stay in it through the last checkpoint"
                 + (f" ({ctx.probe} probe)" if ctx.probe else "") + f"; {len(every) - len(records)} "
                 "(head, class) pairs never do.")))
    if records:
        fig = figures.emergence_timeline(records, step_tokens=ctx.tokens, title=_emergence_headline(records))
        sec.figures.append(figure_to_png(fig, ctx.figure_name("emergence"), "Emergence step of each head per class"))
    return sec


def _emergence_headline(records: list[dict]) -> str:
    parts = []
    for cls in _ordered_classes({r["class"] for r in records}):
        steps = [r["step"] for r in records if r["class"] == cls and r["step"] is not None]
        if steps:
            span = f"step {min(steps)}" if min(steps) == max(steps) else f"steps {min(steps)}–{max(steps)}"
            parts.append(f"{cls}: {len(steps)} head{'s' if len(steps) != 1 else ''} at {span}")
    return "Heads emerge — " + "; ".join(parts)


def bos_layers01_section(ctx: Context) -> Section:
    sec = Section(key="bos_layers01", title="BOS heads in layers 0 and 1",
                  intro="The published screens (docs/methods.md#selectivity-screen) found no BOS heads in "
                        "layers 0 and 1 of any model at any checkpoint; a non-zero count here departs from "
                        "that finding.")
    if ctx.run.circuits is None:
        sec.notices.append(missing_notice("circuits.json", ctx, "The BOS count in layers 0 and 1"))
        return sec
    every = bos_layers01_records(ctx.run.circuits)
    records = for_probe(every, ctx.probe)
    if not records:
        sec.notices.append("circuits.json has no 'bos_layers01' entry; re-run `headscreen screen` to record it.")
        return sec
    nonzero = [r["step"] for r in records if r["total"]]
    at = next((r for r in records if r["step"] == ctx.step), None)
    sec.data = {"probe": ctx.probe, "records": every, "at_step": at, "max_total": max(r["total"] for r in records),
                "checkpoints_with_bos_in_l01": nonzero}
    with_probe = any(r["probe"] is not None for r in every)
    all_layers = {r["step"]: len(r["bos"]) for r in ctx.circuits}
    fig = timeline_figures.bos_timeline(every, all_layers=all_layers, title=_bos_headline(every))
    sec.figures.append(figure_to_png(fig, ctx.figure_name("bos_timeline"), "BOS heads in layers 0 and 1 per checkpoint"))
    sec.tables.append(Table(
        columns=["Step"] + (["Probe"] if with_probe else []) + ["BOS heads in L0", "BOS heads in L1", "Total"],
        rows=[[r["step"]] + ([r["probe"]] if with_probe else []) + [r["layer0"], r["layer1"], r["total"]]
              for r in every],
        caption=("No checkpoint has a BOS head in layers 0 or 1" if not nonzero else
                 f"{len(nonzero)} of {len(records)} checkpoints have BOS heads in layers 0/1: step "
                 + ", ".join(map(str, nonzero[:20])) + ("…" if len(nonzero) > 20 else ""))
                + (f" ({ctx.probe} probe)" if ctx.probe else ""), folded=True))
    sinks = _sink_heads_table(ctx)
    if sinks is not None:
        table, sec.data["sink_heads"] = sinks
        sec.tables.append(table)
    return sec


def _bos_headline(records: list[dict]) -> str:
    broken = sorted({r["step"] for r in records if r["total"]})
    n = len({r["step"] for r in records})
    if not broken:
        return f"No BOS head in layers 0 or 1 at any of {n} checkpoints, on any probe"
    return f"BOS heads in layers 0 or 1 at {len(broken)} of {n} checkpoints (first at step {broken[0]})"


SINK_HEAD_RATE = 0.5  # a Gu sink head: alpha_1 > eps in at least half of the probe's rows


def _sink_heads_table(ctx: Context) -> tuple[Table, dict] | None:
    """Per layer, the heads whose Gu sink rate (share of rows with alpha_1 > eps) is >= SINK_HEAD_RATE."""
    hs = ctx.run.head_scores
    if hs is None:
        return None
    rates = hs[hs["metric"] == "sink_rate"]
    if ctx.probe is not None and "probe" in rates:
        rates = rates[rates["probe"] == ctx.probe]
    if rates.empty:
        return None
    flagged = rates[rates["value"] >= SINK_HEAD_RATE]
    at = flagged[flagged["step"] == ctx.step]
    layers = sorted(int(v) for v in rates["layer"].unique())
    data, rows = {}, []
    for layer in layers:
        here = sorted(int(h) for h in at.loc[at["layer"] == layer, "head"])
        steps = sorted(int(v) for v in flagged.loc[flagged["layer"] == layer, "step"].unique())
        data[str(layer)] = {"heads_at_step": here, "checkpoints_flagged": len(steps)}
        rows.append([layer, heads_label((layer, h) for h in here), len(steps)])
    n_ckpt = rates["step"].nunique()
    table = Table(columns=["Layer", f"Gu sink heads at step {ctx.step}", f"Checkpoints with one (of {n_ckpt})"],
                  rows=rows,
                  caption=f"Gu sink heads per layer: sink rate (share of rows whose mean attention to position 0 "
                          f"exceeds eps) >= {SINK_HEAD_RATE}. The BOS class above reads the query position only; "
                          "the sink rate counts every query, so a head that parks on BOS only while idle shows "
                          "here and not above.")
    return table, data
