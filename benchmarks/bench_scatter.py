"""Where the fused CountSketch pass spends its time per element: the shipped kernel against variants of it.

On one Pythia-1B attention part (8 heads × 256 × 2048 fp16 elements of θ_t and θ_{t−1}, the bins of the
default sketch's d = 500: 1000 signed bins), in one process, 1 thread, the best of `--repeat` timings:

  shipped   headscreen.spectral.fused._scatter_part: LANES (4) heads side by side (convert + difference
            their runs, then per column one bin lookup, LANES read-modify-writes and LANES independent
            float64 ‖δ‖² sums); each head's sums in its element order: the records' definition
  one-head  the kernel before (December 2026): one head at a time, per element acc[bin] += δ and the
            head's one serial ‖δ‖² sum; the same sums in the same order, so it must be bit-identical
  lanes     one head at a time with ‖δ‖² summed in 4 interleaved partial sums per run (NOT bit-identical:
            the order of the float64 sum changes; what relaxing that order would buy)
  no-norm   one head at a time, the scatter alone, ‖δ‖² dropped (a bound: what the serial chain costs)
  convert   convert + difference only, no scatter and no norm (reading θ_t and θ_{t−1} once)

It prints ns per element and each variant's ratio to the shipped kernel, with the load average. The
scatter is a scalar read-modify-write into one of 1000 float64 bins per element; `convert` is what any
update pass pays.

    PYTHONPATH=$PWD python benchmarks/bench_scatter.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from headscreen.spectral.fused import _convert_run, _scatter_part  # noqa: E402

RUN = 2048  # elements of one contiguous run (d_model)


@nb.njit(boundscheck=False, nogil=True, inline="always")
def _sum_sq(buf, n):  # pragma: no cover (compiled)
    l0 = l1 = l2 = l3 = 0.0
    m = n - n % 4
    for b in range(0, m, 4):
        l0 += buf[b] * buf[b]
        l1 += buf[b + 1] * buf[b + 1]
        l2 += buf[b + 2] * buf[b + 2]
        l3 += buf[b + 3] * buf[b + 3]
    for b in range(m, n):
        l0 += buf[b] * buf[b]
    return (l0 + l1) + (l2 + l3)


@nb.njit(boundscheck=False, nogil=True)
def _variant(cur, prev, bins, acc, sq, n_heads, n_runs, mode):  # pragma: no cover (compiled)
    """mode 0 lanes, 1 no-norm, 2 convert, 3 one-head; head h's run a at (h·n_runs + a)·RUN."""
    buf = np.empty(RUN)
    total = 0.0
    for h in range(n_heads):
        row = acc[h]
        s = sq[h]
        for a in range(n_runs):
            base = (h * n_runs + a) * RUN
            _convert_run(cur, np.uint64(base), np.uint64(1), prev, np.uint64(base), np.uint64(1), True, True, RUN, buf)
            if mode == 2:
                total += buf[a % RUN]
                continue
            kb = a * RUN
            if mode == 3:
                for b in range(RUN):
                    x = buf[b]
                    row[bins[kb + b]] += x
                    s += x * x
                continue
            if mode == 0:
                s += _sum_sq(buf, RUN)
            for b in range(RUN):
                row[bins[kb + b]] += buf[b]
        sq[h] = s
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    heads, runs = 8, 256
    g = torch.Generator().manual_seed(0)
    w = torch.randn(heads * runs * RUN, generator=g).half()
    cur = w.view(torch.int16).numpy().view(np.uint16)
    prev = (w + 1e-2 * torch.randn(w.shape, generator=g)).half().view(torch.int16).numpy().view(np.uint16)
    bins = np.random.default_rng(0).integers(0, 1000, runs * RUN).astype(np.uint32)
    n = heads * runs * RUN
    strides = (n, runs * RUN, RUN, 1)

    def shipped(acc, sq):
        _scatter_part(cur, 0, strides, prev, 0, strides, True, 1, heads, runs, RUN, 1, bins, acc, sq)

    calls = {"shipped": shipped}
    for mode, name in enumerate(("lanes", "no-norm", "convert", "one-head")):
        calls[name] = lambda acc, sq, _m=mode: _variant(cur, prev, bins, acc, sq, heads, runs, _m)
    sums = {}
    for name, call in calls.items():  # compile, and keep one result of each to compare
        acc, sq = np.zeros((heads, 1000)), np.zeros(heads)
        call(acc, sq)
        sums[name] = (acc, sq)
    print(f"{n:,} elements (8 heads x 256 x 2048 fp16), 1000 bins, 1 thread; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    best = {}
    for name, call in calls.items():
        times = []
        for _ in range(a.repeat):
            acc, sq = np.zeros((heads, 1000)), np.zeros(heads)
            t0 = time.perf_counter()
            call(acc, sq)
            times.append(time.perf_counter() - t0)
        best[name] = min(times) / n * 1e9
    for name, ns in best.items():
        print(f"  {name:8s} {ns:6.3f} ns/element  {ns / best['shipped']:.2f}x the shipped kernel")
    same = all(np.array_equal(x, y) for x, y in zip(sums["one-head"], sums["shipped"], strict=True))
    print(f"one-head: bins and ‖δ‖² bit-identical to the shipped kernel: {same}")
    same_bins = np.array_equal(sums["lanes"][0], sums["shipped"][0])
    rel = float(np.abs(sums["lanes"][1] / sums["shipped"][1] - 1).max())
    print(f"lanes: bins bit-identical to the shipped kernel: {same_bins}; ‖δ‖² max relative difference {rel:.1e}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
