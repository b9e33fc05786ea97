"""Lifecycle-of-the-spectral-edge measures from a run's snapshots (arXiv 2604.07380 and the spectral-edge
replication on Dyck/SCAN; docs/methods.md, "Grokking II: the published recipes").

Both measures read the attention matrices only (every W_Q, W_K, W_V, W_O, cross-attention included),
flattened into one vector θ per snapshot, and the updates δ_t = θ_t − θ_{t−1} between snapshots; the
window Gram statistics come from `headscreen.spectral.gram` (no second Gram implementation).

* `g23_compression`: g₂₃ = λ₂ − λ₃ of the rolling update Gram (window W: 3 on Dyck, 5 on SCAN in the
  study) at every window; with t_grok the first evaluation with test accuracy ≥ 0.95 (the replication's
  rule), the compression is max g₂₃ over windows ending at or before t_grok divided by g₂₃ of the last such
  window (published: 33× Dyck, 43× SCAN). A run that never groks gives peak / final, as the study does.
  Windows are full (the study also uses shorter windows at the very start).
* `gradient_share`: AdamW's update splits into θ_{t+1} = θ_t(1 − ηλ) − η·u_t; over N steps between two
  snapshots the weight-decay part is approximated by −ηλN(θ_prev + θ_cur)/2 (trapezoid) and the gradient
  part is the rest. v₁ = the top right singular vector of the window's stacked total updates; the share is
  mean⟨δ_grad, v₁⟩² / (mean⟨δ_grad, v₁⟩² + mean⟨δ_wd, v₁⟩²) over the window (published on Dyck: 97.6%
  before grokking, 5.3% at grokking).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from headscreen.grokking.analysis.detect import grok_step
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.spectral.gram import gram_stats, update_gram
from headscreen.spectral.paramspace import flatten, top_right_singular

ATTENTION_LEAVES = ("W_Q", "W_K", "W_V", "W_O")
LIFECYCLE_GROK_ACC = 0.95
PUBLISHED = {"g23_compression": {"dyck": 33.0, "scan": 43.0},
             "gradient_share": {"dyck": {"before": 0.976, "at": 0.053}, "scan": {"before": 0.887, "at": 0.002}}}


def attention_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of every attention matrix (W_Q/W_K/W_V/W_O; biases excluded) of a state dict, in name order."""
    keys = sorted(k for k in state if k.rsplit(".", 1)[-1] in ATTENTION_LEAVES)
    if not keys:
        raise ValueError("the snapshot holds no attention matrices (W_Q/W_K/W_V/W_O); is it a grok model?")
    return keys


def attention_vector(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every attention matrix of a snapshot's state dict, flattened in name order (float64) [P]."""
    return flatten((state[k] for k in attention_keys(state)), torch.float64)


def _trajectory(run_dir: Path) -> tuple[list[int], torch.Tensor]:
    traj = Trajectory(run_dir)
    steps = traj.steps
    if len(steps) < 3:
        raise ValueError(f"{run_dir}: {len(steps)} snapshots; the lifecycle measures need at least 3")
    return steps, torch.stack([attention_vector(traj.load(s)) for s in steps])


def _grok(run_dir: Path) -> int | None:
    c = pd.read_parquet(run_dir / "curves.parquet").sort_values("step")
    return grok_step(c["step"].to_numpy(), c["test_acc"].to_numpy(), LIFECYCLE_GROK_ACC)


def g23_series(steps: list[int], thetas: torch.Tensor, window: int) -> pd.DataFrame:
    """g₂₃ of every full window of `window` updates, keyed by the step its last update ends at."""
    deltas = thetas[1:] - thetas[:-1]  # [T-1, P]
    if len(deltas) < window:
        raise ValueError(f"{len(deltas)} updates cannot fill a window of {window}; take more snapshots")
    windows = torch.stack([deltas[i - window:i] for i in range(window, len(deltas) + 1)])  # [n, W, P]
    g23 = gram_stats(update_gram(windows)).g_23
    return pd.DataFrame({"step": steps[window:], "g23": g23.numpy()})


def g23_compression(run_dir: str | Path, window: int) -> dict:
    run = Path(run_dir)
    steps, thetas = _trajectory(run)
    series = g23_series(steps, thetas, window)
    t = _grok(run)
    before = series[series["step"] <= t] if t is not None else series
    if before.empty:
        return {"status": "cannot test", "why": f"grokking at step {t} precedes the first full window "
                f"(step {int(series['step'].iloc[0])})", "grok_step": t}
    peak = before.loc[before["g23"].idxmax()]
    at = before.iloc[-1]
    ratio = float(peak["g23"] / at["g23"]) if at["g23"] > 0 else float("inf")
    return {"status": "done", "grok_step": t, "window": window, "peak_step": int(peak["step"]),
            "peak_g23": float(peak["g23"]), "at_step": int(at["step"]), "at_g23": float(at["g23"]),
            "compression": ratio}


def _share_at(steps: list[int], thetas: torch.Tensor, end: int, window: int, lr: float, wd: float) -> dict:
    """The gradient share of v₁'s update energy in the window of `window` intervals ending at index `end`."""
    lo = max(1, end - window + 1)
    idx = list(range(lo, end + 1))
    total = torch.stack([thetas[i] - thetas[i - 1] for i in idx])  # [w, P]
    n = torch.tensor([steps[i] - steps[i - 1] for i in idx], dtype=torch.float64)[:, None]
    wd_part = -lr * wd * n * (torch.stack([thetas[i - 1] for i in idx]) + torch.stack([thetas[i] for i in idx])) / 2
    grad_part = total - wd_part
    v1 = top_right_singular(total, 1)[0]  # total is float64 (_trajectory)
    ge, we = float((grad_part @ v1).pow(2).mean()), float((wd_part @ v1).pow(2).mean())
    return {"step": steps[end], "grad_share": ge / (ge + we) if ge + we > 0 else float("nan")}


def gradient_share(run_dir: str | Path, window: int = 5) -> dict:
    """The share before grokking (the window ending at the snapshot nearest t_grok / 2) and at grokking
    (the window ending at the snapshot nearest t_grok); t_grok: first test accuracy ≥ 0.95."""
    run = Path(run_dir)
    cfg = json.loads((run / "manifest.json").read_text())["config"]
    steps, thetas = _trajectory(run)
    t = _grok(run)
    if t is None:
        return {"status": "cannot test", "why": "the run did not reach test accuracy 0.95", "grok_step": None}
    near = [int(np.argmin([abs(s - x) for s in steps])) for x in (t / 2, t)]
    if near[0] < 1:
        return {"status": "cannot test", "why": f"no update interval before step {t / 2:g}", "grok_step": t}
    before, at = (_share_at(steps, thetas, i, window, float(cfg["lr"]), float(cfg["weight_decay"])) for i in near)
    return {"status": "done", "grok_step": t, "window": window, "before": before, "at": at}
