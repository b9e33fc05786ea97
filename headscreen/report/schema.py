"""Normalise the JSON documents of a run (circuits.json, validation.json) into plain records.

docs/run-format.md names what these files hold, not their exact layout. The readers take the layout
`headscreen screen` writes (headscreen.probes.screen.summarise_series) and a few simpler ones, and
raise a SchemaError naming the file, the key and the expected shape otherwise.

Heads may be written as ``[layer, head]``, ``{"layer": L, "head": H}`` or ``"L4H4"``.
Anything "per step" may be a dict keyed by step (``{"960": {...}}``) or a list of records that each
carry ``"step"``. Every record may name its ``probe``.

circuits.json (as the screen writes it; alternatives in brackets)::

    {"thresholds": {...},
     "steps": {"<step>": {"<probe>": {"induction": [heads], "previous": [heads], "bos": [heads]}}}
              [or {"<step>": {"induction": ..., ...}}],
     "emergence": [{"probe", "layer", "head", "class", "emergence_step"}]  [or {"<class>": {"L1H2": step}}],
     "lead_times": [{"probe", "layer", "head", "class", "metric", "onset_step", "emergence_step", "lead_time"}],
     "bos_layers01": [{"step", "probe", "bos_layer0", "bos_layer1", "bos_layers01"}]
                     [or {"<step>": {"layer0": n, "layer1": m}} or {"<step>": n}],
     "pr_integral": {"<probe>": [{"layer", "head", "integral", "rank", "picked"}]}  [or "pr_ranking": [...]]}

validation.json (as `headscreen validate` writes it)::

    {"status": "done" | "no circuit", "reason"?, "step", "probe", "circuit",
     "ablations": {"zero" | "mean" | "resample": <per-checkpoint summary>}, "patching": {...},
     "checkpoints": [<the first ablation's summary>]}

or a list of per-checkpoint summaries, ``{"checkpoints": [...]}``, ``{"steps": {"<step>": {...}}}``.
A summary may nest ``"probes": {"<probe>": {"clean", "conditions", "matched_random_mean", "tests"}}``.
Each summary (after that nesting is flattened)::

    {"step", "probe"?, "circuit": [heads], "metric"?, "conditions"?: {"<condition>": {"<metric>": v}},
     "effect_ratio", "p_value"            (for the primary metric), or
     "tests": {"<metric>": {"effect_ratio", "p_value", "observed_drop", "null_mean_drop", ..., "n_null"}}
              (causal.stats.NullTest.to_json per metric; also a list of those with "metric"),
     "n_draws"?, "seeds"?}
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from headscreen.heads import Head, parse_head_label
from headscreen.rundir.jsonsafe import json_safe


class SchemaError(ValueError):
    """A JSON document of a run does not have a layout the report understands."""


def parse_head(value, where: str) -> Head:
    """One head from any accepted spelling; `where` names the file and key for the error."""
    if isinstance(value, str):
        head = parse_head_label(value)
        if head is not None:
            return head
    elif isinstance(value, dict) and "layer" in value and "head" in value:
        return int(value["layer"]), int(value["head"])
    elif isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return int(value[0]), int(value[1])
    raise SchemaError(
        f"{where}: cannot read {value!r} as a head; write heads as [layer, head], "
        f'{{"layer": L, "head": H}} or "L<layer>H<head>".'
    )


def parse_heads(values, where: str) -> list[Head]:
    if values is None:
        return []
    if not isinstance(values, list | tuple):
        raise SchemaError(f"{where}: expected a list of heads, got {type(values).__name__}.")
    return sorted({parse_head(v, where) for v in values})


def _as_step(value, where: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if math.isnan(f) or f != int(f):
        raise SchemaError(f"{where}: {value!r} is not an integer training step.")
    return int(f)


def per_step(obj, where: str) -> list[tuple[int, dict | object]]:
    """(step, payload) pairs, sorted by step, from a dict keyed by step or a list of records with 'step'."""
    if obj is None:
        return []
    pairs: list[tuple[int, object]] = []
    if isinstance(obj, dict):
        for key, payload in obj.items():
            pairs.append((_as_step(key, f"{where} key {key!r}"), payload))
    elif isinstance(obj, list):
        for i, rec in enumerate(obj):
            if not isinstance(rec, dict) or "step" not in rec:
                raise SchemaError(f"{where}[{i}]: expected a record with a 'step' key, got {rec!r}.")
            pairs.append((_as_step(rec["step"], f"{where}[{i}].step"), rec))
    else:
        raise SchemaError(f"{where}: expected a dict keyed by step or a list of records, got {type(obj).__name__}.")
    return sorted(pairs, key=lambda p: p[0])


def _finite_or_none(value) -> float | None:
    """A number read from a JSON document: a float, or None for null, NaN/inf and non-numbers."""
    try:
        return json_safe(float(value))
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- circuits.json


def _circuit_record(step: int, probe, payload: dict, where: str) -> dict:
    rec = {"step": step, "probe": probe}
    for cls in ("induction", "previous", "bos"):
        rec[cls] = parse_heads(payload.get(cls), f"{where} '{cls}'")
    return rec


def circuits_by_step(doc: dict, file: str = "circuits.json") -> list[dict]:
    """[{"step", "probe", "induction": [heads], "previous": [heads], "bos": [heads]}] sorted by step.

    'steps' may hold one circuit set per step, or one per probe: {step: {probe: {induction, ...}}}
    (probe is None in the first layout).
    """
    out = []
    for step, payload in per_step(doc.get("steps"), f"{file} 'steps'"):
        where = f"{file} 'steps' {step}"
        if not isinstance(payload, dict):
            raise SchemaError(f"{where}: expected {{'induction': [...], ...}} or {{probe: {{...}}}}, got {payload!r}.")
        if any(k in payload for k in ("induction", "previous", "bos")):
            out.append(_circuit_record(step, payload.get("probe"), payload, where))
            continue
        for probe, sub in payload.items():
            if not isinstance(sub, dict):
                raise SchemaError(f"{where} probe {probe!r}: expected {{'induction': [...], ...}}, got {sub!r}.")
            out.append(_circuit_record(step, str(probe), sub, f"{where} probe {probe!r}"))
    return out


def _step_of(rec: dict):
    return rec.get("emergence_step", rec.get("step"))


def emergence_records(doc: dict, file: str = "circuits.json") -> list[dict]:
    """[{"probe", "layer", "head", "class", "step"}] with step None where a head never emerged (for good)."""
    raw = doc.get("emergence")
    where = f"{file} 'emergence'"
    out = []
    if raw is None:
        return out
    if isinstance(raw, dict):
        for cls, heads in raw.items():
            items: Iterable
            if isinstance(heads, dict):
                items = [(h, s, None) for h, s in heads.items()]
            elif isinstance(heads, list):
                items = [(rec, _step_of(rec) if isinstance(rec, dict) else None,
                          rec.get("probe") if isinstance(rec, dict) else None) for rec in heads]
            else:
                raise SchemaError(f"{where} '{cls}': expected {{head: step}} or a list of records.")
            for head, step, probe in items:
                h = parse_head(head, f"{where} '{cls}'")
                s = _finite_or_none(step)
                out.append({"probe": probe, "layer": h[0], "head": h[1], "class": str(cls),
                            "step": None if s is None else int(s)})
    elif isinstance(raw, list):
        for i, rec in enumerate(raw):
            if not isinstance(rec, dict) or "class" not in rec:
                raise SchemaError(f"{where}[{i}]: expected {{'layer', 'head', 'class', 'emergence_step'}}, got {rec!r}.")
            h = parse_head(rec, f"{where}[{i}]")
            s = _finite_or_none(_step_of(rec))
            out.append({"probe": rec.get("probe"), "layer": h[0], "head": h[1], "class": str(rec["class"]),
                        "step": None if s is None else int(s)})
    else:
        raise SchemaError(f"{where}: expected a list of records or a dict keyed by class.")
    return sorted(out, key=lambda r: (str(r["probe"]), r["class"], r["step"] is None, r["step"] or 0,
                                      r["layer"], r["head"]))


def lead_time_records(doc: dict, file: str = "circuits.json") -> list[dict]:
    """[{"probe", "layer", "head", "class", "metric", "onset_step", "emergence_step", "lead_steps"}]."""
    raw = doc.get("lead_times")
    where = f"{file} 'lead_times'"
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [{**(v if isinstance(v, dict) else {"lead_steps": v}), "_head": k} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise SchemaError(f"{where}: expected a list of records, got {type(raw).__name__}.")
    out = []
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise SchemaError(f"{where}[{i}]: expected a record, got {rec!r}.")
        h = parse_head(rec.get("_head", rec), f"{where}[{i}]")
        onset = _finite_or_none(rec.get("onset_step"))
        emerged = _finite_or_none(rec.get("emergence_step"))
        lead = _finite_or_none(rec.get("lead_time", rec.get("lead_steps", rec.get("lead"))))
        if lead is None and onset is not None and emerged is not None:
            lead = emerged - onset
        item = {"probe": rec.get("probe"), "layer": h[0], "head": h[1], "class": rec.get("class", "induction"),
                "metric": rec.get("metric"), "onset_step": onset, "emergence_step": emerged, "lead_steps": lead}
        if "lead_tokens" in rec:
            item["lead_tokens"] = _finite_or_none(rec["lead_tokens"])
        out.append(item)
    return out


_L0_KEYS = ("bos_layer0", "layer0", "layer_0", "l0", "L0")
_L1_KEYS = ("bos_layer1", "layer1", "layer_1", "l1", "L1")
_TOTAL_KEYS = ("bos_layers01", "total", "count")


def _first(d: dict, keys: tuple[str, ...]):
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def bos_layers01_records(doc: dict, file: str = "circuits.json") -> list[dict]:
    """[{"step", "probe", "layer0", "layer1", "total"}]; layer0/layer1 are None when only a total is stored."""
    where = f"{file} 'bos_layers01'"
    out = []
    for step, payload in per_step(doc.get("bos_layers01"), where):
        probe = None
        if isinstance(payload, dict):
            probe = payload.get("probe")
            l0, l1 = _first(payload, _L0_KEYS), _first(payload, _L1_KEYS)
            total = _first(payload, _TOTAL_KEYS)
            if l0 is None and l1 is None and total is None:
                raise SchemaError(f"{where} {step}: expected 'bos_layer0'/'bos_layer1' counts or a total, got {payload!r}.")
            l0 = None if l0 is None else int(l0)
            l1 = None if l1 is None else int(l1)
            total = int(total) if total is not None else (l0 or 0) + (l1 or 0)
        elif isinstance(payload, int | float):
            l0 = l1 = None
            total = int(payload)
        else:
            raise SchemaError(f"{where} {step}: expected a count or {{'bos_layer0': n, 'bos_layer1': m}}, got {payload!r}.")
        out.append({"step": step, "probe": probe, "layer0": l0, "layer1": l1, "total": total})
    return out


def pr_ranking_records(doc: dict, file: str = "circuits.json") -> list[dict]:
    """[{"probe", "rank", "layer", "head", "integral", "picked"}] from 'pr_integral' ({probe: ranked records})
    or 'pr_ranking' (one ranked list)."""
    raw = doc.get("pr_integral", doc.get("pr_ranking"))
    if raw is None:
        return []
    lists = raw.items() if isinstance(raw, dict) else [(None, raw)]
    out = []
    for probe, ranked in lists:
        where = f"{file} PR ranking" + (f" of probe {probe!r}" if probe else "")
        if not isinstance(ranked, list):
            raise SchemaError(f"{where}: expected a ranked list of heads, got {type(ranked).__name__}.")
        for i, rec in enumerate(ranked):
            h = parse_head(rec, f"{where}[{i}]")
            d = rec if isinstance(rec, dict) else {}
            out.append({"probe": probe, "rank": int(d.get("rank", i + 1)), "layer": h[0], "head": h[1],
                        "integral": _finite_or_none(d.get("integral", d.get("score"))), "picked": d.get("picked")})
    return out


def for_probe(records: list[dict], probe) -> list[dict]:
    """The records of `probe`, plus those that name no probe."""
    return [r for r in records if r.get("probe") in (None, probe)]


def probes_in(doc: dict) -> list[str]:
    """Probe names that circuits.json mentions, in order of appearance."""
    seen: list[str] = []
    for rec in circuits_by_step(doc):
        if rec["probe"] is not None and rec["probe"] not in seen:
            seen.append(rec["probe"])
    return seen


# ---------------------------------------------------------------- validation.json


def validation_status(doc) -> tuple[str, str | None]:
    """("done" | "no circuit" | ..., reason) as validation.json states it; "done" when it does not say."""
    if isinstance(doc, dict) and doc.get("status"):
        return str(doc["status"]), doc.get("reason")
    return "done", None


def _summaries(doc, file: str) -> list[tuple[str | None, object]]:
    """(ablation kind, per-checkpoint summaries) pairs of any accepted layout."""
    if isinstance(doc, dict) and isinstance(doc.get("ablations"), dict) and doc["ablations"]:
        return [(str(kind), [summary]) for kind, summary in doc["ablations"].items()]
    if isinstance(doc, dict) and "checkpoints" in doc:
        return [(None, doc["checkpoints"])]
    if isinstance(doc, dict) and "steps" in doc:
        return [(None, doc["steps"])]
    if isinstance(doc, dict) and "step" in doc and ("probes" in doc or "effect_ratio" in doc or "tests" in doc):
        return [(None, [doc])]
    if isinstance(doc, dict) and validation_status(doc)[0] != "done":
        return []
    if isinstance(doc, list):
        return [(None, doc)]
    raise SchemaError(f"{file}: expected 'ablations', 'checkpoints' or 'steps' (or a list of per-checkpoint "
                      f"summaries); got the keys {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}. "
                      f"Re-run `headscreen validate` on this run.")


def validation_records(doc, file: str = "validation.json") -> list[dict]:
    """One normalised summary per (step, probe, ablation kind), sorted by step (kinds in file order)."""
    out = []
    for kind, summaries in _summaries(doc, file):
        for step, payload in per_step(summaries, f"{file} checkpoints"):
            if not isinstance(payload, dict):
                raise SchemaError(f"{file} step {step}: expected a summary object, got {payload!r}.")
            if isinstance(payload.get("probes"), dict):
                shared = {k: v for k, v in payload.items() if k != "probes"}
                parts = [(probe, {**shared, **sub}) for probe, sub in payload["probes"].items()]
            else:
                parts = [(payload.get("probe"), payload)]
            for probe, rec in parts:
                item = _validation_summary(step, probe, rec, f"{file} step {step}")
                item["ablation"] = rec.get("ablation", kind)
                out.append(item)
    return sorted(out, key=lambda r: r["step"])


_PRIMARY_METRICS = ("top1", "logit_diff", "target_logit", "cross_entropy", "top5")


def _tests(rec: dict, where: str) -> dict[str, dict]:
    raw = rec.get("tests", rec.get("null_tests"))
    if raw is None:
        return {}
    if isinstance(raw, list):
        raw = {str(t.get("metric")): t for t in raw if isinstance(t, dict)}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise SchemaError(f"{where} 'tests': expected {{metric: {{'effect_ratio', 'p_value', ...}}}}, got {raw!r}.")
    return {str(k): v for k, v in raw.items()}


def _validation_summary(step: int, probe, rec: dict, where: str) -> dict:
    tests = _tests(rec, where) if rec.get("tests") is not None or rec.get("null_tests") is not None else {}
    metric = rec.get("metric") or rec.get("primary_metric")
    if metric is None and tests:
        metric = next((m for m in _PRIMARY_METRICS if m in tests), next(iter(tests)))
    p_values = rec.get("p_values") if isinstance(rec.get("p_values"), dict) else {}
    p_values = {str(k): _finite_or_none(v) for k, v in p_values.items()}
    p_values.update({m: _finite_or_none(t.get("p_value")) for m, t in tests.items() if m not in p_values})
    effect = _finite_or_none(rec.get("effect_ratio"))
    if effect is None and metric in tests:
        effect = _finite_or_none(tests[metric].get("effect_ratio"))
    p_value = _finite_or_none(rec.get("p_value"))
    if p_value is None and p_values:
        p_value = p_values.get(metric, next(iter(p_values.values())))
    conditions = dict(rec.get("conditions") or {})
    if not isinstance(rec.get("conditions") or {}, dict):
        raise SchemaError(f"{where} 'conditions': expected {{condition: {{metric: value}}}}, got {conditions!r}.")
    if isinstance(rec.get("clean"), dict) and "clean" not in conditions:  # the screen's layout keeps it apart
        conditions = {"clean": rec["clean"], **conditions}
    if isinstance(rec.get("matched_random_mean"), dict) and "matched_random" not in conditions:
        conditions["matched_random (mean)"] = rec["matched_random_mean"]
    return {
        "step": step,
        "probe": probe,
        "metric": metric,
        "circuit": parse_heads(rec.get("circuit"), f"{where} 'circuit'"),
        "effect_ratio": effect,
        "p_value": p_value,
        "p_values": p_values,
        "tests": tests,
        "conditions": conditions,
        "n_draws": rec.get("n_draws", rec.get("n_null", next((t.get("n_null") for t in tests.values()), None))),
        "seeds": rec.get("seeds", rec.get("seed")),
        "null_skipped": rec.get("null_skipped"),
        "null_kind": rec.get("null_kind"),
        "n_matched_sets": rec.get("n_matched_sets"),
    }
