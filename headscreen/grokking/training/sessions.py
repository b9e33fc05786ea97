"""Training sessions of a grok run and the one torch thread count its trajectory is computed at.

A CPU run is bit-identical to an uninterrupted run only at the same torch thread count (measured: the
same seed at 1 and 2 threads differs by up to 3.9e-3 in a weight after 50 steps; docs/methods.md). So
a run records the thread count of its first session in series.json's `training.threads`, and every
resume trains at that count (`start_session` sets it; `keep_threads` restores the caller's after).

Every session is recorded when it starts, in series.json's `training.sessions`, with status "running";
`to_step` follows its snapshots; `finish_session` closes it ("finished", or "paused" for a `stop_at`).
A session that ended without closing (killed, Ctrl-C) keeps the last snapshot it wrote as `to_step`
and is marked "stopped" by the next session.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from pathlib import Path

import torch


def recorded_threads(meta: dict) -> int | None:
    """The trajectory's thread count: `training.threads`, or (runs written before it) its first session's."""
    training = meta.get("training") or {}
    if training.get("threads"):
        return int(training["threads"])
    sessions = training.get("sessions") or []
    return int(sessions[0]["threads"]) if sessions and sessions[0].get("threads") else None


def resume_threads(run: str | Path) -> int | None:
    """The thread count a rerun of `run` will train at: the recorded one of a run that can resume, else None."""
    from headscreen.grokking.training.snapshots import RESUME, Trajectory

    run = Path(run)
    traj = Trajectory(run)
    if traj.complete or not (run / RESUME).is_file():
        return None
    return recorded_threads(traj.meta)


@contextlib.contextmanager
def keep_threads():
    """Restore torch's intra-op thread count on leaving the block (a session may change it)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def foreign_trajectory(traj, config_hash: str) -> bool:
    """Whether `traj` was trained under another config than the manifest's (a `--force` killed between its
    new manifest and the removal of the old trajectory): it must not be resumed."""
    recorded = (traj.meta.get("training") or {}).get("config_hash")
    return recorded is not None and recorded != config_hash


def start_session(traj, start: int, device: str, config_hash: str | None = None) -> dict:
    """Record a new session of `traj` (saved at once) and train at the trajectory's thread count."""
    training = traj.meta.setdefault("training", {"sessions": []})
    if config_hash is not None:
        training["config_hash"] = config_hash
    sessions = training.setdefault("sessions", [])
    for s in sessions:
        if s.get("status") == "running":  # its process ended without closing it
            s["status"] = "stopped"
    threads = recorded_threads(traj.meta) if start > 0 else None
    if threads is not None and threads != torch.get_num_threads():
        print(f"{traj.root.parent}: resuming at the run's {threads} torch thread(s) (this process had "
              f"{torch.get_num_threads()}): a trajectory is reproducible only at one thread count",
              file=sys.stderr)
        torch.set_num_threads(threads)
    training["threads"] = torch.get_num_threads()
    session = {"from_step": start, "to_step": start, "threads": torch.get_num_threads(), "device": device,
               "status": "running", "pid": os.getpid(),
               "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    sessions.append(session)
    traj.save()
    return session


def finish_session(traj, session: dict, step: int, complete: bool, **fields) -> None:
    """Close `session` at `step` (the caller saves `traj`)."""
    session.update(to_step=step, status="finished" if complete else "paused", **fields)
