"""Hand-built grok run directories in the run format (docs/run-format.md), without training.

The trajectory is a real GrokTransformer's state_dict moved along a planted path: isotropic random
updates, then from `switch` on rank-2 rotating trunk updates; the embedding W_E[:p] gains a planted
Fourier frequency over time. Curves and defect are synthetic with known event steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from headscreen.grokking.analysis.edge import trunk_names
from headscreen.grokking.models.transformer import ModelSpec, build_model
from headscreen.rundir.store import RunStore, write_json

SPEC = ModelSpec(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32)


def make_run(root: Path, *, p: int = 13, n_snap: int = 30, every: int = 20, switch: int = 18,
             planted: int = 3, grok_at: int | None = 400, mem_at: int = 60, onset_at: int | None = 240,
             weight_decay: float = 1.0, seed: int = 0, lr: float = 1e-3, tasks=("add",)) -> Path:
    root = Path(root)
    config = {"tasks": list(tasks), "p": p, "train_frac": 0.5, "model": SPEC.to_dict(), "lr": lr,
              "weight_decay": weight_decay, "seed": seed, "snapshot_every": every}
    with RunStore.open(root, {"kind": "grok", "config": config, "seeds": {"seed": seed}}):
        pass
    model = build_model(SPEC, p, tasks, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    names = trunk_names(sd)
    dirs = {n: torch.linalg.qr(torch.randn(sd[n].numel(), 2, generator=g))[0].T for n in names}
    x = torch.arange(p, dtype=torch.float32)
    wave = torch.stack([torch.cos(2 * math.pi * planted * x / p), torch.sin(2 * math.pi * planted * x / p)], 1)
    emb_dirs = torch.randn(2, SPEC.d_model, generator=g)
    traj = root / "trajectory"
    entries = []
    steps = [i * every for i in range(n_snap)]
    for i, step in enumerate(steps):
        if i > 0:
            for n in names:
                upd = 0.002 * torch.randn(sd[n].numel(), generator=g)
                if i >= switch:
                    upd += 0.2 * (math.cos(0.7 * i) * dirs[n][0] + math.sin(0.7 * i) * dirs[n][1])
                sd[n] = sd[n] + upd.view_as(sd[n])
            sd["embed.W_E"][:p] += 0.05 * wave @ emb_dirs
        folder = traj / f"step_{step:09d}"
        folder.mkdir(parents=True, exist_ok=True)
        model.load_state_dict(sd)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        write_json(folder / "config.json", model.hf_config())
        entries.append({"step": step, "tokens": None, "path": folder.name})
    write_json(traj / "series.json", {"checkpoints": entries, "complete": True})
    eval_steps = np.arange(0, steps[-1] + 1, 10)
    rows = []
    for task in tasks:
        for s in eval_steps:
            rows.append({"step": int(s), "task": task, "train_loss": 0.1, "test_loss": 1.0,
                         "train_acc": 1.0 if s >= mem_at else 0.5,
                         "test_acc": 0.99 if grok_at is not None and s >= grok_at else 0.1})
    pd.DataFrame(rows).to_parquet(root / "curves.parquet", index=False)
    dsteps = np.arange(0, steps[-1] + 1, 20)
    d = np.where((onset_at is not None) & (dsteps >= (onset_at or 0)), 80.0, 2.0) + 0.01 * np.arange(dsteps.size)
    pd.DataFrame({"step": dsteps, "defect_median": d, "defect_q25": d * 0.9, "defect_q75": d * 1.1,
                  "n_pairs": 9}).to_parquet(root / "defect.parquet", index=False)
    return root
