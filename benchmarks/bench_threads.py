"""The demo's training at the automatic thread setting against --threads 1 and --threads 2, on a quiet
machine and next to one busy competing process (a bounded CPU loop this script starts and stops).

    python benchmarks/bench_threads.py [--steps 200] [--config synthetic-tiny]

Each run is a fresh `python -m pipelines.cli [--threads N] train` process (OpenMP's wait policy is
fixed when torch starts, so only a fresh process shows the automatic choice, headscreen/compute/cpu.py) on
the recipe with its training cut to --steps optimizer steps. Printed per condition: wall time, the
ratio to --threads 1 in the same condition, the thread choice the CLI made, and the load average and
idle cores before the run. The claim to check: busy, auto is never slower than --threads 1 (ratio
<= ~1); quiet, auto matches --threads 2. Timings taken while anything else runs are not benchmarks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's headscreen, as the subprocesses (cwd ROOT) use


def _recipe(config: str, steps: int, where: Path) -> Path:
    from headscreen.config import load_config

    cfg = load_config(config)
    data = yaml.safe_load(cfg.path.read_text())
    data["train"] = {**data["train"], "steps": steps}
    data["name"] = f"{data.get('name', config)}-bench"
    path = where / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _busy(seconds: float) -> subprocess.Popen:
    """One core busy for at most `seconds` (stopped earlier by the caller)."""
    loop = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", loop])


def _train(recipe: Path, threads: int | None, out: Path) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "pipelines.cli", *(["--threads", str(threads)] if threads else []),
           "train", "--config", str(recipe), "--out", str(out), "--no-progress", "--overwrite"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    probe = f"from headscreen.compute.cpu import plan_cpu; print(plan_cpu({threads}).describe())"
    choice = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0, choice


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of the demo recipe per run")
    p.add_argument("--config", default="synthetic-tiny")
    p.add_argument("--busy-limit", type=float, default=1800, help="the competing loop stops itself after this")
    a = p.parse_args()
    from headscreen.compute.cpu import idle_cores

    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        tmp = Path(tmp)
        recipe = _recipe(a.config, a.steps, tmp)
        settings = [("auto", None), ("--threads 1", 1), ("--threads 2", 2)]
        for condition in ("quiet", "busy"):
            competitor = _busy(a.busy_limit) if condition == "busy" else None
            try:
                if competitor:
                    time.sleep(0.5)
                times = {}
                for label, threads in settings:
                    load, idle = os.getloadavg()[0], idle_cores(0.2)
                    wall, choice = _train(recipe, threads, tmp / f"{condition}-{threads}")
                    times[label] = wall
                    print(f"{condition:5s} {label:12s} {wall:7.1f} s  ({a.steps} steps; load {load:.2f}, "
                          f"{idle:.1f} idle cores before; CLI chose: {choice})", flush=True)
                print(f"{condition:5s} ratios to --threads 1: " + ", ".join(
                    f"{k} {v / times['--threads 1']:.2f}" for k, v in times.items()), flush=True)
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()


if __name__ == "__main__":
    main()
