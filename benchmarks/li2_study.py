"""The Li₂ lock-in study: τ calibrated on control runs, then the detector over grokking seeds, the wd = 0
and sub-critical controls, and the ReLU network; plus the linear-centroid coupling of one run.

Every run is trained in memory (train_li2), one process per run with one torch thread.
Controls (docs/methods.md): "wd0" = the same recipe with weight_decay 0; "subcritical" = the same recipe
with a training fraction below 2.7482·ln M / M. τ = margin × the largest post-skip r₂₃ of the
*calibration* controls (seeds disjoint from the evaluated ones), so the evaluated controls are out of sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from headscreen.grokking.analysis.coupling import random_coupling, subspace_coupling
from headscreen.grokking.li2.lockin import calibrate_tau, detect_lockin
from headscreen.grokking.li2.network import Li2Config, centroid, critical_fraction, li2_split, train_li2


def control_configs(base: Li2Config, subcritical_frac: float) -> dict[str, Li2Config]:
    if not subcritical_frac < critical_fraction(base.m):
        raise ValueError(f"subcritical_train_frac={subcritical_frac} is not below the critical fraction "
                         f"{critical_fraction(base.m):.3f} of M={base.m}; lower it")
    return {"wd0": base.replace(weight_decay=0.0), "subcritical": base.replace(train_frac=subcritical_frac)}


def _job(cfg_dict: dict) -> dict:
    torch.set_num_threads(1)
    cfg = Li2Config.from_dict(cfg_dict)
    hist = train_li2(cfg.replace(snapshot_every=0))
    edge = hist.edge()
    from headscreen.grokking.analysis.detect import grok_step

    c = hist.curves
    sign = hist.sign
    return {"r23": edge["r_23"].to_numpy(), "kstar": edge["kstar"].to_numpy(), "epochs": edge["epoch"].to_numpy(),
            "grok_step": grok_step(c["epoch"], c["test_acc"], 0.95), "final_test_acc": float(c["test_acc"].iloc[-1]),
            "sign_epochs": sign["epoch"].to_numpy() if len(sign) else np.array([]),
            "sign_match": sign["sign_match"].to_numpy() if len(sign) else np.array([])}


def run_configs(configs: dict[str, Li2Config], workers: int = 2, progress: bool = True) -> dict[str, dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = {name: pool.submit(_job, cfg.to_dict()) for name, cfg in configs.items()}
        return {name: f.result() for name, f in tqdm(futs.items(), disable=not progress, desc="li2 runs")}


@dataclass(frozen=True)
class LockInStudy:
    tau: float
    runs: pd.DataFrame  # one row per run: group, seed, fired, epoch, r23, rank, grok_step, final_test_acc, ...
    series: dict[str, dict]  # the raw per-run series (r23, kstar, sign_match)

    def counts(self) -> dict[str, str]:
        return {g: f"{int(df.fired.sum())}/{len(df)}" for g, df in self.runs.groupby("group", sort=False)}


def lockin_study(base: Li2Config, seeds: Sequence[int], *, calibration_seeds: Sequence[int],
                 subcritical_frac: float, margin: float = 1.05, workers: int = 2,
                 progress: bool = True) -> LockInStudy:
    """Calibrate τ on the controls of `calibration_seeds`; detect on x² (base), ReLU and both controls of `seeds`."""
    ctrl = control_configs(base, subcritical_frac)
    configs = {f"cal-{kind}-{s}": c.replace(seed=s) for kind, c in ctrl.items() for s in calibration_seeds}
    for s in seeds:
        configs[f"sqr-{s}"] = base.replace(seed=s, activation="sqr")
        configs[f"relu-{s}"] = base.replace(seed=s, activation="relu")
        for kind, c in ctrl.items():
            configs[f"{kind}-{s}"] = c.replace(seed=s)
    res = run_configs(configs, workers, progress)
    skip = base.detect_skip
    tau = calibrate_tau([r["r23"] for n, r in res.items() if n.startswith("cal-")], skip=skip, margin=margin)
    rows = []
    for name, r in res.items():
        if name.startswith("cal-"):
            continue
        group, seed = name.rsplit("-", 1)
        lock = detect_lockin(r["r23"], r["kstar"], r["epochs"], tau, skip=skip)
        i = skip + int(np.nanargmax(r["r23"][skip:]))
        sm = r["sign_match"]
        rows.append({"group": group, "seed": int(seed), "fired": lock.fired, "epoch": lock.epoch, "r23": lock.r23,
                     "rank": lock.rank, "r23_peak": float(r["r23"][i]), "r23_peak_epoch": int(r["epochs"][i]),
                     "kstar_at_peak": int(r["kstar"][i]), "grok_step": r["grok_step"],
                     "final_test_acc": r["final_test_acc"],
                     "sign_match_first": float(sm[0]) if sm.size else np.nan,
                     "sign_match_last": float(sm[-1]) if sm.size else np.nan})
    return LockInStudy(tau=tau, runs=pd.DataFrame(rows), series=res)


def li2_coupling(cfg: Li2Config, end_epoch: int, *, k: int = 2, n_random: int = 20) -> dict:
    """Linear-centroid coupling of one Li₂ run over the W epochs ending at `end_epoch`: the loss-gradient
    SVD and the Adam-update SVD against the centroid at `end_epoch`, and random k-dim bases."""
    w = cfg.window
    if not w <= end_epoch <= cfg.epochs:
        raise ValueError(f"end_epoch={end_epoch} must lie in [window={w}, epochs={cfg.epochs}]")
    hist = train_li2(cfg.replace(epochs=end_epoch, snapshot_every=0, sign_every=0),
                     record_grads=range(end_epoch - w, end_epoch))
    a, b, _, tr, _ = li2_split(cfg.m, cfg.train_frac, cfg.seed)
    c = centroid(hist.net, a[tr], b[tr])
    grad = subspace_coupling(hist.grads, c, k)
    upd = subspace_coupling(hist.updates, c, k)
    rnd = random_coupling(c, k, n_random, seed=cfg.seed)
    return {"end_epoch": end_epoch, "k": k, "P": int(c.numel()), "gradient_svd": grad, "update_svd": upd,
            "random": rnd, "gradient_over_random": grad / rnd, "update_over_random": upd / rnd,
            "gradient_over_update": grad / upd if upd > 0 else float("inf")}
