"""Figures of the grokking report; each returns a matplotlib Figure (Agg), the caller passes the title.

Event markers are the same everywhere: grokking step solid black, gap open dashed blue, defect onset
dotted red, memorisation dash-dot grey.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from headscreen.report.figures import HIGHLIGHT_COLOURS, _new_figure, _wrap  # noqa: E402

EVENT_STYLE = {
    "grok_step": ("grokking", "black", "-"),
    "gap_open_step": ("gap opens", "#1f77b4", "--"),
    "defect_onset_step": ("defect onset", "#d62728", ":"),
    "memorisation_step": ("memorisation", "#7f7f7f", "-."),
}


def _events(ax, events: dict, keys=tuple(EVENT_STYLE)) -> None:
    for key in keys:
        step = events.get(key)
        if step is None:
            continue
        label, colour, style = EVENT_STYLE[key]
        ax.axvline(step, color=colour, linestyle=style, linewidth=1.3, label=f"{label} ({step})")


def _finish(fig: Figure, axes, title: str) -> Figure:
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncol=min(4, len(labels)),
                   fontsize=8, frameon=False)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def training_curves(curves: pd.DataFrame, events: dict, *, title: str) -> Figure:
    """Accuracy (left) and loss (right, log) of every task on train and test."""
    fig = _new_figure(10, 3.8)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, (task, df) in enumerate(curves.sort_values("step").groupby("task")):
        c = HIGHLIGHT_COLOURS[i % len(HIGHLIGHT_COLOURS)]
        for split, style in (("train", "--"), ("test", "-")):
            ax_acc.plot(df["step"], df[f"{split}_acc"], style, color=c, label=f"{task} {split}")
            ax_loss.plot(df["step"], df[f"{split}_loss"].clip(lower=1e-8), style, color=c)
    ax_loss.set_yscale("log")
    ax_acc.set_ylabel("accuracy (fraction)")
    ax_loss.set_ylabel("cross-entropy (nats, log)")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("training step")
        _events(ax, events, ("grok_step", "memorisation_step"))
    return _finish(fig, (ax_acc, ax_loss), title)


def edge_and_defect(edge: pd.DataFrame | None, defect: pd.DataFrame | None, events: dict, *, title: str) -> Figure:
    """Trunk σ1/σ2 and σ2/σ3 of the rolling update Gram (top), gap_norm (middle), defect median with its
    quartiles (bottom, log), all against the step, with the grokking step, gap-open and onset marked."""
    fig = _new_figure(9, 8)
    axes = fig.subplots(3, 1, sharex=True)
    if edge is not None and not edge.empty:
        trunk = edge[edge["scope"] == "trunk"].pivot_table(index="step", columns="metric", values="value")
        axes[0].plot(trunk.index, trunk["ratio_12"], color="#ff7f0e", label="σ₁/σ₂")
        axes[0].plot(trunk.index, trunk["ratio_23"], color="#2ca02c", label="σ₂/σ₃")
        axes[0].axhline(1.2, color="#999999", linewidth=0.8)
        axes[1].plot(trunk.index, trunk["gap_norm"], color="#9467bd", label="gap_norm (λ_k* − λ_k*+1)/λ₁")
    else:
        axes[0].text(0.5, 0.5, "no spectral edge (too few snapshots)", ha="center", transform=axes[0].transAxes)
    axes[0].set_ylabel("singular-value ratio")
    axes[1].set_ylabel("normalised eigen-gap")
    if defect is not None and not defect.empty:
        d = defect.sort_values("step")
        axes[2].fill_between(d["step"], d["defect_q25"], d["defect_q75"], color="#d62728", alpha=0.2, linewidth=0)
        axes[2].plot(d["step"], d["defect_median"], color="#d62728", label="defect D (median, IQR)")
        axes[2].set_yscale("log")
    else:
        axes[2].text(0.5, 0.5, "no defect measurements", ha="center", transform=axes[2].transAxes)
    axes[2].set_ylabel("commutator defect D")
    axes[2].set_xlabel("training step (window end for the edge)")
    for ax in axes:
        _events(ax, events, ("grok_step", "gap_open_step", "defect_onset_step"))
    return _finish(fig, axes, title)


def phase_portraits(portrait: pd.DataFrame, colour_by: str, *, colour_label: str, title: str) -> Figure:
    """One panel per head (−1 = whole layer): smoothed (x, y) path, points coloured by `colour_by`."""
    heads = sorted(portrait["head"].unique())
    ncols = min(3, len(heads))
    nrows = int(np.ceil(len(heads) / ncols))
    fig = _new_figure(3.6 * ncols + 0.8, 3.2 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    vals = portrait[colour_by].astype(float)
    vmin, vmax = float(np.nanmin(vals)), float(np.nanmax(vals))
    sc = None
    for k, ax in enumerate(axes):
        if k >= len(heads):
            ax.set_visible(False)
            continue
        sub = portrait[portrait["head"] == heads[k]].sort_values("step")
        ax.plot(sub["x_smooth"], sub["y_smooth"], color="#bbbbbb", linewidth=1, zorder=1)
        sc = ax.scatter(sub["x_smooth"], sub["y_smooth"], c=sub[colour_by].astype(float), cmap="viridis",
                        vmin=vmin, vmax=vmax, s=14, zorder=2)
        ax.set_title("whole layer 0" if heads[k] == -1 else f"layer 0 head {heads[k]}", fontsize=10)
        ax.set_xlabel("σ₁(W_Q) − σ₂(W_Q)")
        ax.set_ylabel("‖W_Q W_K − W_K W_Q‖_F")
        ax.tick_params(labelsize=8)
    if sc is not None:
        fig.colorbar(sc, ax=list(axes[: len(heads)]), label=colour_label, shrink=0.8)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def fourier_norms(freqs: np.ndarray, norms: np.ndarray, keys: list[int], *, title: str) -> Figure:
    fig = _new_figure(9, 3.4)
    ax = fig.subplots()
    colours = ["#d62728" if int(f) in keys else "#7f7f7f" for f in freqs]
    ax.bar(freqs, norms, color=colours)
    ax.set_xlabel("frequency k (cycles over ℤ_p)")
    ax.set_ylabel("‖W_E Fourier component‖ (weight units)")
    return _finish(fig, [ax], title)


def progress_measures(progress: pd.DataFrame, events: dict, *, title: str) -> Figure:
    """Gini of the Fourier norms, ‖θ‖², and the restricted / excluded losses where they were computed."""
    has_loss = progress[["restricted_loss", "excluded_loss"]].notna().any().any()
    fig = _new_figure(10, 3.6)
    axes = fig.subplots(1, 3 if has_loss else 2)
    axes[0].plot(progress["step"], progress["gini"], color="#1f77b4")
    axes[0].set_ylabel("Gini of Fourier norms")
    axes[1].plot(progress["step"], progress["weight_norm_sq"], color="#2ca02c")
    axes[1].set_ylabel("‖θ‖² (squared weight units)")
    if has_loss:
        axes[2].plot(progress["step"], progress["restricted_loss"], label="restricted loss", color="#9467bd")
        axes[2].plot(progress["step"], progress["excluded_loss"], label="excluded loss", color="#8c564b")
        axes[2].set_yscale("log")
        axes[2].set_ylabel("cross-entropy (nats, log)")
    for ax in axes:
        ax.set_xlabel("training step")
        _events(ax, events, ("grok_step",))
    return _finish(fig, axes, title)


def pair_panels(pairs: list[tuple[str, dict]], *, title: str) -> Figure:
    """Columns = runs (e.g. wd 1 and wd 0, same seed); rows = test accuracy, trunk σ₂/σ₃, defect."""
    fig = _new_figure(4.6 * len(pairs), 8)
    axes = fig.subplots(3, len(pairs), squeeze=False, sharex="col")
    for j, (label, run) in enumerate(pairs):
        ev = run["events"]
        axes[0, j].set_title(label, fontsize=10)
        for task, df in run["curves"].sort_values("step").groupby("task"):
            axes[0, j].plot(df["step"], df["test_acc"], label=f"test acc {task}")
        edge = run.get("edge")
        if edge is not None and not edge.empty:
            t = edge[(edge["scope"] == "trunk") & (edge["metric"] == "ratio_23")]
            axes[1, j].plot(t["step"], t["value"], color="#2ca02c", label="σ₂/σ₃ (trunk)")
        d = run.get("defect")
        if d is not None and not d.empty:
            axes[2, j].plot(d["step"], d["defect_median"], color="#d62728", label="defect D (median)")
            axes[2, j].set_yscale("log")
        for ax in axes[:, j]:
            _events(ax, ev, ("grok_step", "gap_open_step", "defect_onset_step"))
        axes[2, j].set_xlabel("training step")
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("σ₂/σ₃ of update Gram")
    axes[2, 0].set_ylabel("commutator defect D")
    return _finish(fig, axes, title)


def lead_time_scaling(df: pd.DataFrame, fits: pd.DataFrame, *, title: str) -> Figure:
    """log–log lead time against grokking step, one colour per weight decay, with the fitted power law."""
    fig = _new_figure(6, 4.6)
    ax = fig.subplots()
    ok = df[df["grok_step"].notna() & df["lead_time"].notna()]
    ok = ok[(ok["lead_time"].astype(float) > 0)]
    for i, (wd, grp) in enumerate(ok.groupby("weight_decay")):
        c = HIGHLIGHT_COLOURS[i % len(HIGHLIGHT_COLOURS)]
        t, ell = grp["grok_step"].astype(float), grp["lead_time"].astype(float)
        ax.scatter(t, ell, color=c, label=f"wd {wd:g}")
        fit = fits[fits["weight_decay"] == wd]
        if len(fit) and np.isfinite(fit["alpha"].iloc[0]):
            a, pre, r2 = fit[["alpha", "prefactor", "r2"]].iloc[0]
            xs = np.geomspace(t.min(), t.max(), 50)
            ax.plot(xs, pre * xs**a, color=c, label=f"ℓ ∝ t^{a:.2f} (R² {r2:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("grokking step t_grok (log)")
    ax.set_ylabel("lead time ℓ = t_grok − t_onset (steps, log)")
    return _finish(fig, [ax], title)
