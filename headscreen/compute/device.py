"""Where the tensors live: one helper that turns `--device cuda|cpu|auto` into a torch device.

`resolve_device("auto")` picks CUDA when torch sees a GPU and the CPU otherwise; `"cuda"` (or
`"cuda:N"`) where no GPU exists is a `DeviceError` (a ValueError: the CLI prints it on one line and
exits with code 2). `training_autocast(device)` is the mixed precision used for training steps:
bf16 autocast on a GPU that supports bf16, nothing (float32) on the CPU, where bf16 matmuls are slow
and the checkpoints of the CPU recipes must stay bitwise reproducible. `describe(device, dtype)` is the
record every run writes (manifest / series.json / grok.json settings).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A device that this machine does not have, or a device name that is not one of DEVICE_CHOICES."""


@dataclass(frozen=True)
class DevicePlan:
    """The resolved device and the dtype its training steps compute in (autocast)."""

    device: str  # "cpu" or "cuda[:N]": a torch device string
    requested: str  # what the caller asked for ("auto", "cpu", "cuda", "cuda:1")
    autocast_dtype: str | None  # "bfloat16" when training runs under autocast, else None (float32)

    def record(self) -> dict:
        """The manifest entry: where the run computed and in which precision."""
        import torch

        name = torch.cuda.get_device_name(self.device) if self.device.startswith("cuda") else "cpu"
        return {"device": self.device, "requested": self.requested, "device_name": name,
                "param_dtype": "float32", "compute_dtype": self.autocast_dtype or "float32"}


def resolve_device(requested: str | None = "auto", *, flag: str = "--device") -> str:
    """A torch device string for `requested` ("auto", "cpu", "cuda" or "cuda:N"); None means "auto"."""
    import torch

    req = "auto" if requested is None else str(requested).strip().lower()
    base, _, index = req.partition(":")
    if base not in DEVICE_CHOICES or (index and (base != "cuda" or not index.isdigit())):
        raise DeviceError(f"{flag} {requested!r} is not a device: use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if base == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if base == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise DeviceError(f"{flag} {requested}: torch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                          f"built {'with' if torch.version.cuda else 'without'} CUDA); use {flag} cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"{flag} {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of those")
    return req


def plan_device(requested: str | None = "auto", *, mixed_precision: bool = True, flag: str = "--device") -> DevicePlan:
    """The device for `requested` and the autocast dtype of training steps on it (module doc)."""
    import torch

    device = resolve_device(requested, flag=flag)
    bf16 = mixed_precision and device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return DevicePlan(device=device, requested="auto" if requested is None else str(requested),
                      autocast_dtype="bfloat16" if bf16 else None)


def training_autocast(plan: DevicePlan):
    """The autocast context of one forward pass under `plan` (a no-op in float32)."""
    import torch

    if plan.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, plan.autocast_dtype))
