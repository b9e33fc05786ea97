"""The life cycle of a grok run: analysis bound to its trajectory, what `--force` removes, named faults.

* Binding. grok.json records `trajectory` = `trajectory_state(run)`: the last snapshot step, the number of
  snapshots, whether training finished, and a fingerprint of the trajectory (the snapshot list, the last
  snapshot's bytes, the content of curves/defect/intervention.parquet and the config hash). The analysis
  of a run is current only while that record equals the run's state now (`current_analysis`); anything
  else (a resume that added snapshots, a `--force` restart, an older grok.json without the record) is
  recomputed. Analysis results are written only for a finished run, under its lock (`analyse_run`).
* `--force` removes every file derived from the old run (`clear_run`): trajectory, resume state, training
  tables, analysis tables, grok.json, comparison.json and the default report folder.
* A damaged file (a truncated snapshot or resume state) is a `DamagedRunFile` naming the file and the
  way back; a run too large for the machine is a `RunTooLarge` before anything is allocated or written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from headscreen.grokking.training.runfiles import (  # noqa: F401 (re-exported: the run-lifecycle errors)
    DamagedRunFile,
    GrokRunError,
    read_safetensors,
    restart_fix,
)
from headscreen.rundir.atomic import StoreError, _json_default, write_fault

TRAINING_TABLES = ("curves", "defect", "intervention")
ANALYSIS_TABLES = ("edge", "portrait", "fourier", "progress", "pca")
GROK_JSON = "grok.json"
ANALYSIS_FILES = (GROK_JSON, *(f"{t}.parquet" for t in ANALYSIS_TABLES))
REPORT_DIR = "report"  # `headscreen report <run>`'s default output folder
COMPARISON = "comparison.json"  # the published-recipe comparison (headscreen.grokking.published.compare), rewritten per run


class UnfinishedRun(GrokRunError):
    """Analysis results are asked for a run whose training has not finished."""


class RunTooLarge(GrokRunError):
    """The run would need more memory than the machine has."""


class AnalysisFailed(RuntimeError):
    """The analysis of a trained run failed inside the package (an import, a bug): not a user fault, so it
    keeps its traceback; the message names the run and the cause."""


class SweepRunsFailed(GrokRunError):
    """Some runs of a sweep failed; the finished ones are kept and summarised."""


# --- the trajectory an analysis belongs to ------------------------------------------------------
def _digest_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def trajectory_state(run: str | Path) -> dict:
    """{last_step, n_snapshots, complete, fingerprint} of the run's trajectory as it is on disk now."""
    import pandas as pd

    from headscreen.grokking.training.snapshots import TRAJECTORY, Trajectory

    run = Path(run)
    traj = Trajectory(run)
    steps = traj.steps
    h = hashlib.sha256(json.dumps({"steps": steps, "complete": traj.complete}).encode())
    manifest = run / "manifest.json"
    if manifest.is_file():
        h.update(str(json.loads(manifest.read_text()).get("config_hash")).encode())
    if steps:
        last = run / TRAJECTORY / traj.meta["checkpoints"][-1]["path"] / "model.safetensors"
        if last.is_file():
            _digest_file(h, last)
    for name in TRAINING_TABLES:
        path = run / f"{name}.parquet"
        if path.is_file():
            df = pd.read_parquet(path)
            h.update(f"{name}:{','.join(map(str, df.columns))}".encode())
            h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return {"last_step": steps[-1] if steps else None, "n_snapshots": len(steps), "complete": traj.complete,
            "fingerprint": h.hexdigest()[:16]}


def _normal(obj):
    return json.loads(json.dumps(obj, default=_json_default))


def current_analysis(run: str | Path, settings=None, *, any_settings: bool = False) -> dict | None:
    """grok.json when it was computed from the trajectory on disk now (and with `settings`, default
    AnalysisSettings(), unless `any_settings`); None when it is missing or stale. A Li2 run's grok.json is written by its
    trainer at the end of training and is current whenever the run is complete."""
    run = Path(run)
    path = run / GROK_JSON
    if not path.is_file():
        return None
    grok = json.loads(path.read_text())
    manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").is_file() else {}
    if manifest.get("config", {}).get("family") == "li2":
        return grok
    if grok.get("trajectory") != trajectory_state(run):
        return None
    if any_settings:
        return grok
    if settings is None:
        from headscreen.grokking.analysis.settings import AnalysisSettings

        settings = AnalysisSettings()
    if _normal((grok.get("settings") or {}).get("analysis")) != _normal(settings.to_dict()):
        return None
    return grok


def lock_holder(run: str | Path) -> str | None:
    """None when nobody holds the run's lock, else who holds it ("process 123 (grok)")."""
    from headscreen.rundir.store import RunLocked, RunStore

    store = RunStore(run)
    try:
        store.acquire("probe")
    except RunLocked as e:
        return str(e).split(" is in use by ", 1)[-1].split(";")[0]
    except StoreError:  # a read-only run: no writer can hold it
        return None
    store.release()
    return None


# --- removing derived files -----------------------------------------------------------------------
def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as e:
        raise write_fault(path, e) from e


def remove_analysis(run: str | Path, keep: tuple[str, ...] = ()) -> None:
    """Delete grok.json (first: a half-replaced analysis never looks current) and the analysis tables."""
    for name in ANALYSIS_FILES:
        if name not in keep:
            _remove(Path(run) / name)


def clear_run(run: str | Path) -> None:
    """Everything a grok run derived from its old config (for `--force`); manifest and lock stay."""
    from headscreen.grokking.training.interventions import BASIS_FILE
    from headscreen.grokking.training.snapshots import RESUME, TRAJECTORY

    run = Path(run)
    remove_analysis(run)
    for name in (RESUME, BASIS_FILE, *(f"{t}.parquet" for t in TRAINING_TABLES), COMPARISON, REPORT_DIR, TRAJECTORY):
        _remove(run / name)


# --- the memory a run needs -----------------------------------------------------------------------
def modular_bytes(cfg) -> int:
    """A lower bound on the bytes of a modular run's largest allocations: the p² table (int64 inputs,
    labels, split indices) and one whole-table evaluation (float32 logits [p², tasks, p] with its
    log-softmax, and the widest activation [p², 3, max(d_model, d_mlp)] twice)."""
    p, t = int(cfg.p), len(cfg.tasks)
    table = p * p * 8 * (3 + t + 2)
    logits = 3 * 4 * p * p * t * p
    width = max(cfg.model.d_model, cfg.model.d_mlp)
    return table + logits + 2 * 4 * p * p * 3 * width


def available_bytes(device: str = "cpu") -> int | None:
    """Memory available now: MemAvailable (/proc/meminfo) on the CPU, the free memory of a CUDA device."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(cfg, device: str = "cpu") -> None:
    """Raise `RunTooLarge` (before anything is allocated or written) when a modular run's table and
    evaluation need more memory than is available; sequence tasks size their own data and pass."""
    from headscreen.grokking.tasks.base import is_registered

    if cfg.tasks and is_registered(cfg.tasks[0]):
        return
    need, have = modular_bytes(cfg), available_bytes(device)
    if have is not None and need > have:
        raise RunTooLarge(
            f"p = {cfg.p} needs at least {need / 2**30:.1f} GiB for its p² = {cfg.p * cfg.p:,} examples and a "
            f"whole-table evaluation, more than the {have / 2**30:.1f} GiB available on {device}; use a smaller "
            f"--p (memory grows as p³)")
