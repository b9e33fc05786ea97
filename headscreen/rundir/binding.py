"""A run is bound to its series: what changed since the records were written, and which records still hold.

The manifest's `checkpoints` lists the identity of each checkpoint of the series the run was last
screened on (headscreen/series/identity.py), and every record carries in its metadata the identity of
its own checkpoint (and a sketch record that of θ_{t-1}'s checkpoint too, since s_t = s_{t-1} + Φδ_t
depends on every earlier checkpoint). So:

* a probe record holds while its checkpoint's identity is unchanged;
* a sketch record of an update's increment Φδ_t (meta `record: increment`, pipelines/screen_chunks.py)
  holds while its checkpoint and its predecessor are unchanged; a record of a running sum s_t (older
  runs) holds only along the longest prefix of the current series whose checkpoints and predecessors
  are all unchanged: the first changed, inserted or deleted step invalidates every later one;
* records of steps no longer in the series are stale;
* a different series altogether (another source, root folder or hub repository, or no checkpoint in
  common with the recorded one) is refused: the user chooses between another run directory and --force.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_SERIES_KEYS = ("source", "root", "repo")  # where the series lives; its display name may differ between commands


def describe_changes(old: list[dict], new: list[dict], limit: int = 6) -> str:
    """'removed steps [..]; inserted [..]; changed [..]' between two identity lists ('' if equal)."""
    a, b = {c["step"]: c for c in old}, {c["step"]: c for c in new}
    parts = []
    for label, steps in (("removed", sorted(set(a) - set(b))), ("inserted", sorted(set(b) - set(a))),
                         ("changed (other folder or content)", sorted(s for s in set(a) & set(b) if a[s] != b[s]))):
        if steps:
            more = f" and {len(steps) - limit} more" if len(steps) > limit else ""
            parts.append(f"{label} step(s) {steps[:limit]}{more}")
    return "; ".join(parts)


def _where(desc: dict) -> str:
    return f"{desc.get('name')!r} ({desc.get('source')}: {desc.get('root') or desc.get('repo') or '?'})"


def series_refusal(root: Path, old_manifest: dict, new_manifest: dict) -> str | None:
    """Why `new_manifest` names a different series than `old_manifest` (see the module doc), with the
    fix; None when it is the same series. Manifests without a `series` description are not checked."""
    old, new = old_manifest.get("series"), new_manifest.get("series")
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    fix = f"screen it into another --out, or pass --force to discard the records of {root} and recompute them"
    differs = [k for k in _SERIES_KEYS if old.get(k) != new.get(k)]
    if differs:
        return f"run {root} was screened on series {_where(old)}, not {_where(new)} ({' and '.join(differs)} {'differ' if len(differs) > 1 else 'differs'}); {fix}"
    old_ids, new_ids = old_manifest.get("checkpoints"), new_manifest.get("checkpoints")
    if old_ids and new_ids is not None and not any(c in old_ids for c in new_ids):
        return (f"run {root} was screened on other checkpoints than those of series {_where(new)} now "
                f"(none in common: {describe_changes(old_ids, new_ids)}); {fix}")
    return None


@dataclass(frozen=True)
class RecordPlan:
    """Which records of a run still hold for the current series."""

    stale_sketches: list[int]  # recorded steps whose sketch record must be recomputed or dropped
    stale_probes: list[int]  # recorded steps whose probe record must be recomputed or dropped
    first_stale: int | None  # first step of the current series whose sketch is (re)computed, if any

    @property
    def changes_records(self) -> bool:
        return bool(self.stale_sketches or self.stale_probes)


def plan_records(current: list[dict], sketch_meta: dict[int, dict], probe_meta: dict[int, dict]) -> RecordPlan:
    """Compare each record's stored identity (`meta["identity"]`, and a sketch's `meta["previous"]`)
    with the current series `current` (identities, oldest first)."""
    valid_sketch: set[int] = set()
    first_stale = None
    for i, ident in enumerate(current):
        meta = sketch_meta.get(ident["step"])
        previous = current[i - 1] if i else None
        holds = meta is not None and meta.get("identity") == ident and meta.get("previous") == previous
        # an increment record depends on θ_t and θ_{t-1} alone; a running-sum record on every earlier one
        if holds and (first_stale is None or meta.get("record") == "increment"):
            valid_sketch.add(ident["step"])
        elif first_stale is None:
            first_stale = ident["step"]
    by_step = {c["step"]: c for c in current}
    stale_probes = sorted(s for s, m in probe_meta.items() if by_step.get(s) is None or m.get("identity") != by_step[s])
    return RecordPlan(stale_sketches=sorted(set(sketch_meta) - valid_sketch), stale_probes=stale_probes,
                      first_stale=first_stale)


def checkpoint_refusal(root: Path, manifest: dict, identity: dict) -> str | None:
    """Why a checkpoint about to be loaded for a run (e.g. by validate) is not the one its tables were
    computed on, with the fix; None when it is (or when the run recorded no identities)."""
    recorded = {c["step"]: c for c in manifest.get("checkpoints") or []}
    if not recorded or recorded.get(identity["step"]) == identity:
        return None
    was = recorded.get(identity["step"])
    what = "is no longer in the series" if was is None else (
        f"changed since the screen (folder {was.get('path')} -> {identity.get('path')}, "
        f"fingerprint {was.get('fingerprint')} -> {identity.get('fingerprint')})")
    return (f"run {root}: checkpoint step {identity['step']} {what}; rerun the screen "
            f"(`headscreen screen <series> --out {root}`) so that its tables describe the current checkpoints")
