"""Li2 lock-in detector and linear-centroid coupling figures from real runs (not a timed test).

    python benchmarks/bench_li2.py [--seeds 15] [--workers 2] [--epochs N]

Prints: tau (calibrated on separate control seeds), how many x^2 seeds and controls fire, the firing
epochs, the update rank (k*) at lock-in for x^2 and ReLU, the sign-match fraction, and the coupling of
the centroid with the gradient SVD / Adam-update SVD relative to random directions.
Settings: model_configs/grok-li2.yaml (li2: and li2_controls: sections).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch


def main() -> None:
    from li2_study import li2_coupling, lockin_study

    from headscreen.config import load_config
    from headscreen.grokking.li2.network import Li2Config, critical_fraction

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=15)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--grok-run", action="append", default=[],
                    help="also print the window analyses (edge modes, coupling) of this modular grok run directory")
    ap.add_argument("--skip-li2", action="store_true", help="only the --grok-run part")
    args = ap.parse_args()
    for run in args.grok_run:
        from headscreen.grokking.analysis.analyse import analyse_run

        g = analyse_run(run, progress=False)
        wa = g["window_analyses"]
        print(f"{run}: grok_step {g['grok_step']}, key frequencies {g['key_frequencies']}, window "
              f"{wa['start_step']}-{wa['end_step']}")
        for task, e in wa["tasks"].items():
            c = e["coupling"]
            print(f"  {task}: coupling gradient/random {c['gradient_over_random']:.1f}, update/random "
                  f"{c['update_over_random']:.1f}, random {c['random']:.2f}; modes ({e.get('mode_kind')}): "
                  + "; ".join(f"v{d['direction']} " + ", ".join(f"({m['k_a']},{m['k_b']}) {m['share']:.2f}"
                                                          for m in d["modes"][:3]) for d in e.get("edge_modes", [])))
    if args.skip_li2:
        return
    torch.set_num_threads(1)
    mc = load_config("grok-li2")
    base = Li2Config.from_dict(mc.section("li2"), "grok-li2: li2")
    if args.epochs:
        base = base.replace(epochs=args.epochs)
    ctl = mc.settings("li2_controls")  # Li2Controls, checked against li2.m when the config loaded
    print(f"settings: {json.dumps(base.to_dict())}")
    print(f"controls: wd0 (weight_decay 0) and subcritical (train_frac {ctl.subcritical_train_frac} < "
          f"critical {critical_fraction(base.m):.3f}); calibration seeds {list(ctl.calibration_seeds)}")
    study = lockin_study(base, range(args.seeds), calibration_seeds=list(ctl.calibration_seeds),
                         subcritical_frac=ctl.subcritical_train_frac, margin=ctl.margin, workers=args.workers)
    pd.set_option("display.width", 200)
    runs = study.runs
    print(f"tau = {study.tau:.3f} (margin x max r23 of the calibration controls after {base.detect_skip} windows)")
    print("fired:", study.counts())
    for group, df in runs.groupby("group", sort=False):
        ep = df.loc[df.fired, "epoch"].astype(float)
        ranks = df.loc[df.fired, "rank"].value_counts().to_dict()
        grok = df["grok_step"].dropna()
        print(f"{group:12s} fired {int(df.fired.sum())}/{len(df)}  epoch mean {ep.mean():.1f} sd {ep.std():.1f} "
              f"range [{ep.min() if len(ep) else None}, {ep.max() if len(ep) else None}]  ranks at lock-in {ranks}  "
              f"k* at r23 peak {df.kstar_at_peak.value_counts().to_dict()}  grokked {len(grok)}/{len(df)} "
              f"(median epoch {grok.median() if len(grok) else None})  sign-match first {df.sign_match_first.mean():.3f}"
              f" last {df.sign_match_last.mean():.3f}")
    sqr = runs[runs.group == "sqr"].set_index("seed")
    relu = runs[runs.group == "relu"].set_index("seed")
    ks = []
    for s, row in sqr[sqr.fired].iterrows():  # ReLU's update rank at the x^2 lock-in epoch, same seed
        r = study.series[f"relu-{s}"]
        ks.append(int(r["kstar"][list(r["epochs"]).index(int(row.epoch))]))
    print(f"ReLU k* at the x^2 lock-in epoch (same seed): {pd.Series(ks).value_counts().to_dict()}")
    print(runs.to_string(index=False, float_format="%.3g"))
    for end in sorted({int(np.nanmedian(sqr.epoch)) if sqr.fired.any() else base.window * 3, base.epochs}):
        cp = li2_coupling(base, end)
        print("coupling:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in cp.items()}))
    print(f"relu fired with the same tau: {int(relu.fired.sum())}/{len(relu)}")
    # the same detector with tau calibrated on one control kind only
    from headscreen.grokking.li2.lockin import calibrate_tau, detect_lockin

    for kind in ("wd0", "subcritical"):
        cal = [r["r23"] for n, r in study.series.items() if n.startswith(f"cal-{kind}-")]
        tau = calibrate_tau(cal, skip=base.detect_skip, margin=ctl.margin)
        fired = {g: sum(detect_lockin(r["r23"], r["kstar"], r["epochs"], tau, skip=base.detect_skip).fired
                        for n, r in study.series.items() if n.rsplit("-", 1)[0] == g)
                 for g in ("sqr", "relu", "wd0", "subcritical")}
        eps = [detect_lockin(r["r23"], r["kstar"], r["epochs"], tau, skip=base.detect_skip)
               for n, r in study.series.items() if n.rsplit("-", 1)[0] == "sqr"]
        ep = [e.epoch for e in eps if e.fired]
        print(f"tau calibrated on {kind} only = {tau:.3f}: fired {fired} of {args.seeds} each; x^2 epochs "
              f"{ep}; ranks {[e.rank for e in eps if e.fired]}")


if __name__ == "__main__":
    main()
