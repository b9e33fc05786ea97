"""The commutator defect, vectorised (two vmapped gradient calls) against pair by pair, on a grokking model.

    python benchmarks/bench_defect.py [--config modadd] [--threads 2] [--repeats 5] [--step 100]

Builds the config's model at its seed, draws the defect pairs the trainer would draw at --step, and
times `commutator_defect` both ways (the first vectorised call, which traces the model, is reported on
its own), plus one training step of the config's batch for scale. Prints medians, the ratio, the
largest relative difference between the two paths' D values, and the load average beside the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="modadd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--step", type=int, default=100, help="whose defect pairs to draw")
    a = ap.parse_args()

    import torch

    from headscreen.grokking.tasks.base import make_task
    from headscreen.grokking.training.defect import commutator_defect
    from headscreen.grokking.training.train import batch_indices, defect_pairs
    from pipelines.grok import load_grok_config

    torch.set_num_threads(a.threads)
    _, cfg, _ = load_grok_config(a.config)
    task = make_task(cfg)
    model = task.build_model(cfg.seed).train()
    train = task.train()
    params = [q for q in model.parameters() if q.requires_grad]
    pairs = defect_pairs(cfg, train, a.step)

    def timed(vectorize: bool) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        d = commutator_defect(model, task.loss_fn, pairs, eta=cfg.defect_eta, params=params, vectorize=vectorize)
        return time.perf_counter() - t0, d

    load = os.getloadavg()[0]
    first, _ = timed(True)
    vec, loop = [], []
    for _ in range(a.repeats):
        t, dv = timed(True)
        vec.append(t)
        t, dl = timed(False)
        loop.append(t)
    idx = batch_indices(cfg, len(train[0]), 0)
    batch = train if idx is None else (train[0][idx], train[1][idx])
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    steps = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        task.loss_fn(model, batch).backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
    mv, ml, ms = (statistics.median(x) * 1e3 for x in (vec, loop, steps))
    rel = ((dv - dl).abs() / dl.abs()).max().item()
    print(f"{a.config}: K = {len(pairs)} pairs, {cfg.defect_batch_size} examples per batch, {a.threads} thread(s), "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"  vectorised   {mv:7.0f} ms (median of {a.repeats}; first call {first * 1e3:.0f} ms incl. tracing)")
    print(f"  pair by pair {ml:7.0f} ms -> vectorised is {ml / mv:.2f}x faster; max relative difference of D {rel:.1e}")
    print(f"  one training step {ms:.0f} ms: a measurement costs {mv / ms:.1f} steps vectorised, {ml / ms:.1f} pair by pair")


if __name__ == "__main__":
    main()
