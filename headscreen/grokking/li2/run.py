"""A Li₂ run directory (docs/run-format.md, "A Li₂ run") and the controls-calibrated lock-in summary.

    <run>/manifest.json        kind "grok", config = {"family": "li2", Li2Config fields, tasks, p, steps}
    <run>/trajectory/          snapshots every `snapshot_every` epochs (W_a, W_b, V; model_type headscreen-li2)
    <run>/curves.parquet       step (= epoch), task "add", train/test loss and accuracy
    <run>/li2.parquet          epoch, sigma_1..3, r_12, r_23, kstar (per window), sign_match (where measured)
    <run>/grok.json            the grok.json fields of a modular run + "lockin" and "li2"

A Li₂ run is fast (seconds), so it is not resumed: a complete run directory of the same config is read
back, any other one is recomputed (with force) or refused (RunStore's config check).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from headscreen.grokking.analysis.detect import curve_events
from headscreen.grokking.analysis.fourier import embedding_spectrum
from headscreen.grokking.analysis.grok_summary import GrokSummary
from headscreen.grokking.li2.lockin import detect_lockin
from headscreen.grokking.li2.network import Li2Config, Li2History, Li2Net, critical_fraction, train_li2
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.rundir.store import RunStore

MODEL_TYPE = "headscreen-li2"


def li2_manifest(cfg: Li2Config) -> dict:
    from headscreen.rundir.provenance import provenance

    config = {"family": "li2", **cfg.to_dict(), "tasks": ["add"], "p": cfg.m, "steps": cfg.epochs}
    return {"kind": "grok", "config": config, "seeds": {"seed": cfg.seed}, "provenance": provenance()}


def hf_config(cfg: Li2Config) -> dict:
    return {"model_type": MODEL_TYPE, "architectures": ["Li2Net"], "m": cfg.m, "hidden": cfg.hidden,
            "activation": cfg.activation, "p": cfg.m, "tasks": ["add"]}


def summarise_li2(hist: Li2History, tau: float | None = None) -> GrokSummary:
    """grok.json of a finished Li₂ history (lock-in with `tau`, default the config's)."""
    cfg = hist.config
    tau = cfg.tau if tau is None else tau
    edge = hist.edge()
    curves = hist.curves.rename(columns={"epoch": "step"}).assign(task="add")
    ev = curve_events(curves)["add"]
    r23, k, ep = edge["r_23"].to_numpy(), edge["kstar"].to_numpy(), edge["epoch"].to_numpy()
    skip = min(cfg.detect_skip, len(r23) - 1)
    peak = skip + int(np.nanargmax(r23[skip:]))
    lock = detect_lockin(r23, k, ep, tau, skip=skip) if tau is not None else None
    spec = embedding_spectrum(hist.net.W_a.detach().T)
    sign = hist.sign
    lockin = {"tau": tau, "fired": None if lock is None else lock.fired,
              "epoch": None if lock is None else lock.epoch, "r23": None if lock is None else lock.r23,
              "rank": None if lock is None else lock.rank, "skip_windows": skip}
    li2 = {"r23_peak_epoch": int(ep[peak]), "r23_peak": float(r23[peak]), "kstar_at_peak": int(k[peak]),
           "critical_fraction": critical_fraction(cfg.m),
           "sign_match_final": float(sign["sign_match"].iloc[-1]) if len(sign) else None}
    # no defect measurements and no trunk edge in a Li2 run: defect_onset_step, gap_open_step, lead_time stay None
    return GrokSummary(family="li2", grok_step=ev["grok_step"], memorisation_step=ev["memorisation_step"],
                       final_train_acc=ev["final_train_acc"], final_test_acc=ev["final_test_acc"],
                       key_frequencies=spec.key_frequencies, fourier_gini=spec.gini, tasks={"add": ev},
                       lockin=lockin, li2=li2, settings={"training": cfg.to_dict()}, notes=[])


def run_li2(cfg: Li2Config, out: str | Path, *, progress: bool = True, force: bool = False) -> dict:
    """Train `cfg` into `out` and write its tables and grok.json; returns grok.json's dict."""
    out = Path(out)
    with RunStore.open(out, li2_manifest(cfg), force=force) as store:
        if not force and (out / "grok.json").is_file() and Trajectory(out).complete:
            return json.loads((out / "grok.json").read_text())
        traj = Trajectory(out)
        traj.reset()

        def snap(epoch: int, net: Li2Net) -> None:
            traj.add(epoch, net, hf_config(cfg))

        hist = train_li2(cfg, progress=progress, on_snapshot=snap)
        curves = hist.curves.rename(columns={"epoch": "step"}).assign(task="add")
        store.write_table("curves", curves[["step", "task", "train_loss", "test_loss", "train_acc", "test_acc"]])
        table = hist.edge().merge(hist.sign, on="epoch", how="outer").sort_values("epoch")
        store.write_table("li2", table.reset_index(drop=True))
        summary = summarise_li2(hist)
        summary.n_snapshots = len(traj.steps)
        traj.meta["complete"] = True
        traj.save()
        store.write_json("grok", summary.to_dict())
    return summary.to_dict()

