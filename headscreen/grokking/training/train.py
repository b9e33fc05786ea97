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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from headscreen.compute.runtime import deterministic_algorithms
from headscreen.config.optimizer import scheduled_lr
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
        loop = _Loop.open(cfg, run, store, traj, plan.device, on_snapshot)
        step, last = loop.steps(progress, stop_at)
        finish_session(traj, loop.session, step, last, load_average=list(os.getloadavg()),
                       seconds={k: round(v, 3) for k, v in loop.timers.items()},
                       defect_measured=loop.defect_fn is not None)
        if last:
            traj.meta["complete"] = True
            if step < cfg.steps:
                traj.meta["stopped_at"] = step  # the stop rule ended the run
            (run / RESUME).unlink(missing_ok=True)
        traj.save()
    return run


@dataclass
class _Loop:
    """One training session of a run: its model, optimizer, batches, tables so far and timers."""

    cfg: GrokConfig
    run_dir: Path
    store: RunStore
    traj: Trajectory
    device: str
    task: Any
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    start: int
    session: dict
    train: Batch
    batches: _Batches
    curves: list[dict]
    defects: list[dict]
    steer: GradientIntervention | None
    on_snapshot: Callable[[int, torch.nn.Module], None] | None
    defect_fn: Callable | None = None
    timers: dict = field(default_factory=lambda: dict.fromkeys(("update", "eval", "defect", "snapshot"), 0.0))

    @classmethod
    def open(cls, cfg: GrokConfig, run: Path, store: RunStore, traj: Trajectory, device: str,
              on_snapshot) -> _Loop:
        """Build the task and model, resume from the last snapshot when the run has one, record the session."""
        task = make_task(cfg)
        if hasattr(task, "data"):
            task.data = _data_to(task.data, device)
        model = task.build_model(cfg.seed).train().to(device)  # initialised on the CPU, as on every device
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
        session = start_session(traj, start, device, config_hash)  # recorded now: a killed session is kept too
        curves = _previous_rows(store, "curves", start)
        defects = _previous_rows(store, "defect", start)
        train = task.train()
        steer = GradientIntervention(cfg.intervention, params, run, cfg.seed) if cfg.intervention.active else None
        if steer is not None:
            steer.rows = _previous_rows(store, "intervention", start)
        return cls(cfg=cfg, run_dir=run, store=store, traj=traj, device=device, task=task, model=model, params=params,
                   optimizer=optimizer, start=start, session=session, train=train,
                   batches=_Batches(cfg, train, start), curves=curves, defects=defects, steer=steer,
                   on_snapshot=on_snapshot, defect_fn=commutator_defect if cfg.defect_every else None)

    def steps(self, progress: bool, stop_at: int | None) -> tuple[int, bool]:
        """Steps from `start` to the end (or `stop_at`, or the stop rule) -> (the last step, whether the run ended)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.start, disable=not progress, unit="step", desc=self.run_dir.name,
                   leave=False)
        for step in range(self.start, cfg.steps + 1):
            last = self.observe(step, bar)
            if last or (stop_at is not None and step >= stop_at):
                break
            t3 = time.perf_counter()
            self.update(step)
            self.timers["update"] += time.perf_counter() - t3
            bar.update(1)
        bar.close()
        return step, last

    def observe(self, step: int, bar) -> bool:
        """Evaluation, defect and snapshot of step `step` (each on its schedule); whether it is the last step."""
        cfg, curves = self.cfg, self.curves
        last = step in (cfg.steps, stop_step(cfg, curves))
        t0 = time.perf_counter()
        if step % cfg.eval_every == 0 or last:
            rows = self.task.evaluate(self.model)
            curves.extend({"step": step, **r} for r in rows)
            bar.set_postfix_str(" ".join(f"{r['task']} train {r['train_acc']:.2f} test {r['test_acc']:.2f}"
                                         for r in rows))
            last = step in (cfg.steps, stop_step(cfg, curves))
        t1 = time.perf_counter()
        if self.defect_fn is not None and step % cfg.defect_every == 0:
            d = self.defect_fn(self.model, self.task.loss_fn, self.batches.defect(step), eta=cfg.defect_eta,
                               params=self.params, form=cfg.defect_form, min_step=cfg.defect_min_step)
            self.defects.append({"step": step, **defect_summary(d)})
        t2 = time.perf_counter()
        if step % cfg.snapshot_every == 0 or last:
            self.snapshot(step, last)
        t3 = time.perf_counter()
        self.timers["eval"] += t1 - t0
        self.timers["defect"] += t2 - t1
        self.timers["snapshot"] += t3 - t2
        return last

    def snapshot(self, step: int, last: bool) -> None:
        """Snapshot `step`, the tables so far, and (unless it is the last) the resume point."""
        self.session["to_step"] = step
        self.traj.add(step, self.model, self.model.hf_config())
        if self.on_snapshot is not None:
            self.on_snapshot(step, self.model)
        self.store.write_table("curves", _frame(self.curves, CURVE_COLUMNS))
        self.store.write_table("defect", _frame(self.defects, DEFECT_COLUMNS))
        if self.steer is not None:
            self.store.write_table("intervention", _frame(self.steer.rows, RHO_COLUMNS))
        if not last:
            save_optimizer(self.run_dir / RESUME, self.optimizer, step)

    def update(self, step: int) -> None:
        """Update step+1 on batch `step` (scheduled lr, intervention hooks, clipping)."""
        cfg, steer = self.cfg, self.steer
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, step, steps=cfg.steps, warmup=cfg.warmup, decay=cfg.lr_decay,
                                       decay_start=cfg.lr_decay_start, final=cfg.lr_final)
        idx = self.batches.indices(step)
        idx = idx if idx is None or self.device == "cpu" else idx.to(self.device)
        batch = self.train if idx is None else (self.train[0][idx], self.train[1][idx])
        self.optimizer.zero_grad(set_to_none=True)
        self.task.loss_fn(self.model, batch).backward()
        if steer is not None:
            steer.before_update(step, record=step % cfg.eval_every == 0)
            steer.modify_grads(step)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        if steer is not None:
            steer.after_update(step)


def is_complete(run_dir: str | Path) -> bool:
    return Trajectory(run_dir).complete
