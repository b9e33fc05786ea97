"""Report sections for the grokking-II analyses: the Li₂ lock-in (li2 runs) and the window analyses of a
modular run (edge-direction Fourier / discrete-log modes, linear-centroid coupling). Each builder returns
None where its analysis does not apply, and grok_sections drops it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from headscreen.report.content import Section, Table, figure_to_png  # noqa: E402
from headscreen.report.figures import _new_figure, _wrap  # noqa: E402
from headscreen.rundir.jsonsafe import json_safe  # noqa: E402


def lockin_figure(table, lockin: dict, grok_step, *, title: str) -> Figure:
    """r₂₃ of the per-epoch update Gram (log), τ and the lock-in epoch; sign-match fraction below."""
    fig = _new_figure(9, 6)
    ax, ax2 = fig.subplots(2, 1, sharex=True)
    t = table.dropna(subset=["r_23"])
    ax.semilogy(t["epoch"], t["r_23"], color="#2ca02c", label="σ₂/σ₃ (W = 10)")
    ax.semilogy(t["epoch"], t["r_12"], color="#ff7f0e", alpha=0.6, label="σ₁/σ₂")
    if lockin.get("tau") is not None:
        ax.axhline(lockin["tau"], color="#d62728", linestyle="--", label=f"τ = {lockin['tau']:.3g}")
    if lockin.get("epoch") is not None:
        for a in (ax, ax2):
            a.axvline(lockin["epoch"], color="#d62728", linewidth=1.2)
    if grok_step is not None:
        for a in (ax, ax2):
            a.axvline(grok_step, color="black", linewidth=1.0)
    ax.set_ylabel("singular-value ratio")
    ax.legend(fontsize=8, frameon=False)
    s = table.dropna(subset=["sign_match"]) if "sign_match" in table else table.iloc[:0]
    ax2.plot(s["epoch"], s["sign_match"], color="#9467bd", marker=".", label="sign-match fraction")
    ax2.set_ylabel("sign-match fraction")
    ax2.set_xlabel("epoch (black: grokking, red: lock-in)")
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def li2_section(run) -> Section | None:
    if run.grok.get("family") != "li2":
        return None
    lock, li2 = run.grok.get("lockin", {}), run.grok.get("li2", {})
    sec = Section(key="li2_lockin", title="Li₂ stage-III lock-in",
                  intro="r₂₃ = σ₂/σ₃ of the per-epoch update Gram of (W_a, W_b, V), W = 10; the detector fires at "
                        "the first local r₂₃ peak above τ (docs/methods.md).")
    path = run.path / "li2.parquet"  # written by headscreen.grokking.li2.run (docs/run-format.md)
    table = pd.read_parquet(path) if path.is_file() else None
    if table is None:
        sec.notices.append("li2.parquet is missing.")
    else:
        when = f"fires at epoch {lock['epoch']} (rank {lock['rank']})" if lock.get("fired") else (
            "does not fire" if lock.get("tau") is not None else "has no τ (pass --tau)")
        sec.figures.append(figure_to_png(lockin_figure(table, lock, run.grok.get("grok_step"),
                                                       title=f"The lock-in detector {when}"),
                                         f"{run.slug}-li2-lockin", "r23 of the per-epoch update Gram and sign match"))
    rows = [[f"lockin.{k}", v] for k, v in lock.items()] + [[f"li2.{k}", v] for k, v in li2.items()]
    sec.tables.append(Table(["Quantity", "Value"], rows))
    sec.data = json_safe({"lockin": lock, "li2": li2})
    return sec


def window_figure(wa: dict, *, title: str) -> Figure:
    """Per task: dominant-mode shares of the edge directions (left), coupling relative to random (right, log)."""
    tasks = list(wa["tasks"])
    fig = _new_figure(10, 3.2 * len(tasks) + 0.8)
    axes = np.atleast_2d(fig.subplots(len(tasks), 2))
    for row, task in zip(axes, tasks, strict=True):
        entry = wa["tasks"][task]
        ax = row[0]
        for j, d in enumerate(entry.get("edge_modes", [])):
            labels = [f"({m['k_a']},{m['k_b']})" for m in d["modes"]]
            x = np.arange(len(labels)) + 0.4 * j
            ax.bar(x, [m["share"] for m in d["modes"]], width=0.38, label=f"direction {d['direction']}")
            for xi, lab in zip(x, labels, strict=True):
                ax.text(xi, 0.01, lab, rotation=90, fontsize=7, ha="center", va="bottom")
        ax.set_ylabel(f"{task}: mode share ({entry.get('mode_kind', 'no basis')})")
        ax.set_xticks([])
        if entry.get("edge_modes"):
            ax.legend(fontsize=7, frameon=False)
        c = entry["coupling"]
        row[1].bar(["gradient SVD", "update SVD", "random"], [c["gradient_svd"], c["update_svd"], c["random"]],
                   color=["#1f77b4", "#ff7f0e", "#7f7f7f"])
        row[1].set_yscale("log")
        row[1].set_ylabel("coupling (× 1/P)")
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=11)
    return fig


def window_section(run) -> Section | None:
    wa = run.grok.get("window_analyses")
    if not wa:
        return None
    sec = Section(key="grok_window", title="Edge-direction modes and linear-centroid coupling",
                  intro=f"The trunk window of snapshots {wa['start_step']}–{wa['end_step']} (the σ₂/σ₃ peak): modes of "
                        "the functions the top-2 edge directions induce over the (a, b) grid, and the coupling of "
                        "each task's centroid with the gradient and update SVDs (docs/methods.md).")
    sec.figures.append(figure_to_png(window_figure(wa, title=f"Window ending at step {wa['end_step']}"),
                                     f"{run.slug}-window", "edge-direction mode shares and centroid coupling"))
    rows = []
    for task, e in wa["tasks"].items():
        c = e["coupling"]
        top = "; ".join(f"v{d['direction']}: ({d['modes'][0]['k_a']},{d['modes'][0]['k_b']}) "
                        f"{d['modes'][0]['share']:.2f}" for d in e.get("edge_modes", []) if d["modes"])
        rows.append([task, top or "–", round(c["gradient_over_random"], 2), round(c["update_over_random"], 2)])
    sec.tables.append(Table(["task", "top mode per direction (share)", "gradient SVD / random",
                             "update SVD / random"], rows))
    sec.data = json_safe(wa)
    return sec
