"""An optimizer's state in a run directory, for an exact resume: the one implementation both trainers use
(the synthetic series trainer, headscreen.synthetic.train, and the grok trainer,
headscreen.grokking.training.train).

    <run>/resume.safetensors   tensors `<param index>.<state name>` (e.g. `3.exp_avg`), metadata {"step": "N"}

Tensors are written as contiguous CPU copies (safetensors stores only contiguous memory), atomically
(headscreen.rundir.store.atomic_write). Reading a missing or damaged file raises the caller's named fault:
`fault(reason)` builds it from a reason such as "cannot be read (<the reader's error>)", "is missing" or
"names no step (metadata step = '')", so each trainer names its own file, error type and recovery.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from headscreen.rundir.store import atomic_write

#: builds the caller's named error from a reason ("cannot be read (...)", "is missing", "names no step (...)")
Fault = Callable[[str], Exception]


def _reason(err: Exception) -> str:
    return f"cannot be read ({' '.join(str(err).split())[:120]})"


def save_optimizer_state(path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    """The optimizer's per-parameter state as safetensors (`<param index>.<name>`), `step` in the metadata."""
    from safetensors.torch import save_file

    tensors = {f"{i}.{k}": v.detach().contiguous().to("cpu", copy=True)
               for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"step": str(step)}))


def optimizer_state_step(path: Path, fault: Fault) -> int:
    """The step the file names; `fault(...)` when it cannot be read or names no step."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - SafetensorError, a bad header, a short read: one named fault
        raise fault(_reason(e)) from None
    step = meta.get("step", "")
    if not step.isdigit():
        raise fault(f"names no step (metadata step = {step!r})")
    return int(step)


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer, fault: Fault) -> None:
    """Load the file's per-parameter state into `optimizer` (its param groups stay as built); `fault(...)`
    when the file is missing or cannot be read."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise fault("is missing") from None
    except Exception as e:  # noqa: BLE001 - as above
        raise fault(_reason(e)) from None
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    sd["state"] = state
    optimizer.load_state_dict(sd)


__all__ = ["Fault", "load_optimizer_state", "optimizer_state_step", "save_optimizer_state"]
