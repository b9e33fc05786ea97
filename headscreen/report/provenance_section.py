"""The provenance section: where the numbers came from, read from manifest.json (and circuits.json thresholds)."""

from __future__ import annotations

import json

from headscreen.report.content import Section, Table
from headscreen.report.load import RunResults
from headscreen.report.runinfo import model_name
from headscreen.rundir.jsonsafe import json_safe

NOT_RECORDED = "not recorded in manifest.json"

# field -> where to look, first hit wins: ("config", key) reads manifest["config"][key]
_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "source": (("source",), ("config", "model_config", "source"), ("config", "source"), ("series", "repo"),
               ("series", "root"), ("series", "source")),
    "revisions": (("revisions",), ("series", "revisions"), ("series", "steps"), ("config", "revisions")),
    "probe_settings": (("probes",), ("config", "probes"), ("probe_settings",), ("config", "probe_settings")),
    "thresholds": (("thresholds",), ("config", "thresholds")),
    "seeds": (("seeds",), ("seed",), ("config", "seeds"), ("config", "seed")),
    "loading_mode": (("loading_mode",), ("loading",), ("config", "loading_mode")),
    "package_versions": (("packages",), ("package_versions",), ("versions",)),
    "git_commit": (("git_commit",), ("git",), ("commit",)),
    "python": (("python",),),
    "platform": (("platform",),),
    "created": (("created",), ("created_at",), ("timestamp",)),
}
_OPTIONAL = ("created", "python", "platform")


def _lookup(manifest: dict, paths: tuple[tuple[str, ...], ...]):
    for path in paths:
        node = manifest
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node not in (None, "", {}, []):
            return node
    return None


def _revisions_from_series(manifest: dict):
    series = manifest.get("series")
    if isinstance(series, dict) and isinstance(series.get("checkpoints"), list):
        steps = [ck.get("step") for ck in series["checkpoints"] if isinstance(ck, dict)]
        return [s for s in steps if s is not None] or None
    return None


def provenance_data(run: RunResults) -> dict:
    m = run.manifest
    out = {"model": model_name(run), "run_directory": str(run.path)}
    for name, paths in _FIELDS.items():
        out[name] = json_safe(_lookup(m, paths))
    if out["revisions"] is None:
        out["revisions"] = _revisions_from_series(m)
    if out["thresholds"] is None and run.circuits and isinstance(run.circuits.get("thresholds"), dict):
        out["thresholds"] = json_safe(run.circuits["thresholds"])
    out["files_missing"] = list(run.missing)
    skipped = m.get("skipped")
    out["skipped_checkpoints"] = [s for s in skipped if isinstance(s, dict)] if isinstance(skipped, list) else []
    dupes = m.get("duplicates")
    out["duplicate_checkpoints"] = [d for d in dupes if isinstance(d, dict)] if isinstance(dupes, list) else []
    return out


def _cell(value) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, dict):
        return "; ".join(f"{k} = {_inline(v)}" for k, v in value.items())
    if isinstance(value, list):
        shown = ", ".join(_inline(v) for v in value[:40])
        return shown + (f" … ({len(value)} in all)" if len(value) > 40 else "")
    return str(value)


def _inline(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=False, default=str)
    return str(value)


_LABELS = {
    "model": "Model", "run_directory": "Run directory", "source": "Source", "revisions": "Revisions (steps)",
    "probe_settings": "Probe settings", "thresholds": "Thresholds", "seeds": "Seeds",
    "loading_mode": "Loading mode", "package_versions": "Package versions", "git_commit": "Git commit",
    "python": "Python", "platform": "Platform", "created": "Created", "files_missing": "Files not in the run",
    "skipped_checkpoints": "Skipped checkpoints", "duplicate_checkpoints": "Duplicate checkpoints",
}


def _skipped_cell(skipped: list[dict]) -> str:
    if not skipped:
        return "none"
    return "; ".join(f"step {s.get('step')} ({s.get('name')}): {s.get('reason')}" for s in skipped)


def provenance_section(run: RunResults) -> Section:
    data = provenance_data(run)
    rows = []
    for key, label in _LABELS.items():
        value = data.get(key)
        if key == "files_missing":
            rows.append([label, ", ".join(value) if value else "none: every file of docs/run-format.md is present"])
        elif key == "skipped_checkpoints":
            rows.append([label, _skipped_cell(value)])
        elif key == "duplicate_checkpoints":
            rows.append([label, "; ".join(f"step {d.get('step')} ({d.get('name')}): same weights as step "
                                          f"{d.get('same_as_step')}" for d in value) or "none"])
        else:
            rows.append([label, _cell(value)])
    absent = [_LABELS[k] for k in _FIELDS if data.get(k) is None and k not in _OPTIONAL]
    notices = []
    if data["skipped_checkpoints"]:
        steps = [s.get("step") for s in data["skipped_checkpoints"]]
        notices.append(
            f"The screen skipped {len(steps)} checkpoint(s) that failed their checks (--skip-bad): steps "
            f"{', '.join(map(str, steps))}. They are absent from every table; the update of the next screened "
            "checkpoint spans the gap (reasons under Skipped checkpoints below)."
        )
    if data["duplicate_checkpoints"]:
        from headscreen.spectral.duplicates import describe

        notices.append(describe(data["duplicate_checkpoints"]) + " (they keep their probe tables).")
    if absent:
        notices.append(
            "The manifest does not record: " + ", ".join(absent) + ". Re-screen with the current version "
            "to record them."
        )
    return Section(
        key="provenance", title="Provenance",
        intro="Rendered from the run directory alone; no model was loaded.",
        notices=notices, tables=[Table(columns=["Field", "Value"], rows=rows)], data=data,
    )
