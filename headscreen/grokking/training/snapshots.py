"""A grokking run's trajectory as a checkpoint series, and the optimizer state it resumes from.

    <run>/trajectory/series.json                   {"format", "complete", "training", "checkpoints": [
                                                      {"step": N, "tokens": null, "path": "step_<N:09d>"}, ...]}
    <run>/trajectory/step_<N:09d>/model.safetensors  the model's state_dict at step N (before update N+1)
    <run>/trajectory/step_<N:09d>/config.json        model_type "headscreen-grok" + hyperparameters
    <run>/resume.safetensors                       AdamW state at the last snapshot (metadata: step;
                                                   headscreen.rundir.optimizer_state)

`headscreen.series.LocalSeries(<run>/trajectory)` reads it like any other series. Every file is
written atomically (headscreen.rundir.store); resume.safetensors is written last, so the step it names
always has its snapshot, series entry and table rows on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from headscreen.rundir.optimizer_state import load_optimizer_state, optimizer_state_step
from headscreen.rundir.optimizer_state import save_optimizer_state as save_optimizer  # noqa: F401 - the trainer's name
from headscreen.rundir.store import atomic_write, write_json

FORMAT = "headscreen-grok-trajectory/1"
TRAJECTORY = "trajectory"
RESUME = "resume.safetensors"


def step_dirname(step: int) -> str:
    return f"step_{step:09d}"


class Trajectory:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / TRAJECTORY
        path = self.root / "series.json"
        self.meta: dict = (json.loads(path.read_text()) if path.exists()
                           else {"format": FORMAT, "complete": False, "checkpoints": []})

    @property
    def steps(self) -> list[int]:
        return [c["step"] for c in self.meta["checkpoints"]]

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def save(self) -> None:
        write_json(self.root / "series.json", self.meta)

    def add(self, step: int, model: torch.nn.Module, hf_config: dict) -> None:
        """Write snapshot `step` (tensor names = state_dict names) and list it."""
        from safetensors.torch import save_file

        folder = self.root / step_dirname(step)
        tensors = {k: v.detach().contiguous().to("cpu", copy=True) for k, v in model.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda p: save_file(tensors, str(p)))
        write_json(folder / "config.json", hf_config)
        if step not in self.steps:
            self.meta["checkpoints"].append({"step": step, "tokens": None, "path": step_dirname(step)})
        self.save()

    def load(self, step: int) -> dict[str, torch.Tensor]:
        from headscreen.grokking.training.runfiles import read_safetensors, restart_fix

        return read_safetensors(self.root / step_dirname(step) / "model.safetensors", restart_fix(self.root.parent))

    def truncate(self, last_step: int) -> None:
        """Forget snapshots after `last_step` (written after the resume point) and stray folders."""
        self.meta["checkpoints"] = [c for c in self.meta["checkpoints"] if c["step"] <= last_step]
        self.meta["complete"] = False
        keep = {c["path"] for c in self.meta["checkpoints"]}
        if self.root.exists():
            for folder in self.root.glob("step_*"):
                if folder.is_dir() and folder.name not in keep:
                    shutil.rmtree(folder)
        self.save()

    def reset(self) -> None:
        self.meta = {"format": FORMAT, "complete": False, "checkpoints": []}
        self.truncate(-1)


def _damaged(path: Path):
    """resume.safetensors' named fault (headscreen.rundir.optimizer_state.Fault): `DamagedRunFile` + restart fix."""
    from headscreen.grokking.training.runfiles import DamagedRunFile, restart_fix

    return lambda reason: DamagedRunFile(f"{path} {reason}; {restart_fix(path.parent)}")


def resume_step(path: Path) -> int | None:
    """The step resume.safetensors names; None without one; `DamagedRunFile` when it cannot be read."""
    return optimizer_state_step(path, _damaged(path)) if path.exists() else None


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """The AdamW state of resume.safetensors into `optimizer`; `DamagedRunFile` when it cannot be read."""
    load_optimizer_state(path, optimizer, _damaged(path))
