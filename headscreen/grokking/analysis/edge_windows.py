"""Window analyses of a modular grok run: Fourier / discrete-log modes of the edge directions and the
linear-centroid coupling, both over the W + 1 snapshots of one window (docs/methods.md).

The window is the trunk window at the σ₂/σ₃ peak (the spectral edge at its strongest), or the first
full window when the peak lies earlier. Trunk = the tensors of `edge.trunk_names`. For each task head t:

* modes: the top-2 right singular vectors of the window's trunk updates (the edge directions) induce
  functions J_t(a, b)·v over the p × p grid at the window's last snapshot; their dominant (k_a, k_b) modes
  ("fourier" for add/sub, "dlog" for mul, none for sq);
* coupling: the task's full-batch training-loss gradients at the W snapshots that start the window's
  updates, and the W updates themselves, each against the task's centroid at the last snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from headscreen.grokking.analysis.coupling import random_coupling, subspace_coupling
from headscreen.grokking.analysis.edge import trunk_names
from headscreen.grokking.analysis.modes import TASK_MODES, edge_direction_modes
from headscreen.spectral.paramspace import flatten, split_flat


def window_end_index(steps: np.ndarray, peak_step: int | None, window: int) -> int | None:
    """Index of the snapshot that ends the analysed window (None: fewer than W + 1 snapshots)."""
    if len(steps) < window + 1:
        return None
    i = int(np.searchsorted(steps, peak_step)) if peak_step is not None else len(steps) - 1
    return int(min(max(i, window), len(steps) - 1))


def _trunk_flat(model: torch.nn.Module, names: Sequence[str]) -> torch.Tensor:
    params = dict(model.named_parameters())
    return flatten((params[n] for n in names), torch.float64)


def _trunk_grad(model: torch.nn.Module, names: Sequence[str], loss: torch.Tensor) -> torch.Tensor:
    params = dict(model.named_parameters())
    return flatten(torch.autograd.grad(loss, [params[n] for n in names]), torch.float64)


def window_analyses(folders: Sequence[Path], config: dict, *, k: int = 2, top: int = 5,
                    n_random: int = 10) -> dict:
    """Modes and coupling per task over the snapshots `folders` (W + 1 of them, oldest first)."""
    from headscreen.grokking.models.transformer import load_model
    from headscreen.grokking.tasks.modular import make_dataset

    models = [load_model(f).train() for f in folders]
    names = trunk_names(dict(models[-1].named_parameters()))
    p = models[-1].p
    tasks = list(models[-1].tasks)
    data = make_dataset(tasks, p, config["train_frac"], config["seed"])
    x, y = data.train()
    flats = torch.stack([_trunk_flat(m, names) for m in models])
    deltas = flats[1:] - flats[:-1]  # [W, P]
    params = dict(models[-1].named_parameters())
    window_deltas = {n: d.float() for n, d in split_flat(deltas, {n: params[n].shape for n in names}).items()}
    out: dict = {"k": k, "P": int(deltas.shape[1]), "tasks": {}}
    for t, task in enumerate(tasks):
        entry: dict = {}
        kind = TASK_MODES.get(task)
        if kind is not None:
            entry["mode_kind"] = kind
            entry["edge_modes"] = edge_direction_modes(models[-1], p, window_deltas, kind, task=t, k=k, top=top)
        grads = torch.stack([_trunk_grad(m, names, F.cross_entropy(m(x)[:, t], y[:, t])) for m in models[:-1]])
        c = _trunk_grad(models[-1], names, models[-1](x)[:, t].sum(-1).mean())
        grad, upd = subspace_coupling(grads, c, k), subspace_coupling(deltas, c, k)
        rnd = random_coupling(c, k, n_random, seed=int(config.get("seed", 0)))
        entry["coupling"] = {"gradient_svd": grad, "update_svd": upd, "random": rnd,
                             "gradient_over_random": grad / rnd, "update_over_random": upd / rnd}
        out["tasks"][task] = entry
    return out
