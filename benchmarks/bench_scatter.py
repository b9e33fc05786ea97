"""Where the fused CountSketch pass spends its time per element: the shipped kernel against simpler loops.

On one Pythia-1B attention part (8 heads × 256 × 2048 fp16 elements of θ_t and θ_{t−1}, the bins of the
default sketch's d = 500: 1000 signed bins), in one process, 1 thread, the best of `--repeat` timings, in
two layouts of the same elements:

  rows       each head's rows one contiguous stream (W_Q, W_K, W_V of GPT-NeoX's fused QKV)
  side       the 8 heads' runs of 256 side by side in rows of 2048 (W_O: dense.weight's columns per head)

and three kernels:

  shipped    headscreen.spectral.fused._scatter_part: 4 heads side by side as LLVM vector ops (`_walk`)
  scalar     one head at a time, per element δ = θ_t − θ_{t−1} in float64 (fp16 values from a 65,536-entry
             table), acc[bin] += δ and ‖δ‖² += δ²: the records' definition, written plainly; it must be
             bit-identical to the shipped kernel
  convert    convert + difference only, no scatter and no norm: reading θ_t and θ_{t−1} once, what any
             update pass pays

It prints ns per element, each kernel's ratio to the shipped one, and whether scalar and shipped agree bit
for bit, with the load average. The data (16 MB per checkpoint) stay in the last-level cache: the in-place
figures, with the files' pages, are benchmarks/bench_extraction.py's.

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

from headscreen.spectral.fused import _scatter_part  # noqa: E402

HEADS, ROWS, RUN = 8, 256, 2048


FP16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)  # bits → value


@nb.njit(boundscheck=False, nogil=True)
def _plain(cur, prev, cs, n_a, n_b, bins, acc, sq, scatter, fp16):  # pragma: no cover (compiled)
    """Per head h, per row a, per column b (element h·cs[1] + a·cs[2] + b): δ, then (if scatter) its bin and
    ‖δ‖²; otherwise only a checksum of the δ, so that the conversion is not optimised away."""
    total = 0.0
    for h in range(acc.shape[0]):
        row = acc[h]
        s = sq[h]
        for a in range(n_a):
            base = h * cs[1] + a * cs[2]
            for b in range(n_b):
                x = fp16[cur[base + b]] - fp16[prev[base + b]]
                if scatter:
                    row[bins[a * n_b + b]] += x
                    s += x * x
                else:
                    total += x
        sq[h] = s
    return total


def time_layout(cur, prev, cs, n_a: int, n_b: int, repeat: int) -> tuple[dict, bool]:
    """ns per element of each kernel on one layout, and whether scalar and shipped agree bit for bit."""
    bins = np.random.default_rng(0).integers(0, 1000, n_a * n_b).astype(np.uint32)
    calls = {
        "shipped": lambda acc, sq: _scatter_part(cur, 0, cs, prev, 0, cs, True, 1, HEADS, n_a, n_b, 1, bins, acc, sq),
        "scalar": lambda acc, sq: _plain(cur, prev, cs, n_a, n_b, bins, acc, sq, True, FP16),
        "convert": lambda acc, sq: _plain(cur, prev, cs, n_a, n_b, bins, acc, sq, False, FP16),
    }
    best, sums = {}, {}
    for kernel, call in calls.items():
        times = []
        for _ in range(repeat + 1):  # the first call compiles
            acc, sq = np.zeros((HEADS, 1000)), np.zeros(HEADS)
            t0 = time.perf_counter()
            call(acc, sq)
            times.append(time.perf_counter() - t0)
        best[kernel], sums[kernel] = min(times[1:]) / cur.size * 1e9, (acc, sq)
    return best, all(np.array_equal(x, y) for x, y in zip(sums["scalar"], sums["shipped"], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    n = HEADS * ROWS * RUN
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=g).half()
    cur = w.view(torch.int16).numpy().view(np.uint16)
    prev = (w + 1e-2 * torch.randn(w.shape, generator=g)).half().view(torch.int16).numpy().view(np.uint16)
    layouts = {"rows": ((n, ROWS * RUN, RUN, 1), ROWS, RUN),
               "side": ((n, RUN // HEADS, RUN, 1), ROWS * HEADS, RUN // HEADS)}
    print(f"{n:,} elements (8 heads x 256 x 2048 fp16), 1000 bins, 1 thread; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, (cs, n_a, n_b) in layouts.items():
        best, same = time_layout(cur, prev, cs, n_a, n_b, a.repeat)
        print(f"layout {name}: " + "; ".join(f"{k} {v:.3f} ns/element ({v / best['shipped']:.2f}x)"
                                             for k, v in best.items())
              + f"; scalar and shipped bit-identical: {same}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
