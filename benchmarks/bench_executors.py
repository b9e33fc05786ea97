"""Scale-out ratios: a screen, a validation null and a grokking sweep at 1 and 2 workers, in a process
pool and on Ray, each checked to give the same results as the in-process run.

    python benchmarks/bench_executors.py [--checkpoints 24] [--draws 300] [--runs 4] [--grok-steps 200]
                                         [--only screen,validate,grok]

screen: a tiny GPT-NeoX series of --checkpoints checkpoints (built here, probes on every one), screened
  in-process, then by the process pool and Ray at 1 and 2 workers (one contiguous chunk per worker);
  prints wall times, the speed-up of 2 workers over 1, and Ray's time over the process pool's.
validate: --draws matched-random draws (zero ablation) at 1 and 2 process workers against in-process.
grok: a sweep of --runs tiny grokking runs at 1 and 2 process workers.
Every worker has 1 torch thread; the in-process run is forced to 1 thread too. On 2 cores the ideal
speed-up is 2×; what it misses is start-up (spawning workers that import torch, Ray's cluster), the
extra checkpoint read each chunk makes, and chunks of unequal cost. The load average is printed beside
each figure: numbers taken while anything else runs are not benchmarks. The workers' start-up (spawn,
import torch and the pipelines; Ray's cluster) is timed on its own before each row, outside the row's
wall time, since a long screen pays it once: the rows show how the work itself splits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's headscreen


def _timed(label: str, fn):
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    print(f"  {label:28s} {wall:7.1f} s   (load {load:.2f} before)", flush=True)
    return wall, out


def _tables(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.glob("*.parquet")) if not p.name.startswith("preid")}


def _warm_task(seconds: float) -> int:
    """What every worker pays once: importing torch and the pipelines (then hold the worker briefly so
    that each of the pool's workers, not one of them twice, takes a warm-up task)."""
    import pipelines.screen  # noqa: F401  (imports torch and headscreen)
    import pipelines.validate  # noqa: F401

    time.sleep(seconds)
    return os.getpid()


def _started(kind: str, workers: int, label: str):
    """An executor whose workers are already started, and the seconds their start-up took."""
    from headscreen.compute.executors import make_executor

    ex = make_executor(kind, workers=workers)
    if kind == "local":
        return ex, 0.0
    t0 = time.perf_counter()
    pids = {r for _, r in ex.run(_warm_task, [(0.5,)] * workers)}
    wall = time.perf_counter() - t0
    print(f"  {label:28s} {wall:7.1f} s   start-up of {len(pids)} worker(s), not in the timings below", flush=True)
    return ex, wall


def bench_screen(tmp: Path, n: int, has_ray: bool) -> Path:
    from headscreen.probes.suite import ProbeSuite
    from headscreen.spectral import SpectralConfig
    from headscreen.testing import save_tiny_series
    from pipelines.screen import ScreenSettings, screen

    series = save_tiny_series(tmp / "series", "gpt_neox", list(range(n)), n_ctx=64)
    settings = ScreenSettings(spectral=SpectralConfig(window=4), probes=ProbeSuite(
        seq_len=48, token_range=(4, 500), n_retrieval=32, pair_range=(4, 20), n_repeated=8, repeated_span=16))
    print(f"screen of {n} checkpoints (probes on each):")
    ref = tmp / "screen-local"
    t = {"local": _timed("in-process", lambda: screen(series, ref, settings=settings, progress=False))[0]}
    for kind in ("process", "ray") if has_ray else ("process",):
        for w in (1, 2):
            out = tmp / f"screen-{kind}-{w}"
            ex, _ = _started(kind, w, f"{kind}, {w} worker(s)")
            with ex:
                t[f"{kind} {w}"] = _timed(f"{kind}, {w} worker(s)",
                                          lambda o=out, e=ex: screen(series, o, settings=settings, progress=False, executor=e))[0]
            assert _tables(out) == _tables(ref), f"{kind} {w}: tables differ from the in-process screen"
    for kind in ("process", "ray") if has_ray else ("process",):
        print(f"  {kind}: 2 workers {t[f'{kind} 1'] / t[f'{kind} 2']:.2f}x faster than 1 (ideal 2x)")
    if has_ray:
        print(f"  ray / process wall time: 1 worker {t['ray 1'] / t['process 1']:.2f}, "
              f"2 workers {t['ray 2'] / t['process 2']:.2f}")
    print("  tables identical to the in-process screen: yes")
    return ref


def bench_validate(tmp: Path, run: Path, draws: int) -> None:
    from pipelines.validate import validate

    print(f"validate: zero ablation, {draws} matched-random draws:")
    results, t = {}, {}
    for kind, w in (("local", 1), ("process", 1), ("process", 2)):
        copy = tmp / f"val-{kind}-{w}"
        shutil.copytree(run, copy)
        ex, _ = _started(kind, w, f"{kind}, {w} worker(s)")
        with ex:
            t[(kind, w)] = _timed(f"{kind}, {w} worker(s)", lambda c=copy, e=ex: validate(
                c, circuit=[[1, 0], [1, 2]], ablations=("zero",), n_null=draws, progress=False, executor=e))[0]
        results[(kind, w)] = (copy / "validation.parquet").read_bytes()
    assert len(set(results.values())) == 1, "validation numbers differ between executors"
    print(f"  process: 2 workers {t[('process', 1)] / t[('process', 2)]:.2f}x faster than 1; "
          "numbers identical: yes")


GROK_YAML = """
name: grok-bench
source: {{kind: synthetic}}
grok:
  tasks: [add]
  p: 23
  train_frac: 0.5
  model: {{preset: curv, d_model: 32, n_heads: 2, d_head: 16, d_mlp: 64}}
  lr: 0.01
  batch_size: 64
  steps: {steps}
  eval_every: 50
  snapshot_every: 50
  defect_every: 0
sweep:
  weight_decay: [0.0, 1.0]
  seed: {seeds}
  workers: 2
"""


def bench_grok(tmp: Path, runs: int, steps: int) -> None:
    from pipelines.grok import sweep

    cfg = tmp / "grok-bench.yaml"
    cfg.write_text(GROK_YAML.format(seeds=list(range(max(1, runs // 2))), steps=steps))
    print(f"grok sweep of {2 * max(1, runs // 2)} runs of {steps} steps:")
    t = {}
    for w in (1, 2):
        ex, _ = _started("process", w, f"process, {w} worker(s)")
        with ex:
            t[w] = _timed(f"process, {w} worker(s)",
                          lambda o=tmp / f"grok-{w}", e=ex: sweep(cfg, o, progress=False, analyse=False, executor=e))[0]
    print(f"  process: 2 workers {t[1] / t[2]:.2f}x faster than 1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints", type=int, default=24)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--grok-steps", type=int, default=200, help="steps of each grokking run of the sweep")
    p.add_argument("--only", default="screen,validate,grok")
    a = p.parse_args()
    import importlib.util
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="only .* windows lie after")  # short series: no z-score baseline

    torch.set_num_threads(1)
    has_ray = importlib.util.find_spec("ray") is not None
    if not has_ray:
        print("ray is not installed: the Ray rows are left out (pip install -e '.[ray]')")
    parts = set(a.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        tmp = Path(tmp)
        run = bench_screen(tmp, a.checkpoints, has_ray) if parts & {"screen", "validate"} else None
        if "validate" in parts:
            bench_validate(tmp, run, a.draws)
        if "grok" in parts:
            bench_grok(tmp, a.runs, a.grok_steps)


if __name__ == "__main__":
    main()
