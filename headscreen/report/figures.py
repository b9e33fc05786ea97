"""One function per report figure; each returns a matplotlib Figure (Agg backend, never shown).

The callers pass the title: a sentence, computed from the data, that says what the reader should see.
Axes are labelled with units.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from headscreen.heads import head_label
from headscreen.report.content import human_count  # noqa: E402

CLASS_COLOURS = {
    "induction": "#d62728", "previous": "#1f77b4", "duplicate": "#9467bd", "self": "#8c564b",
    "bos": "#7f7f7f", "local": "#2ca02c",
}
HIGHLIGHT_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

FINGERPRINT_LABELS = {
    "ratio_12": "σ₁/σ₂ of update Gram (ratio)",
    "ratio_23": "σ₂/σ₃ of update Gram (ratio)",
    "kstar": "k* spectral edge (index)",
    "pr": "participation ratio (effective rank)",
    "update_norm": "update norm ‖δθ‖ (weight units)",
}


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _wrap(text: str, width_in: float, fontsize: float = 11) -> str:
    """Wrap a title to the figure's width (about 1.6 characters per inch per point of font size / 10)."""
    return textwrap.fill(text, max(30, int(width_in * 110 / fontsize)))


def _tokens_tick(value: float, _pos=None) -> str:
    return human_count(value) or ""


def _annotate_grid(ax, values: np.ndarray, fmt_cell, white_text) -> None:
    """Write each cell's value; `white_text(v)` says where the cell is dark enough for white text."""
    n_layers, n_heads = values.shape
    if n_layers * n_heads > 144:  # a 12 x 12 grid; beyond it the colours carry the values
        return
    size = 7 if n_heads <= 8 else 5
    for i in range(n_layers):
        for j in range(n_heads):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            ax.text(j, i, fmt_cell(v), ha="center", va="center", fontsize=size,
                    color="white" if white_text(v) else "black")


def _selectivity_label(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def selectivity_heatmaps(grids: dict[str, np.ndarray], *, threshold: float, title: str) -> Figure:
    """One layer × head panel per class, log colour scale; cells at or above `threshold` are outlined."""
    classes = list(grids)
    nrows, ncols = _grid(len(classes))
    n_layers, n_heads = next(iter(grids.values())).shape
    panel_w = max(2.8, 0.32 * n_heads + 1.2)
    panel_h = max(2.2, 0.28 * n_layers + 1.0)
    fig = _new_figure(panel_w * ncols + 1.0, panel_h * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    finite = np.concatenate([g[np.isfinite(g)].ravel() for g in grids.values()])
    vmax = max(100.0, float(finite.max()) if finite.size else 100.0)
    vmin = max(0.1, min(1.0, float(finite[finite > 0].min()) if (finite > 0).any() else 1.0))
    norm = LogNorm(vmin=vmin, vmax=vmax, clip=True)
    image = None
    for ax, cls in _panels(axes, classes):
        g = grids[cls]
        image = ax.imshow(np.where(g > 0, g, vmin), norm=norm, cmap="magma", aspect="auto")
        _annotate_grid(ax, g, _selectivity_label, lambda v: norm(v) < 0.55)
        for i, j in zip(*np.nonzero(np.nan_to_num(g) >= threshold), strict=True):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#00e5ff", linewidth=2))
        n_hits = int((np.nan_to_num(g) >= threshold).sum())
        name = "first token (BOS)" if cls == "first" else cls
        ax.set_title(f"{name}: {n_hits} head{'s' if n_hits != 1 else ''} ≥ {threshold:g}×", fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.tick_params(labelsize=7)
    cbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9)
    cbar.set_label("selectivity (× baseline attention, log scale)")
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def emergence_timeline(records: list[dict], *, step_tokens: dict[int, float], title: str,
                       max_rows: int = 30) -> Figure:
    """Top: how many heads of each class have emerged by each step. Bottom: each head's emergence step.

    The bottom panel lists every head when at most `max_rows` emerged, else the induction and
    previous-token heads only (at most `max_rows`, earliest first).
    """
    emerged = [r for r in records if r["step"] is not None]
    classes = sorted({r["class"] for r in emerged}, key=lambda c: (c not in ("induction", "previous"), c))
    rows = emerged if len({(r["layer"], r["head"]) for r in emerged}) <= max_rows else [
        r for r in emerged if r["class"] in ("induction", "previous")]
    first = {}
    for r in rows:
        h = (r["layer"], r["head"])
        first[h] = min(first.get(h, r["step"]), r["step"])
    heads = sorted(first, key=lambda h: (first[h], h))[:max_rows]
    shown = [r for r in rows if (r["layer"], r["head"]) in set(heads)]
    y_of = {h: i for i, h in enumerate(heads)}
    fig = _new_figure(8.0, 2.6 + (max(1.2, 0.3 * len(heads) + 0.8) if heads else 0))
    axes = fig.subplots(2 if heads else 1, 1, sharex=True, squeeze=False,
                        height_ratios=[2.2, max(1.2, 0.3 * len(heads) + 0.4)] if heads else None)[:, 0]
    ax = axes[0]
    all_steps = sorted(set(step_tokens) | {r["step"] for r in emerged})
    for cls in classes:
        steps = np.sort([r["step"] for r in emerged if r["class"] == cls])
        counts = [int(np.searchsorted(steps, s, side="right")) for s in all_steps]
        ax.step(all_steps, counts, where="post", color=CLASS_COLOURS.get(cls, "#333333"), linewidth=2,
                label=f"{cls} ({steps.size})")
    ax.set_ylabel("heads emerged")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="class (heads)", fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    if heads:
        axh = axes[1]
        for cls in classes:
            rs = [r for r in shown if r["class"] == cls]
            if rs:
                axh.scatter([r["step"] for r in rs], [y_of[(r["layer"], r["head"])] for r in rs], s=45, zorder=3,
                            color=CLASS_COLOURS.get(cls, "#333333"), edgecolor="black", linewidth=0.5)
        for i in range(len(heads)):
            axh.axhline(i, color="#dddddd", linewidth=0.8, zorder=1)
        axh.set_yticks(range(len(heads)), [head_label(h) for h in heads], fontsize=8)
        axh.set_ylim(len(heads) - 0.5, -0.5)
        axh.set_ylabel("head")
        if rows is not emerged:
            axh.set_title("induction and previous-token heads", fontsize=9)
    axes[-1].set_xlabel("training step")
    _tokens_axis(ax, step_tokens)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def _extrapolating(xp: np.ndarray, fp: np.ndarray):
    """Piecewise-linear map through (xp, fp), continued linearly past both ends (np.interp clamps)."""
    def f(x):
        x = np.asarray(x, dtype=float)
        y = np.interp(x, xp, fp)
        lo, hi = x < xp[0], x > xp[-1]
        y = np.where(lo, fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0]), y)
        return np.where(hi, fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), y)
    return f


def _tokens_axis(ax, step_tokens: dict[int, float]) -> None:
    """A top axis in tokens seen, when tokens are known and increase with the step."""
    if len(step_tokens) < 2:
        return
    steps = np.array(list(step_tokens), dtype=float)
    toks = np.array(list(step_tokens.values()), dtype=float)
    if not (np.all(np.diff(steps) > 0) and np.all(np.diff(toks) > 0)):
        return
    top = ax.secondary_xaxis("top", functions=(_extrapolating(steps, toks), _extrapolating(toks, steps)))
    top.set_xlabel("tokens seen")
    top.xaxis.set_major_formatter(FuncFormatter(_tokens_tick))


def fingerprint_curves(panels: dict[str, pd.DataFrame | None], *, highlight: dict[tuple[int, int], str],
                       x_label: str, title: str) -> Figure:
    """Per metric: the highlighted heads as lines, every other head as median and 10–90% band.

    `panels` maps metric -> long frame (x, layer, head, value), or None when the metric is not stored.
    """
    metrics = list(panels)
    nrows, ncols = _grid(len(metrics))
    fig = _new_figure(4.2 * ncols, 3.0 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colours = {h: HIGHLIGHT_COLOURS[i % len(HIGHLIGHT_COLOURS)] for i, h in enumerate(sorted(highlight))}
    handles: dict[str, object] = {}
    for ax, metric in _panels(axes, metrics):
        df = panels[metric]
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel(FINGERPRINT_LABELS.get(metric, metric), fontsize=8)
        if df is None or df.empty:
            ax.text(0.5, 0.5, f"{metric} not stored\nin this run", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        is_hl = pd.Series([(lh in highlight) for lh in zip(df["layer"], df["head"], strict=True)], index=df.index)
        others = df[~is_hl]
        if not others.empty:
            q = others.groupby("x")["value"].quantile([0.1, 0.5, 0.9]).unstack()
            band = ax.fill_between(q.index, q[0.1], q[0.9], color="#bbbbbb", alpha=0.6, linewidth=0)
            (line,) = ax.plot(q.index, q[0.5], color="#555555", linewidth=1.5)
            handles.setdefault("other heads: median", line)
            handles.setdefault("other heads: 10–90%", band)
        for h, label in sorted(highlight.items()):
            sub = df[(df["layer"] == h[0]) & (df["head"] == h[1])].sort_values("x")
            if sub.empty:
                continue
            (line,) = ax.plot(sub["x"], sub["value"], color=colours[h], linewidth=2, marker="o", markersize=3)
            handles.setdefault(label, line)
        ax.tick_params(labelsize=8)
    _legend(fig, axes, handles, "heads")
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def ablation_null(draws: dict[str, np.ndarray], *, circuit: dict[str, float], clean: dict[str, float],
                  upper: dict[str, float], title: str) -> Figure:
    """Per metric: histogram of the matched-random ablations with the circuit, clean and upper-bound values."""
    metrics = list(draws)
    nrows, ncols = _grid(len(metrics))
    fig = _new_figure(3.9 * ncols, 2.9 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles: dict[str, object] = {}
    for ax, metric in _panels(axes, metrics):
        values = np.asarray(draws[metric], dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            hist = ax.hist(values, bins=min(20, max(5, values.size // 2)), color="#9ecae1", edgecolor="#3182bd")
            handles.setdefault(f"matched-random ablations (n = {values.size})", hist[2][0])
        for label, table, style in (("circuit ablated", circuit, dict(color="#d62728", linewidth=2.5)),
                                    ("clean (no ablation)", clean, dict(color="black", linestyle="--")),
                                    ("upper bound (whole layers)", upper, dict(color="#636363", linestyle=":"))):
            if metric in table and table[metric] is not None and np.isfinite(table[metric]):
                handles.setdefault(label, ax.axvline(table[metric], **style))
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(f"{metric} after ablation ({_metric_unit(metric)})", fontsize=8)
        ax.set_ylabel("random draws (count)", fontsize=8)
        ax.tick_params(labelsize=8)
    _legend(fig, axes, handles, "conditions")
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a panel grid for n panels, at most `max_cols` wide."""
    ncols = min(max_cols, n)
    return math.ceil(n / ncols), ncols


def _panels(axes: np.ndarray, items):
    """(axis, item) pairs in row-major order; the axes left over are hidden (the legend may use one)."""
    flat = list(axes.ravel())
    for ax in flat[len(items):]:
        ax.set_visible(False)
    return zip(flat, items, strict=False)


def _legend(fig: Figure, axes: np.ndarray, handles: dict, title: str) -> None:
    """The legend in the first unused panel, else below the panels."""
    if not handles:
        return
    spare = [ax for ax in axes.ravel() if not ax.get_visible()]
    if spare:
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(list(handles.values()), list(handles), loc="center", fontsize=9, title=title)
    else:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(4, len(handles)),
                   fontsize=8)


def _metric_unit(metric: str) -> str:
    m = metric.lower()
    if m.startswith("top") or "acc" in m:
        return "fraction correct"
    if m in ("ce", "loss", "cross_entropy") or "loss" in m:
        return "nats"
    if "logit" in m:
        return "logit units"
    return "metric units"


def patching_heatmap(grid: np.ndarray, *, title: str) -> Figure:
    """Layer × head denoising-patching score: 1 = patching the head restores the clean logit difference."""
    n_layers, n_heads = grid.shape
    fig = _new_figure(max(6.0, 0.45 * n_heads + 2.6), max(3.2, 0.38 * n_layers + 1.8))
    ax = fig.subplots()
    finite = grid[np.isfinite(grid)]
    span = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    image = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto")
    _annotate_grid(ax, grid, lambda v: f"{v:.2f}", lambda v: abs(norm(v) - 0.5) > 0.3)
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    cbar = fig.colorbar(image, ax=ax)
    cbar.set_label("score (share of clean logit\ndifference restored)")
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def copying_losses(steps: np.ndarray, loss_first: np.ndarray, loss_second: np.ndarray, *,
                   flagged: np.ndarray, title: str) -> Figure:
    """Loss on the first and second copy of a repeated span per checkpoint; flagged steps marked."""
    fig = _new_figure(7.0, 3.2)
    ax = fig.subplots()
    ax.plot(steps, loss_first, marker="o", markersize=3, label="first occurrence", color="#636363")
    ax.plot(steps, loss_second, marker="o", markersize=3, label="second occurrence (copyable)", color="#d62728")
    if flagged.any():
        ax.scatter(steps[flagged], loss_second[flagged], s=110, facecolor="none", edgecolor="#ff7f0e", linewidth=2,
                   label="copying without canonical induction heads", zorder=4)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend(fontsize=8)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig
