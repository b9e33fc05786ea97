"""Train a grokking model and capture its trajectory: snapshots, curves and the commutator defect.

One step s, in order: evaluate the whole table every `eval_every` steps (curves.parquet rows at
step s), measure the commutator defect every `defect_every` steps (defect.parquet), write snapshot s
every `snapshot_every` steps (and at the last step), then apply update s+1 on batch s. Snapshot s
holds the weights after s updates.

Reproducibility. Training batches, defect batches and the model init are drawn from generators seeded
by (seed, step, stream) alone, so nothing random is carried from step to step except the model and the
AdamW state; the defect draws from its own stream and leaves parameters and gradients as it found
them, so measuring it does not change the trajectory. A run resumes from its last snapshot (weights
from the snapshot, AdamW state from resume.safetensors) and gives bit-identical snapshots and tables
to an uninterrupted run at the same torch thread count; a resume trains at the thread count the run
recorded (headscreen.grokking.training.sessions), and every session is recorded when it starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from headscreen.compute.runtime import deterministic_algorithms
from headscreen.grokking.config import GrokConfig, config_defaults
from headscreen.grokking.tasks.base import make_task
from headscreen.grokking.tasks.base import modular_loss as loss_fn  # noqa: F401 - the modular loss, as before
from headscreen.grokking.training.defect import commutator_defect, defect_summary
from headscreen.grokking.training.interventions import BASIS_FILE, RHO_COLUMNS, GradientIntervention
from headscreen.grokking.training.lifecycle import check_fits, clear_run
from headscreen.grokking.training.sessions import (
    finish_session,
    foreign_trajectory,
    keep_threads,
    start_session,
)
from headscreen.grokking.training.snapshots import (
    RESUME,
    Trajectory,
    load_optimizer,
    resume_step,
    save_optimizer,
)
from headscreen.rundir.store import RunStore

Batch = tuple[Tensor, Tensor]  # (inputs, labels) of the task (modular: [B, 3], [B, n_tasks])
STREAM_TRAIN, STREAM_DEFECT = 0, 1
CURVE_COLUMNS = ["step", "task", "train_loss", "test_loss", "train_acc", "test_acc"]
DEFECT_COLUMNS = ["step", "defect_median", "defect_q25", "defect_q75", "n_pairs"]


def generator(seed: int, step: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def batch_indices(cfg: GrokConfig, n_train: int, step: int) -> Tensor | None:
    """Rows of the training set used by update step+1; None = the full batch."""
    if cfg.batch_size is None or cfg.batch_size >= n_train:
        return None
    return torch.randperm(n_train, generator=generator(cfg.seed, step, STREAM_TRAIN))[: cfg.batch_size]


def defect_pairs(cfg: GrokConfig, train: Batch, step: int) -> list[tuple[Batch, Batch]]:
    """K pairs of training minibatches for the defect at `step` (their own seeded stream)."""
    x, y = train
    g, n = generator(cfg.seed, step, STREAM_DEFECT), len(x)
    bs = min(cfg.defect_batch_size, n)
    out = []
    for _ in range(cfg.defect_pairs):
        ia, ib = torch.randperm(n, generator=g)[:bs], torch.randperm(n, generator=g)[:bs]
        out.append(((x[ia], y[ia]), (x[ib], y[ib])))
    return out


class _Batches:
    """A run's training and defect batches: stateless per-step draws (`without_replacement`), or the
    published stream with replacement (sampling.ReplacementStream, replayed up to `start` on resume)."""

    def __init__(self, cfg: GrokConfig, train: Batch, start: int):
        self.cfg, self.train, self.stream = cfg, train, None
        if cfg.batch_sampling == "with_replacement":
            from headscreen.grokking.tasks.sampling import ReplacementStream

            self.stream = ReplacementStream(cfg.seed, len(train[0]), cfg.batch_size, defect_every=cfg.defect_every,
                                            defect_pairs=cfg.defect_pairs, defect_batch_size=cfg.defect_batch_size)
            self.stream.advance_to(start)

    def defect(self, step: int) -> list[tuple[Batch, Batch]]:
        if self.stream is None:
            return defect_pairs(self.cfg, self.train, step)
        x, y = self.train
        return [((x[a], y[a]), (x[b], y[b])) for a, b in self.stream.defect_indices(step)]

    def indices(self, step: int) -> Tensor | None:
        if self.stream is None:
            return batch_indices(self.cfg, len(self.train[0]), step)
        return self.stream.train_indices(step)


def stop_step(cfg: GrokConfig, curves: list[dict]) -> int | None:
    """The step the stop rule ends the run at: `stop_after` steps after the evaluation that completes
    `stop_patience` evaluations in a row with every task's test accuracy >= stop_acc; None: not yet / no rule."""
    if cfg.stop_acc is None:
        return None
    worst: dict[int, float] = {}
    for r in curves:
        worst[r["step"]] = min(worst.get(r["step"], 1.0), r["test_acc"])
    run = 0
    for step in sorted(worst):
        run = run + 1 if worst[step] >= cfg.stop_acc else 0
        if run >= cfg.stop_patience:
            return step + cfg.stop_after
    return None


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def _previous_rows(store: RunStore, name: str, before: int) -> list[dict]:
    df = store.read_table(name)
    return [] if df is None else df[df["step"] < before].to_dict("records")


def run_manifest(cfg: GrokConfig, device: dict | None = None) -> dict:
    """The run's manifest; `device` (DevicePlan.record()) is the latest session's, outside the config hash."""
    from headscreen.rundir.provenance import provenance

    out = {"kind": "grok", "config": cfg.to_dict(), "seeds": {"seed": cfg.seed}, "provenance": provenance()}
    if device is not None:
        out["device"] = device
    return out


def _data_to(data, device: str):
    """A task's SplitTable (frozen dataclass) with its tensors on `device` (itself on the CPU)."""
    import dataclasses

    if device == "cpu":
        return data
    moved = {f.name: getattr(data, f.name).to(device) for f in dataclasses.fields(data)
             if isinstance(getattr(data, f.name), Tensor)}
    return dataclasses.replace(data, **moved)


def train_run(cfg: GrokConfig, run_dir: str | Path, *, progress: bool = True, force: bool = False,
              stop_at: int | None = None, on_snapshot: Callable[[int, torch.nn.Module], None] | None = None,
              device: str | None = "cpu") -> Path:
    """Train `cfg` into `run_dir` (layout: docs/run-format.md); resume a partial run of the same config.

    force: discard a run of another config (or this one) and start over. stop_at: leave after step
    `stop_at`'s evaluation and snapshot, as an interrupted run would (for tests and chunked runs).
    on_snapshot(step, model): called after each snapshot is written (e.g. to keep an in-memory history).
    Memory: the model, AdamW state and the p² table; snapshots go straight to disk.
    device ("cpu", "cuda", "auto"; headscreen/compute/device.py): where the model, its data and its updates live
    (float32: the defect needs the model's own precision). Gradient interventions run on the CPU only.
    """
    from tqdm.auto import tqdm

    from headscreen.compute.device import DeviceError, plan_device

    plan = plan_device(device, mixed_precision=False)
    if plan.device != "cpu" and cfg.intervention.active:
        raise DeviceError("a gradient intervention (intervention.kind) runs on the CPU only: use --device cpu")
    run = Path(run_dir)
    check_fits(cfg, plan.device)  # before a manifest is written or a table allocated
    with (RunStore.open(run, run_manifest(cfg, plan.record()), force=force, defaults=config_defaults()) as store,
          deterministic_algorithms(), keep_threads()):
        traj = Trajectory(run)
        if force:  # every file derived from the old run goes (lifecycle.clear_run)
            clear_run(run)
            traj.reset()
        if traj.complete:
            return run
        task = make_task(cfg)
        if hasattr(task, "data"):
            task.data = _data_to(task.data, plan.device)
        model = task.build_model(cfg.seed).train().to(plan.device)  # initialised on the CPU, as on every device
        params = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        config_hash = store.manifest()["config_hash"]
        start = None if foreign_trajectory(traj, config_hash) else resume_step(run / RESUME)
        if start is not None and start in traj.steps:
            model.load_state_dict(traj.load(start))
            load_optimizer(run / RESUME, optimizer)
            traj.truncate(start)
        else:
            start = 0
            traj.reset()
            (run / BASIS_FILE).unlink(missing_ok=True)
        session = start_session(traj, start, plan.device, config_hash)  # recorded now: a killed session is kept too
        curves = _previous_rows(store, "curves", start)
        defects = _previous_rows(store, "defect", start)
        defect_fn = commutator_defect if cfg.defect_every else None
        train = task.train()
        steer = GradientIntervention(cfg.intervention, params, run, cfg.seed) if cfg.intervention.active else None
        if steer is not None:
            steer.rows = _previous_rows(store, "intervention", start)
        timers = dict.fromkeys(("update", "eval", "defect", "snapshot"), 0.0)
        batches = _Batches(cfg, train, start)
        bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step", desc=run.name, leave=False)
        for step in range(start, cfg.steps + 1):
            last = step in (cfg.steps, stop_step(cfg, curves))
            t0 = time.perf_counter()
            if step % cfg.eval_every == 0 or last:
                rows = task.evaluate(model)
                curves.extend({"step": step, **r} for r in rows)
                bar.set_postfix_str(" ".join(f"{r['task']} train {r['train_acc']:.2f} test {r['test_acc']:.2f}"
                                             for r in rows))
                last = step in (cfg.steps, stop_step(cfg, curves))
            t1 = time.perf_counter()
            if defect_fn is not None and step % cfg.defect_every == 0:
                d = defect_fn(model, task.loss_fn, batches.defect(step), eta=cfg.defect_eta, params=params,
                              form=cfg.defect_form, min_step=cfg.defect_min_step)
                defects.append({"step": step, **defect_summary(d)})
            t2 = time.perf_counter()
            if step % cfg.snapshot_every == 0 or last:
                session["to_step"] = step
                traj.add(step, model, model.hf_config())
                if on_snapshot is not None:
                    on_snapshot(step, model)
                store.write_table("curves", _frame(curves, CURVE_COLUMNS))
                store.write_table("defect", _frame(defects, DEFECT_COLUMNS))
                if steer is not None:
                    store.write_table("intervention", _frame(steer.rows, RHO_COLUMNS))
                if not last:
                    save_optimizer(run / RESUME, optimizer, step)
            t3 = time.perf_counter()
            timers["eval"] += t1 - t0
            timers["defect"] += t2 - t1
            timers["snapshot"] += t3 - t2
            if last or (stop_at is not None and step >= stop_at):
                break
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
            idx = batches.indices(step)
            idx = idx if idx is None or plan.device == "cpu" else idx.to(plan.device)
            batch = train if idx is None else (train[0][idx], train[1][idx])
            optimizer.zero_grad(set_to_none=True)
            task.loss_fn(model, batch).backward()
            if steer is not None:
                steer.before_update(step, record=step % cfg.eval_every == 0)
                steer.modify_grads(step)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if steer is not None:
                steer.after_update(step)
            timers["update"] += time.perf_counter() - t3
            bar.update(1)
        bar.close()
        finish_session(traj, session, step, last, load_average=list(os.getloadavg()),
                       seconds={k: round(v, 3) for k, v in timers.items()}, defect_measured=defect_fn is not None)
        if last:
            traj.meta["complete"] = True
            if step < cfg.steps:
                traj.meta["stopped_at"] = step  # the stop rule ended the run
            (run / RESUME).unlink(missing_ok=True)
        traj.save()
    return run


def is_complete(run_dir: str | Path) -> bool:
    return Trajectory(run_dir).complete
