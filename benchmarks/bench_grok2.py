"""Benchmark: the Dyck-1 / SCAN early-warning and intervention targets of issue 15, from real runs
(printed, not asserted).

    python benchmarks/bench_grok2.py --task dyck|scan [--out results/bench_grok2] [--only seeds,lr,suppress,amplify]
                                     [--seeds 0,1,2] [--lrs ...] [--strengths 0,0.25,0.5,0.75,1] [--amplify 1.0]
                                     [--workers 2] [--steps N]

Parts (every run is kept under --out/<task>/<part>/<run> and reused, so parts can be run separately):
- seeds:    the task's YAML defaults over --seeds: grok step, defect onset, lead time; the count "defect
            onset before grokking" over the seeds that grok; the per-step training time of each run
            (update seconds / steps, from the run's own timers; the load average is printed beside it)
            and the projected default-run time = steps x per-step time (+ eval and defect time).
- lr:       seed 0 over --lrs: lead time vs grok step and the power law ℓ ∝ t_grok^α with R²
            (published: α 1.13 Dyck, 1.18 SCAN).
- suppress: seed 0, transverse-gradient suppression s over --strengths (after step 500, K = 16): grok
            step per s (the dose-response table) and the invariance ratio ρ (median before grokking)
            against 5 random bases.
- amplify:  seed 0, amplification a = --amplify vs the same run without: speed-up = 1 − t_amp/t_base
            (published ≈ 50% Dyck, ≈ 32% SCAN).
Runs go --workers at a time in separate processes with 1 torch thread each; step counts do not depend on
the load, wall times do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARTS = ("seeds", "lr", "suppress", "amplify")


def _fmt(v) -> str:
    return "never" if v is None else str(v)


def _timing(run: Path) -> dict:
    meta = json.loads((run / "trajectory" / "series.json").read_text())
    secs, steps, load = {}, 0, []
    for s in meta.get("training", {}).get("sessions", []):
        steps += s["to_step"] - s["from_step"]
        load.append(s["load_average"][0])
        for k, v in s["seconds"].items():
            secs[k] = secs.get(k, 0.0) + v
    return {"steps": steps, "seconds": secs, "load": load}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("dyck", "scan"), required=True)
    ap.add_argument("--out", default="results/bench_grok2")
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lrs", default=None, help="learning rates (default: the YAML sweep's)")
    ap.add_argument("--strengths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--amplify", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=None, help="override the YAML's step count")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    from headscreen.grokking.analysis.detect import fit_power_law
    from headscreen.grokking.training.interventions import Intervention
    from pipelines.grok import load_grok_config, run_many

    overrides = {"steps": args.steps}
    _, base, sweep = load_grok_config(args.task, overrides)
    root = Path(args.out) / args.task
    parts = [p for p in args.only.split(",") if p]
    print(f"task {args.task}: {base.steps} steps, lr {base.lr}, wd {base.weight_decay}; load average now "
          f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")

    def runs(part: str, configs: dict) -> dict:
        results, errors = run_many(configs, root / part, workers=args.workers, progress=True)
        for name, err in errors.items():
            print(f"  {name}: FAILED {err}")
        return results

    if "seeds" in parts:
        seeds = [int(s) for s in args.seeds.split(",")]
        res = runs("seeds", {f"seed{s}": base.replace(seed=s) for s in seeds})
        grokked = precede = 0
        print("\n[seeds] seed  grok_step  memorisation  defect_onset  lead_time  final_test_acc  s/step(update)  projected_s  load")
        for name, r in sorted(res.items()):
            t = _timing(root / "seeds" / name)
            per = t["seconds"].get("update", 0) / max(t["steps"], 1)
            total = sum(t["seconds"].values()) * base.steps / max(t["steps"], 1)
            print(f"  {name:8s} {_fmt(r['grok_step']):>9s} {_fmt(r['memorisation_step']):>12s} "
                  f"{_fmt(r['defect_onset_step']):>12s} {_fmt(r['lead_time']):>9s} {r['final_test_acc']:.3f} "
                  f"{per:.4f} {total:.0f} {t['load']}")
            if r["grok_step"] is not None:
                grokked += 1
                precede += r["defect_onset_step"] is not None and r["defect_onset_step"] < r["grok_step"]
        print(f"  defect onset precedes grokking in {precede}/{grokked} grokking seeds ({len(res)} seeds run)")

    if "lr" in parts:
        lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else list((sweep.lr if sweep else None) or [base.lr])
        res = runs("lr", {f"lr{lr:g}": base.replace(lr=lr) for lr in lrs})
        print("\n[lr] lr  grok_step  defect_onset  lead_time")
        t_g, lead = [], []
        for name, r in sorted(res.items()):
            print(f"  {name:10s} {_fmt(r['grok_step']):>9s} {_fmt(r['defect_onset_step']):>12s} {_fmt(r['lead_time']):>9s}")
            t_g.append(r["grok_step"] if r["grok_step"] is not None else float("nan"))
            lead.append(r["lead_time"] if r["lead_time"] is not None else float("nan"))
        try:
            fit = fit_power_law(t_g, lead)
            pub = {"dyck": 1.13, "scan": 1.18}[args.task]
            print(f"  alpha = {fit.alpha:.3f} (R^2 {fit.r2:.3f}, n {fit.n}); published {pub}")
        except ValueError as e:
            print(f"  no power-law fit: {e}")

    def intervened(kind: str, s: float):
        spec = dataclasses.replace(base.intervention if base.intervention.active else Intervention(kind=kind),
                                   kind=kind, strength=s)
        return base.replace(intervention=spec)

    if "suppress" in parts:
        strengths = [float(x) for x in args.strengths.split(",")]
        res = runs("suppress", {f"s{s:g}": intervened("suppress", s) for s in strengths})
        print("\n[suppress] s  grok_step  final_test_acc  rho_median  rho_random_median")
        for s in strengths:
            r = res.get(f"s{s:g}")
            if r is None:
                continue
            iv = r.get("intervention") or {}
            print(f"  s={s:<5g} {_fmt(r['grok_step']):>9s} {r['final_test_acc']:.3f} "
                  f"{iv.get('rho_median')} {iv.get('rho_random_median')}")

    if "amplify" in parts:
        res = runs("amplify", {"base": base, f"a{args.amplify:g}": intervened("amplify", args.amplify)})
        b, a = res.get("base", {}).get("grok_step"), res.get(f"a{args.amplify:g}", {}).get("grok_step")
        print(f"\n[amplify] grok step without: {_fmt(b)}, with a = {args.amplify:g}: {_fmt(a)}")
        if a is not None and b:
            pub = {"dyck": 50, "scan": 32}[args.task]
            print(f"  speed-up {100 * (1 - a / b):.0f}% (published ≈ {pub}%)")


if __name__ == "__main__":
    main()
