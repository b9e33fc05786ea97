"""Facts about a run that several sections share: its name, its checkpoints, the report step."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from headscreen.probes.classify import ScreenThresholds
from headscreen.report.inputs import ReportInputs
from headscreen.report.load import RunResults

_STEP_TABLES = ("classes", "selectivity", "participation", "fingerprints", "head_scores")


def slugify(text: str) -> str:
    """File- and id-safe: letters, digits, '_', '-' and '.' only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


class StepNotFoundError(ValueError):
    """The requested report step is not a checkpoint of the run."""


def model_name(run: RunResults) -> str:
    """The model's name from the manifest, else the run directory's name."""
    m = run.manifest
    config = m.get("config") if isinstance(m.get("config"), dict) else {}
    series = m.get("series") if isinstance(m.get("series"), dict) else {}
    for value in (m.get("model"), config.get("model"), config.get("name"), series.get("name"), m.get("name")):
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return value["name"]
    return run.path.name


def screened_steps(run: RunResults) -> list[int]:
    """All checkpoint steps with screen results, ascending."""
    steps: set[int] = set()
    for attr in _STEP_TABLES:
        df = getattr(run, attr)
        if df is not None and len(df):
            steps.update(int(s) for s in df["step"].unique())
    if run.circuits and isinstance(run.circuits.get("steps"), dict | list):
        from headscreen.report.schema import circuits_by_step

        steps.update(rec["step"] for rec in circuits_by_step(run.circuits))
    return sorted(steps)


def report_step(run: RunResults, step: int | None) -> int | None:
    """The checkpoint the per-step sections show: `step` if given (it must exist), else the last one."""
    steps = screened_steps(run)
    if step is None:
        return steps[-1] if steps else None
    if step not in steps:
        shown = ", ".join(map(str, steps[:20])) + (" ..." if len(steps) > 20 else "")
        raise StepNotFoundError(
            f"step {step} is not a screened checkpoint of run {str(run.path)!r}; "
            f"available steps: {shown or 'none'}. Pass one of them, or omit the step to use the last."
        )
    return step


def step_tokens(run: RunResults) -> dict[int, float]:
    """step -> tokens seen, from participation.parquet or the manifest's series checkpoints."""
    out: dict[int, float] = {}
    series = run.manifest.get("series")
    if isinstance(series, dict) and isinstance(series.get("checkpoints"), list):
        for ck in series["checkpoints"]:
            if isinstance(ck, dict) and ck.get("step") is not None and ck.get("tokens") is not None:
                out[int(ck["step"])] = float(ck["tokens"])
    df = run.participation
    if df is not None and "tokens" in df.columns:
        pairs = df[["step", "tokens"]].dropna().drop_duplicates("step")
        out.update({int(s): float(t) for s, t in zip(pairs["step"], pairs["tokens"], strict=True)})
    return dict(sorted(out.items()))


def grid_shape(run: RunResults) -> tuple[int, int] | None:
    """(n_layers, n_heads) from the largest indices in any per-head table."""
    layers, heads = -1, -1
    for attr in ("selectivity", "classes", "fingerprints", "participation", "patching"):
        df = getattr(run, attr)
        if df is not None and len(df) and "layer" in df.columns and "head" in df.columns:
            layers = max(layers, int(np.nanmax(df["layer"].to_numpy(dtype=float))))
            heads = max(heads, int(np.nanmax(df["head"].to_numpy(dtype=float))))
    return (layers + 1, heads + 1) if layers >= 0 else None


def _default_thresholds() -> dict[str, float]:
    """The screen's own defaults (ScreenThresholds), used when neither circuits.json nor the manifest records one."""
    d = ScreenThresholds()
    return {"class": d.class_min, "bos": d.class_min, "induction_circuit": d.induction_circuit,
            "previous_circuit": d.previous_circuit}
_THRESHOLD_KEYS = {
    "class": ("class_min", "class", "class_threshold"),
    "bos": ("bos", "bos_threshold", "class_min"),
    "induction_circuit": ("induction_circuit", "induction", "induction_threshold", "circuit"),
    "previous_circuit": ("previous_circuit", "previous", "previous_threshold"),
}


def thresholds(run: RunResults) -> dict[str, float]:
    """Selectivity thresholds (×): circuits.json's, else the manifest's, else the published defaults (docs/methods.md#selectivity-screen)."""
    sources = []
    if run.circuits and isinstance(run.circuits.get("thresholds"), dict):
        sources.append(run.circuits["thresholds"])
    config = run.manifest.get("config") if isinstance(run.manifest.get("config"), dict) else {}
    for holder in (run.manifest, config):
        if isinstance(holder.get("thresholds"), dict):
            sources.append(holder["thresholds"])
    out = _default_thresholds()
    for name, keys in _THRESHOLD_KEYS.items():
        for source in reversed(sources):  # circuits.json wins: it is what the classification used
            for key in keys:
                if isinstance(source.get(key), int | float):
                    out[name] = float(source[key])
                    break
    return out


@dataclass
class Context:
    """What every section builder of one run needs."""

    run: RunResults
    step: int | None
    slug: str
    tokens: dict[int, float]
    thresholds: dict[str, float]
    probe: str | None = None  # the probe of the circuits, emergence, lead times and the comparison
    circuits: list[dict] = field(default_factory=list)  # schema.circuits_by_step, of `probe` only
    inputs: ReportInputs = field(default_factory=ReportInputs)  # what the report pipeline computed first

    def circuit_at_step(self) -> dict | None:
        for rec in self.circuits:
            if rec["step"] == self.step:
                return rec
        return None

    def of_probe(self, df):
        """Rows of a table with a `probe` column that belong to the report's probe."""
        if df is None or self.probe is None or "probe" not in df.columns:
            return df
        return df[df["probe"].astype(str) == self.probe]

    def figure_name(self, what: str) -> str:
        return slugify(f"{self.slug}_{what}")


PREFERRED_PROBES = ("retrieval", "repeated", "text")


class ProbeNotFoundError(ValueError):
    """The requested probe was not screened in the run."""


def available_probes(run: RunResults) -> list[str]:
    from headscreen.report.schema import probes_in

    found: list[str] = probes_in(run.circuits) if run.circuits else []
    for attr in ("classes", "selectivity", "participation"):
        df = getattr(run, attr)
        if df is not None and "probe" in df.columns:
            found += sorted(str(p) for p in df["probe"].dropna().unique() if str(p) not in found)
    return list(dict.fromkeys(found))


def choose_probe(run: RunResults, requested: str | None) -> str | None:
    """`requested` if the run has it; else 'retrieval' (the published probe, docs/methods.md#probe-prompts), 'repeated', 'text', the first."""
    probes = available_probes(run)
    if requested is not None:
        if requested not in probes:
            raise ProbeNotFoundError(
                f"probe {requested!r} was not screened in run {str(run.path)!r}; it has {probes or 'no probes'}. "
                f"Pass one of them, or omit the probe to use {next(iter(probes), 'the default')}."
            )
        return requested
    return next((p for p in PREFERRED_PROBES if p in probes), probes[0] if probes else None)
