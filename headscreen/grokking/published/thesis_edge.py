"""The spectral-edge claim with the thesis's own table criteria (THESIS, arXiv 2603.28964, Table 7;
docs/methods.md, "The thesis table criteria"), on a grok run's snapshots.

As the study's replication script computes them (multitask-grokking, spectral/thesis_table7_replication.py):
* vectors θ_t: `attention` = every layer's W_Q, W_K, W_V, W_O flattened and concatenated (the script's
  Gram input); also `W_Q` (every layer's W_Q) and `trunk` (edge.trunk_names: attention and MLP matrices);
* rolling W = 10 uncentered update Gram over consecutive snapshots (headscreen.spectral.rolling_window_stats,
  exact, float64), g₂₃ = σ₂² − σ₃² per window, a window dated by its last snapshot;
* grokking: first evaluation with test accuracy ≥ 0.95;
* g₂₃ early = the largest g₂₃ of the windows ending before grokking (the script; its docstring says "at the
  earliest checkpoint", reported too as `g23_first`); g₂₃ at grokking = the last window ending at or before it;
* decline = early / grok; "declined" = decline > 1.5 (the script's test); `monotone` = g₂₃ never rises
  from the early window to the grokking window (the docstring's "is the decline monotone");
* k*_term = the signal-weighted k* (argmax_j (σ_j/Σσ)·σ_j/σ_{j+1}, all j) of the last window.
A run that never groks has no g₂₃ at grokking, so no decline: that is how the script's wd 0 runs count as
"no gap dynamics".
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from headscreen.grokking.analysis.edge import trunk_names
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.spectral.gram import rolling_window_stats

WINDOW = 10
GROK_THRESHOLD = 0.95
DECLINE_BAR = 1.5
_DECODER = re.compile(r"^blocks\.\d+\.attn\.W_([QKVO])$")
_PACKED = re.compile(r"^layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$")


def _layer(name: str) -> int:
    return int(name.split(".")[1])


def select(tensors: dict[str, torch.Tensor], which: str) -> torch.Tensor:
    """The flattened vector `which` (attention | W_Q | trunk) of one snapshot's state dict."""
    if which == "trunk":
        names = trunk_names(tensors)
        return torch.cat([tensors[n].reshape(-1).float() for n in names])
    parts = []
    for name in sorted(tensors, key=lambda n: (n.split(".")[1] if n.count(".") > 1 else "", n)):
        t = tensors[name]
        if (m := _DECODER.match(name)) and (which == "attention" or m.group(1) == "Q"):
            parts.append((_layer(name), "QKVO".index(m.group(1)), t.reshape(-1)))
        elif _PACKED.match(name):
            if name.endswith("in_proj_weight"):
                d = t.shape[1]
                for i in range(3 if which == "attention" else 1):
                    parts.append((_layer(name), i, t[i * d:(i + 1) * d].reshape(-1)))
            elif which == "attention":
                parts.append((_layer(name), 3, t.reshape(-1)))
    if not parts:
        raise ValueError(f"no attention weights in the snapshot (names like {sorted(tensors)[:4]}); "
                         f"`which` must be attention, W_Q or trunk, got {which!r}")
    return torch.cat([p.float() for _, _, p in sorted(parts, key=lambda x: (x[0], x[1]))])


def snapshot_vectors(run_dir: str | Path, which: str) -> tuple[np.ndarray, torch.Tensor]:
    """(steps [T], vectors [T, P]) of a run's snapshots."""
    traj = Trajectory(run_dir)
    steps = np.asarray(traj.steps)
    return steps, torch.stack([select(traj.load(int(s)), which) for s in steps])


def table_row(steps: np.ndarray, vectors: torch.Tensor, grok_step: int | None, *, window: int = WINDOW) -> dict:
    """The thesis table quantities of one trajectory (module docstring); NaN/None where undefined."""
    ws = rolling_window_stats(vectors, window, min_sigma_frac=0.0)
    end = steps[ws.end_index.numpy()]
    g = ws.stats.g_23.numpy()
    pre = end < grok_step if grok_step is not None else np.ones(end.size, bool)
    if not pre.any():
        pre = np.ones(end.size, bool)
    i_early = int(np.flatnonzero(pre)[np.argmax(g[pre])])
    out = {"grok_step": grok_step, "early_step": int(end[i_early]), "g23_early": float(g[i_early]),
           "g23_first": float(g[0]), "first_step": int(end[0]), "g23_grok": None, "grok_window_step": None,
           "decline": None, "decline_first": None, "declined": None, "monotone": None,
           "kstar_term": int(ws.stats.kstar_weighted[-1]), "n_windows": int(end.size)}
    if grok_step is not None and (end <= grok_step).any():
        i_grok = int(np.flatnonzero(end <= grok_step)[-1])
        gg = float(g[i_grok])
        out.update(g23_grok=gg, grok_window_step=int(end[i_grok]))
        if gg > 0:
            out.update(decline=out["g23_early"] / gg, decline_first=out["g23_first"] / gg)
            out["declined"] = out["decline"] > DECLINE_BAR
        seg = g[i_early:i_grok + 1]
        out["monotone"] = bool(seg.size >= 2 and np.all(np.diff(seg) <= 0))
    return out


def run_table(run_dir: str | Path, which: tuple[str, ...] = ("attention", "W_Q", "trunk"),
              grok_threshold: float = GROK_THRESHOLD) -> pd.DataFrame:
    """One row per vector kind for a run: the thesis quantities (grokking from curves.parquet)."""
    run = Path(run_dir)
    curves = pd.read_parquet(run / "curves.parquet")
    acc = curves.groupby("step")["test_acc"].min()
    hit = acc[acc >= grok_threshold]
    grok = int(hit.index[0]) if len(hit) else None
    rows = []
    for w in which:
        steps, vec = snapshot_vectors(run, w)
        rows.append({"run": run.name, "vector": w, **table_row(steps, vec, grok)})
    return pd.DataFrame(rows)


def sweep_table(sweep_dir: str | Path, which: tuple[str, ...] = ("attention", "W_Q", "trunk")) -> pd.DataFrame:
    """run_table for every run of a sweep with snapshots, plus its weight decay and our gap-open step
    (grok.json's gap_open_step where the run was analysed, else None)."""
    import json

    from headscreen.grokking.analysis.summary import sweep_runs

    frames = []
    for run in sweep_runs(sweep_dir):
        if not (run / "curves.parquet").is_file() or len(Trajectory(run).steps) < WINDOW + 1:
            continue
        t = run_table(run, which)
        cfg = json.loads((run / "manifest.json").read_text())["config"]
        grok = json.loads((run / "grok.json").read_text()) if (run / "grok.json").is_file() else {}
        t.insert(1, "weight_decay", float(cfg["weight_decay"]))
        t["complete"] = Trajectory(run).complete
        t["gap_open_step"] = grok.get("gap_open_step")
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per vector kind and weight-decay class: runs, grokked, declined (> 1.5×), monotone, k*_term = 2,
    and our rule's gap opening before grokking."""
    rows = []
    for (vec, with_wd), g in table.groupby(["vector", table["weight_decay"] > 0]):
        grokked = g["grok_step"].notna()
        gap = g["gap_open_step"].astype(float)
        before = gap.notna() & grokked & (gap < g["grok_step"].astype(float))
        rows.append({"vector": vec, "weight_decay": "> 0" if with_wd else "0", "runs": len(g),
                     "grokked": int(grokked.sum()), "declined": int((g["declined"] == True).sum()),  # noqa: E712
                     "monotone": int((g["monotone"] == True).sum()),  # noqa: E712
                     "kstar_term_2": int((g["kstar_term"] == 2).sum()),
                     "gap_opens_before_grokking": int(before.sum())})
    return pd.DataFrame(rows)
