"""Benchmark: the grokking targets of issue 12, from real runs (printed, not asserted).

    python benchmarks/bench_grok.py [--out results/bench_grok] [--only default,control,seeds,lr,nanda,multitask]
                                    [--config modadd] [--threads 2] [--workers 2] [--seeds 0,1,2]
                                    [--lrs 0.002,0.003,0.004,0.005]

Parts (each reuses finished runs under --out, so parts can be run at different times):
- default:   `headscreen grok modadd` (or --config) with the YAML defaults, timed in this process (--threads);
             also the defect overhead of that run (defect seconds / update seconds, same process).
- control:   the same run with weight decay 0 (does it grok in the same number of steps?).
- seeds:     wd 1 and wd 0 over --seeds: grok step, defect onset, lead time, gap-open step;
             counts "onset before grokking" and "gap opens before grokking: n/n with wd, k/n without".
- lr:        wd 1, seed 0 over --lrs: lead time vs grok step and the power law ℓ ∝ t_grok^α with R².
- nanda:     model_configs/grok-nanda.yaml (p 113, 30%, lr 1e-3, wd 1, full batch): grok step (= epoch)
             and the key frequencies.
- multitask: add + mul, wd 1 and wd 0: the commutator (phase-portrait) peak vs each task's grok step,
             and the gap-open step of the wd-0 run.
Runs of the seeds/lr/multitask parts go `--workers` at a time in separate processes (1 thread each),
so their wall times mean nothing; only the default part is timed. Step counts do not depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARTS = ("default", "control", "seeds", "lr", "nanda", "multitask")


def _fmt(v) -> str:
    return "never" if v is None else str(v)


def _before(a, b) -> bool:
    return a is not None and b is not None and a < b


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/bench_grok")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the timed default run")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (1 thread each) for the other parts")
    ap.add_argument("--config", default="modadd",
                    help="task or config of the default/control/seeds/lr parts (e.g. grok-curv: the published recipe)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lrs", default="0.002,0.003,0.004,0.005", help="learning rates (each groks within the YAML's steps)")
    args = ap.parse_args(argv)

    import torch

    from headscreen.grokking.analysis.detect import fit_power_law
    from pipelines.grok import load_grok_config, run_and_analyse, run_many

    parts = [p for p in args.only.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        sys.exit(f"--only: unknown part(s) {unknown}; choose from {PARTS}")
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    _, base, _ = load_grok_config(args.config)

    def many(configs: dict) -> dict:
        results, errors = run_many(configs, out / "runs", workers=args.workers, progress=True)
        for name, err in errors.items():
            print(f"  run {name} failed: {err}")
        return results

    if "default" in parts:
        torch.set_num_threads(args.threads)
        run = out / "runs" / "default"
        fresh = not (run / "trajectory" / "series.json").exists()
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        g = run_and_analyse(base, run, progress=True)
        wall = time.perf_counter() - t0
        meta = json.loads((run / "trajectory" / "series.json").read_text())
        sec = {k: sum(s["seconds"][k] for s in meta["training"]["sessions"])
               for k in ("update", "eval", "defect", "snapshot")}
        size = sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) / 2**20
        print(f"\n[default] {args.config} p={base.p} frac={base.train_frac} lr={base.lr} wd={base.weight_decay} "
              f"batch={base.batch_size} steps={base.steps}, {args.threads} threads")
        print(f"  grok step {_fmt(g['grok_step'])}, memorisation step {_fmt(g['memorisation_step'])}, "
              f"final test acc {g['final_test_acc']:.3f}")
        if fresh:
            print(f"  wall time {wall:.1f} s incl. analysis (load average {load0[0]:.2f} before, "
                  f"{os.getloadavg()[0]:.2f} after); target <= 180 s")
        else:
            print("  (reused a finished run: not timed; delete it to time)")
        print(f"  seconds: update {sec['update']:.1f}, eval {sec['eval']:.1f}, defect {sec['defect']:.1f}, "
              f"snapshot {sec['snapshot']:.1f}")
        print(f"  defect overhead: {sec['defect'] / sec['update']:.1%} of update time at defect_every="
              f"{base.defect_every} (target <= 20%); run directory {size:.1f} MB")

    if "control" in parts:
        name = f"seeds_wd0_seed{base.seed}"  # the same run as the seeds part's wd-0 run of this seed
        g = many({name: base.replace(weight_decay=0.0)})[name]
        print(f"\n[control] wd 0, {base.steps} steps: grok step {_fmt(g['grok_step'])}, "
              f"final test acc {g['final_test_acc']:.3f}, memorisation step {_fmt(g['memorisation_step'])}")

    if "seeds" in parts:
        cfgs = {f"seeds_wd{wd:g}_seed{s}": base.replace(weight_decay=wd, seed=s) for wd in (1.0, 0.0) for s in seeds}
        res = many(cfgs)
        print(f"\n[seeds] {len(seeds)} seeds, wd 1 and wd 0")
        counts = {1.0: [0, 0, 0], 0.0: [0, 0, 0]}  # onset-before-grok, gap-before-grok, gap opened at all
        for name, cfg in cfgs.items():
            g = res.get(name)
            if g is None:
                continue
            t, onset, gap = g["grok_step"], g["defect_onset_step"], g["gap_open_step"]
            c = counts[cfg.weight_decay]
            c[0] += _before(onset, t)
            c[1] += _before(gap, t)
            c[2] += gap is not None
            print(f"  wd {cfg.weight_decay:g} seed {cfg.seed}: grok {_fmt(t)}, defect onset {_fmt(onset)}, "
                  f"lead {_fmt(g.get('lead_time'))}, gap open {_fmt(gap)}, final test {g['final_test_acc']:.3f}")
        n = len(seeds)
        print(f"  defect onset before grokking: {counts[1.0][0]}/{n} with weight decay")
        print(f"  gap opens before grokking: {counts[1.0][1]}/{n} with weight decay, {counts[0.0][1]}/{n} without "
              f"(gap opened at all without: {counts[0.0][2]}/{n})")

    if "lr" in parts:
        # the run at the YAML's lr and seed is the seeds part's run (same config, same directory)
        cfgs = {(f"seeds_wd1_seed{seeds[0]}" if lr == base.lr and base.weight_decay == 1.0 else f"lr{lr:g}_seed{seeds[0]}"):
                base.replace(lr=lr, seed=seeds[0]) for lr in lrs}
        res = many(cfgs)
        print(f"\n[lr] wd {base.weight_decay:g}, seed {seeds[0]}, lr in {lrs}")
        t, lead = [], []
        for name, cfg in cfgs.items():
            g = res.get(name)
            if g is None:
                continue
            print(f"  lr {cfg.lr:g}: grok {_fmt(g['grok_step'])}, onset {_fmt(g['defect_onset_step'])}, "
                  f"lead {_fmt(g.get('lead_time'))}")
            if g["grok_step"] is not None and g.get("lead_time") is not None and g["lead_time"] > 0:
                t.append(g["grok_step"])
                lead.append(g["lead_time"])
        if len(t) >= 3:
            fit = fit_power_law(t, lead)
            print(f"  lead ∝ t_grok^alpha: alpha = {fit.alpha:.2f}, R² = {fit.r2:.3f} (n = {fit.n}); published ≈ 1.3")
        else:
            print(f"  only {len(t)} runs with a positive lead time: no power-law fit")

    if "nanda" in parts:
        _, nanda, _ = load_grok_config("nanda")
        g = many({"nanda": nanda})["nanda"]
        print(f"\n[nanda] p={nanda.p} frac={nanda.train_frac} lr={nanda.lr} wd={nanda.weight_decay} full batch, "
              f"{nanda.steps} epochs: grok epoch {_fmt(g['grok_step'])}, memorisation epoch "
              f"{_fmt(g['memorisation_step'])}, key frequencies {g.get('key_frequencies')}")

    if "multitask" in parts:
        _, mt, _ = load_grok_config("multitask")
        res = many({"multitask_wd1": mt, "multitask_wd0": mt.replace(weight_decay=0.0)})
        print(f"\n[multitask] {'+'.join(mt.tasks)} p={mt.p} frac={mt.train_frac} steps={mt.steps}")
        for name in ("multitask_wd1", "multitask_wd0"):
            g = res.get(name)
            if g is None:
                continue
            per_task = ", ".join(f"{task} groks {_fmt(e.get('grok_step'))}" for task, e in (g.get("tasks") or {}).items())
            print(f"  {name}: commutator peak {_fmt(g.get('commutator_peak_step'))}, {per_task}, "
                  f"gap open {_fmt(g['gap_open_step'])}")


if __name__ == "__main__":
    main()
