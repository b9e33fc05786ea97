"""Revision schedules of hub checkpoint series, generated from data in `model_configs/*.yaml`.

A schedule is a mapping like
    {"log2_until": 512, "linear": {"start": 1000, "stop": 143000, "every": 1000}}
or an explicit {"steps": [...]}, combined with a revision format such as
`step{step}` (Pythia), `step{step}-tokens{tokens_b}B` (OLMo) or `stage1-step{step}-tokens{tokens_b}B` (OLMo-2),
where `tokens_b` = round(step · tokens_per_step / 1e9).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Revision:
    step: int
    revision: str
    tokens: int | None


def schedule_steps(spec: dict) -> list[int]:
    """The sorted unique steps of a schedule spec (keys: steps, zero, log2_until, linear)."""
    allowed = {"steps", "zero", "log2_until", "linear"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"schedule: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    steps: set[int] = set(int(s) for s in spec.get("steps", []))
    if spec.get("zero", False):
        steps.add(0)
    if "log2_until" in spec:
        s = 1
        while s <= int(spec["log2_until"]):
            steps.add(s)
            s *= 2
    if "linear" in spec:
        lin = spec["linear"]
        missing = {"start", "stop", "every"} - set(lin)
        if missing:
            raise ValueError(f"schedule.linear: missing {sorted(missing)}; give start, stop and every")
        if int(lin["every"]) <= 0:
            raise ValueError(f"schedule.linear.every must be positive, got {lin['every']}")
        steps.update(range(int(lin["start"]), int(lin["stop"]) + 1, int(lin["every"])))
    if not steps:
        raise ValueError("schedule: no steps; give steps: [...], log2_until or linear")
    return sorted(steps)


def revisions(spec: dict, revision_format: str, tokens_per_step: int | None = None) -> list[Revision]:
    """Hub revisions for a schedule: one `Revision(step, name, tokens)` per step."""
    out = []
    for step in schedule_steps(spec):
        tokens = step * tokens_per_step if tokens_per_step else None
        tokens_b = round(tokens / 1e9) if tokens is not None else None
        if "{tokens_b}" in revision_format and tokens_b is None:
            raise ValueError(f"revision format {revision_format!r} needs tokens_per_step in the config")
        out.append(Revision(step, revision_format.format(step=step, tokens_b=tokens_b), tokens))
    return out
