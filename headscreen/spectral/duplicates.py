"""Duplicate checkpoints: consecutive revisions whose attention weights are identical (a zero update).

Public series contain consecutive revisions saved with byte-identical weights (reported for early
Pythia checkpoints). Such a checkpoint is not a training step: left in, it enters W rolling windows as
an update δ_t = 0 and shrinks, shifts and splits the window spectra of every head at once.

Detection needs no extra read. The update pass forms δ_t = θ_t − θ_{t−1} exactly from the stored
values (headscreen.spectral.fused: float64 differences of fp16/bf16/fp32 values) and sums its
square per head, so ‖δ_t‖ = 0 for **every** head exactly when every attention weight of the
checkpoint equals its predecessor's (a finite a − b is 0 only when a == b). That is the rule here:
all heads' exact update norms are 0. Weights outside attention are not read by the weight pass; the
record says whether the checkpoints' cheap content fingerprints (headscreen.series.identity: config,
headers, first and last 64 KiB of each weight file) agree as well, which a byte-identical copy
always does.

A duplicate is recorded (manifest `duplicates`: step, name, same_as_step, same_as_name,
fingerprint_equal) and left out of the fingerprint windows: the windows are formed over the other
checkpoints, whose updates are unchanged (θ_t = θ_{t−1} makes the next update span both steps
exactly). Its sketch and probe records stay (its probe tables equal its predecessor's).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

RULE = "every head's exact attention update norm is 0 (all W_Q/W_K/W_V/W_O values equal the previous checkpoint's)"


def find_duplicates(steps: list[int], norms: Float[Tensor, "T layer head"],
                    identities: list[dict] | None = None) -> list[dict]:
    """The checkpoints (after the first) whose every head has ‖δ_t‖ = 0 exactly, oldest first.

    `norms[t]` is the exact update norm of `steps[t]` from `steps[t-1]` (row 0 is the series' first
    checkpoint: no update). `identities`: the manifest's `checkpoints` (for names and fingerprints),
    any order. A run of duplicates names the first checkpoint of the run (the one whose weights
    they all repeat) as `same_as_step`."""
    if norms.shape[0] != len(steps):
        raise ValueError(f"norms has {norms.shape[0]} rows but there are {len(steps)} steps; one row per step")
    by_step = {c.get("step"): c for c in identities or [] if isinstance(c, dict)}
    out, origin = [], steps[0] if steps else None
    for t in range(1, len(steps)):
        row = norms[t]
        if bool(torch.isfinite(row).all()) and bool((row == 0).all()):
            a, b = by_step.get(steps[t], {}), by_step.get(origin, {})
            fa, fb = a.get("fingerprint"), b.get("fingerprint")
            local = a.get("path") is not None and b.get("path") is not None and fa and fb
            out.append({"step": int(steps[t]), "name": a.get("name"), "same_as_step": int(origin),
                        "same_as_name": b.get("name"), "fingerprint_equal": (fa == fb) if local else None})
        else:
            origin = steps[t]
    return out


def drop_duplicates(sketches: Float[Tensor, "T layer head d"], steps: list[int], norms: Float[Tensor, "T layer head"],
                    duplicates: list[dict]) -> tuple[Tensor, list[int], Tensor]:
    """(sketches, steps, norms) without the duplicate checkpoints' rows: the windows' input.

    Exact, not approximate: a duplicate's sketch equals its predecessor's and the next update's norm
    is already ‖θ_{t+1} − θ_{t−1}‖ (θ_t = θ_{t−1}), so the rows left are those of a series that
    never saved the copy."""
    gone = {d["step"] for d in duplicates}
    keep = [i for i, s in enumerate(steps) if s not in gone]
    idx = torch.tensor(keep, dtype=torch.long)
    return sketches[idx], [steps[i] for i in keep], norms[idx]


def describe(duplicates: list[dict]) -> str:
    """One sentence for logs and the report."""
    pairs = ", ".join(f"step {d['step']} = step {d['same_as_step']}" for d in duplicates)
    return (f"{len(duplicates)} checkpoint(s) repeat the previous checkpoint's attention weights exactly ({pairs}); "
            "a zero update is not a training step, so they are left out of the fingerprint windows")
