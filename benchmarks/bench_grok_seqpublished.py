"""Benchmark: the Dyck-1 / SCAN published recipes of issue 23, from real runs (printed, not asserted).

    python benchmarks/bench_grok_seqpublished.py law SWEEP_DIR            # per-run grok/onset/lead, α, null, rank
    python benchmarks/bench_grok_seqpublished.py lifecycle RUN_DIR... [--ablation-at 3900:3]  # g23, gradient share, edge ablation
    python benchmarks/bench_grok_seqpublished.py numerics RUN_DIR --steps 200,800,1600 [--pairs 5]
    python benchmarks/bench_grok_seqpublished.py progress RUN_DIR...      # last step, curves, CPU-free timers

`law` applies the study's rules (headscreen/grokking/published/sequence_rules.py) to every run of a sweep; `numerics`
recomputes the defect at stored snapshots with the study's float32 direct form (with its adaptive η), our
exact form and the direct form in float64, on the same batch pairs, to show how much of the published D is
float32 rounding. Runs and sweeps are made with `headscreen grok` (docs/methods.md, "Grokking II: the
published recipes"); step counts do not depend on the load, wall times do (print /proc/loadavg beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _law(sweep: Path) -> None:
    from headscreen.grokking.published import sequence_rules as seqpublished

    table = seqpublished.lead_table(sweep)
    print(table.to_string(index=False))
    task = str(table["task"].iloc[0])
    print(json.dumps(seqpublished.lead_law(table, task), indent=1, default=str))


def _lifecycle(runs: list[Path], at: str | None) -> None:
    from dataclasses import replace

    from headscreen.grokking.analysis.edge_ablation import PUBLISHED, SETTINGS, edge_ablation
    from headscreen.grokking.analysis.edge_lifecycle import g23_compression, gradient_share

    print("load average", os.getloadavg())
    for run in runs:
        task = json.loads((run / "manifest.json").read_text())["config"]["tasks"][0]
        window = 3 if task == "dyck" else 5
        print(run.name, "g23:", g23_compression(run, window), "share:", gradient_share(run))
        phases = {"published phase": SETTINGS[task]}
        if task == "dyck":  # the study's "at_grok" phase too: snapshot 5 at 100-step spacing (published -0.26 ± 0.05)
            phases["at_grok (step 500)"] = replace(SETTINGS[task], step=500)
        if at:  # --ablation-at STEP:WINDOW,...: other steps / windows instead
            phases = {f"step {p.split(':')[0]}, window {p.split(':')[1]}": replace(
                SETTINGS[task], step=int(p.split(":")[0]), window=int(p.split(":")[1])) for p in at.split(",")}
        for name, settings in phases.items():
            r = edge_ablation(run, settings)
            print(run.name, f"ablation, {name}:", {k: v for k, v in r.items() if k != "random_deltas"},
                  "random deltas:", r.get("random_deltas"), "published:", PUBLISHED[task])


def _numerics(run: Path, steps: list[int], pairs: int) -> None:
    import torch

    from headscreen.grokking.config import GrokConfig
    from headscreen.grokking.tasks.base import make_task
    from headscreen.grokking.training.defect import commutator_defect
    from headscreen.grokking.training.snapshots import Trajectory

    raw = json.loads((run / "manifest.json").read_text())["config"]
    known = set(GrokConfig.__dataclass_fields__)
    cfg = GrokConfig.from_dict({k: v for k, v in raw.items() if k in known and k != "defect_form"})
    task = make_task(cfg)
    model = task.build_model(cfg.seed)
    traj = Trajectory(run)
    train = task.train()
    print(f"{'step':>6} {'direct f32 (adaptive)':>22} {'exact':>10} {'direct f64':>11}")
    for step in steps:
        model.load_state_dict(traj.load(step))
        g = torch.Generator().manual_seed(step)  # pairs drawn with replacement, as the study draws them
        rows = [torch.randint(len(train[0]), (cfg.defect_batch_size,), generator=g) for _ in range(2 * pairs)]
        batch_pairs = [((train[0][rows[2 * i]], train[1][rows[2 * i]]), (train[0][rows[2 * i + 1]],
                        train[1][rows[2 * i + 1]])) for i in range(pairs)]
        d32 = commutator_defect(model, task.loss_fn, batch_pairs, eta=cfg.defect_eta, form="float32_direct",
                                min_step=1e-6).median().item()
        ex = commutator_defect(model, task.loss_fn, batch_pairs, eta=cfg.defect_eta).median().item()
        d64 = commutator_defect(model, task.loss_fn, batch_pairs, eta=cfg.defect_eta, form="float32_direct",
                                dtype=torch.float64).median().item()
        print(f"{step:>6} {d32:>22.2f} {ex:>10.2f} {d64:>11.2f}")


def _progress(runs: list[Path]) -> None:
    import pandas as pd

    print("load average", os.getloadavg())
    for run in runs:
        c = pd.read_parquet(run / "curves.parquet") if (run / "curves.parquet").exists() else None
        meta = run / "trajectory" / "series.json"
        sessions = json.loads(meta.read_text()).get("training", {}).get("sessions", []) if meta.exists() else []
        last = None if c is None or c.empty else c.iloc[-1].to_dict()
        print(run.name, "last evaluation:", last, "sessions:", sessions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("law", "lifecycle", "numerics", "progress"))
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--steps", default="200,800")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--ablation-at", default=None, help="lifecycle: STEP:WINDOW,... ablation settings to try "
                    "instead of the published phases (e.g. 3900:3,7800:5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.part == "law":
        _law(a.paths[0])
    elif a.part == "lifecycle":
        _lifecycle(a.paths, a.ablation_at)
    elif a.part == "numerics":
        _numerics(a.paths[0], [int(s) for s in a.steps.split(",")], a.pairs)
    else:
        _progress(a.paths)


if __name__ == "__main__":
    main()
