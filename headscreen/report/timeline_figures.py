"""Timeline figures that replace long per-checkpoint tables: circuit membership, BOS counts, and the
pre-identification AUC per metric. Same conventions as figures.py (the caller passes the title)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from headscreen.report.figures import CLASS_COLOURS, _new_figure, _wrap

_METRIC_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                   "#7f7f7f", "#bcbd22", "#393b79", "#ad494a")


def circuit_timeline(by_step: list[dict], *, title: str, classes: tuple[str, ...] = ("induction", "previous")) -> Figure:
    """One row per head that is ever in a circuit: a mark at each checkpoint where it is a member.

    `by_step`: [{"step", "induction": [[layer, head], ...], "previous": [...], ...}] in step order.
    """
    steps = [r["step"] for r in by_step]
    rows: dict[tuple[str, tuple[int, int]], list[int]] = {}
    for r in by_step:
        for cls in classes:
            for h in r.get(cls) or []:
                rows.setdefault((cls, (int(h[0]), int(h[1]))), []).append(r["step"])
    order = sorted(rows, key=lambda k: (classes.index(k[0]), min(rows[k]), k[1]))
    fig = _new_figure(10.0, 1.6 + 0.28 * max(len(order), 2))
    ax = fig.subplots()
    gap = np.median(np.diff(steps)) if len(steps) > 1 else 1.0
    for y, key in enumerate(order):
        cls, (layer, head) = key
        ax.axhline(y, color="#eeeeee", linewidth=0.8, zorder=1)
        xs = rows[key]
        ax.scatter(xs, [y] * len(xs), marker="s", s=22, color=CLASS_COLOURS.get(cls, "#333333"), zorder=3,
                   label=cls if key == next(k for k in order if k[0] == cls) else None)
    ax.set_yticks(range(len(order)), [f"L{h[0]}H{h[1]}" for _, h in order], fontsize=8)
    ax.set_ylim(len(order) - 0.5, -0.5)
    if steps:
        ax.set_xlim(min(steps) - gap / 2, max(steps) + gap / 2)
    ax.set_xlabel("training step (a mark = in the circuit at that checkpoint)")
    ax.set_ylabel("head")
    if order:
        ax.legend(title="circuit", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # hides no mark
    else:
        ax.text(0.5, 0.5, "no head is in a circuit at any checkpoint", transform=ax.transAxes, ha="center")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(_wrap(title, 10.0), fontsize=11)
    return fig


def bos_timeline(records: list[dict], *, title: str, all_layers: dict[int, int] | None = None) -> Figure:
    """BOS heads in layers 0 and 1 per checkpoint, one line per probe; `all_layers` (step -> BOS heads in
    every layer, the report probe) dashed for scale."""
    fig = _new_figure(10.0, 3.0)
    ax = fig.subplots()
    df = pd.DataFrame(records)
    probes = sorted({str(p) for p in df["probe"]}) if "probe" in df and df["probe"].notna().any() else [None]
    for i, probe in enumerate(probes):
        sub = df if probe is None else df[df["probe"].astype(str) == probe]
        sub = sub.sort_values("step")
        colour = _METRIC_COLOURS[i % 12]
        ax.step(sub["step"], sub["total"], where="post", linewidth=max(1.0, 4.0 - 1.2 * i), color=colour, alpha=0.8,
                label=f"layers 0–1, {probe} probe" if probe else "layers 0–1")  # later probes thinner: overlaps show
        hit = sub[sub["total"] > 0]
        ax.scatter(hit["step"], hit["total"], color=colour, s=25, zorder=3, edgecolor="black", linewidth=0.4)
    if all_layers:
        xs = sorted(all_layers)
        ax.step(xs, [all_layers[s] for s in xs], where="post", linestyle="--", color="#555555", linewidth=1.2,
                label="all layers (report probe)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=-0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("BOS heads")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: hides no point
    ax.grid(alpha=0.3)
    fig.suptitle(_wrap(title, 10.0), fontsize=11)
    return fig


def preid_auc(table: pd.DataFrame, *, emergence_step: float | None, auc_bar: float, title: str) -> Figure:
    """AUC of the circuit against the other heads per step, one line per metric; left: raw values, right:
    within-layer z. Filled dots: the metric separates there (AUC >= bar, p < alpha, before emergence)."""
    fig = _new_figure(11.0, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    metrics = list(dict.fromkeys(table["metric"]))
    for ax, scope, name in zip(axes, ("raw", "layer_z"), ("raw value", "z-score within the layer"), strict=True):
        sub = table[table["scope"] == scope]
        for i, metric in enumerate(metrics):
            m = sub[sub["metric"] == metric].sort_values("step")
            colour = _METRIC_COLOURS[i % len(_METRIC_COLOURS)]
            ax.plot(m["step"], m["auc"], color=colour, linewidth=1.2, alpha=0.85, label=metric)
            hit = m[m["separates"].astype(bool)]
            ax.scatter(hit["step"], hit["auc"], color=colour, s=18, zorder=3, edgecolor="black", linewidth=0.4)
        ax.axhline(auc_bar, color="black", linestyle=":", linewidth=1)
        ax.axhline(0.5, color="#999999", linewidth=0.8)
        if emergence_step is not None:
            ax.axvline(emergence_step, color="black", linestyle="--", linewidth=1)
            ax.text(emergence_step, 0.02, " emergence", fontsize=8, va="bottom")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ROC AUC, circuit vs other heads")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title="metric")
    fig.suptitle(_wrap(title, 11.0), fontsize=11)
    return fig
