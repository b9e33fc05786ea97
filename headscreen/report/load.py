"""Read a run directory (docs/run-format.md) into a `RunResults`, loading no model.

Only `manifest.json` is required. Every other file is optional: a missing file is recorded in
`RunResults.missing` and the report says so in the section that needs it. A file that exists but
cannot be read, or that lacks the columns the contract names, is an error naming the file and the fix:
a report must never quietly drop results that are there.

Memory: every table of the run is held in memory at once (the tables are per head and checkpoint,
so a 16-layer × 16-head × 100-checkpoint run is a few MB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MANIFEST = "manifest.json"

# file name -> attribute, required columns (docs/run-format.md)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fingerprints.parquet": ("fingerprints", ("step", "layer", "head", "metric", "value")),
    "participation.parquet": ("participation", ("step", "layer", "head", "probe", "pr")),
    "selectivity.parquet": ("selectivity", ("step", "layer", "head", "probe", "class", "selectivity")),
    "head_scores.parquet": ("head_scores", ("step", "layer", "head", "probe", "metric", "value")),
    "classes.parquet": ("classes", ("step", "layer", "head", "probe", "best_class", "best_selectivity",
                                    "in_induction_circuit")),
    "copying.parquet": ("copying", ("step", "loss_first", "loss_second", "loss_gap")),
    "onsets.parquet": ("onsets", ("layer", "head", "metric", "onset_step")),
    "validation.parquet": ("validation_long", ("step", "condition", "metric", "value")),
    "patching.parquet": ("patching", ("step", "score")),
    "preid.parquet": ("preid", ("metric", "scope", "step", "auc", "p_value", "separates")),
}
# file -> columns that must be numeric; of those, which must be finite ("finite") or only not NaN ("not nan").
# The keys step/layer/head are integers wherever they are required. Columns not listed may hold NaN by
# design (a z-score without baseline, an onset that never came, a test that could not be run).
VALUES: dict[str, dict[str, str]] = {
    "fingerprints.parquet": {"value": "any"},
    "participation.parquet": {"pr": "finite"},
    "selectivity.parquet": {"selectivity": "not nan"},
    "head_scores.parquet": {"value": "any"},
    "classes.parquet": {"best_selectivity": "any"},
    "copying.parquet": {"loss_first": "finite", "loss_second": "finite", "loss_gap": "finite"},
    "onsets.parquet": {"onset_step": "any"},
    "validation.parquet": {"value": "any"},
    "patching.parquet": {"score": "any"},
    "preid.parquet": {"auc": "any", "p_value": "any"},
}
KEYS = ("step", "layer", "head")
DOCUMENTS: dict[str, str] = {"circuits.json": "circuits", "validation.json": "validation", "preid.json": "preid_doc"}


class NotARunDirectoryError(FileNotFoundError):
    """The path given as a run has no manifest.json."""


class RunFileError(ValueError):
    """A file of the run exists but cannot be used."""


class StaleRunError(RunFileError):
    """The run's tables are older than its records, or its validation is older than its tables."""


def check_current(path: Path, manifest: dict) -> None:
    """Refuse a run whose manifest marks its tables stale (a screen changed its records and did not
    finish). Runs written before the `tables` field existed pass (their staleness is unknown)."""
    tables = manifest.get("tables")
    if isinstance(tables, dict) and tables.get("status") != "current":
        raise StaleRunError(
            f"{path}: its tables are stale ({tables.get('reason', 'a screen did not finish')}): they may not match "
            f"its records. Rerun the screen (`headscreen screen <series> --out {path}`), then the report."
        )


def check_validation_current(path: Path, manifest: dict, validation) -> None:
    """Refuse a validation.json written against other tables than the current ones."""
    tables = manifest.get("tables")
    made_on = validation.get("tables_id") if isinstance(validation, dict) else None
    if isinstance(tables, dict) and made_on is not None and made_on != tables.get("id"):
        raise StaleRunError(
            f"{path / 'validation.json'} validated tables that a later screen replaced; rerun "
            f"`headscreen validate {path}` (or delete validation.json, validation.parquet and patching.parquet)."
        )


@dataclass
class RunResults:
    """Everything stored in one run directory. Tables are None when their file is absent."""

    path: Path
    manifest: dict
    fingerprints: pd.DataFrame | None = None
    participation: pd.DataFrame | None = None
    selectivity: pd.DataFrame | None = None
    head_scores: pd.DataFrame | None = None
    classes: pd.DataFrame | None = None
    copying: pd.DataFrame | None = None
    onsets: pd.DataFrame | None = None
    validation_long: pd.DataFrame | None = None
    patching: pd.DataFrame | None = None
    preid: pd.DataFrame | None = None
    circuits: dict | None = None
    validation: dict | list | None = None
    preid_doc: dict | None = None
    missing: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        """Whether the file `name` (e.g. "validation.json") was present."""
        return name not in self.missing


def _run_candidates(path: Path, limit: int = 5) -> list[Path]:
    if not path.is_dir():
        return []
    found = sorted(p.parent for p in path.glob("*/manifest.json")) + sorted(p.parent for p in path.glob("*/*/manifest.json"))
    return found[:limit]


def check_run_dir(path: Path) -> Path:
    """Return `path` if it is a run directory, else raise NotARunDirectoryError naming the fix."""
    path = Path(path)
    if not path.exists():
        raise NotARunDirectoryError(
            f"run directory {str(path)!r} does not exist. Pass the directory that `headscreen screen` "
            f"wrote, e.g. results/<config>/<run>/."
        )
    if not path.is_dir():
        raise NotARunDirectoryError(
            f"{str(path)!r} is a file, not a run directory. Pass the directory that holds manifest.json, "
            f"e.g. results/<config>/<run>/."
        )
    if not (path / MANIFEST).is_file():
        hint = ""
        candidates = _run_candidates(path)
        if candidates:
            hint = " Run directories below it: " + ", ".join(str(c) for c in candidates) + "."
        raise NotARunDirectoryError(
            f"{str(path)!r} is not a headscreen run directory: it has no {MANIFEST}. Pass a directory "
            f"written by `headscreen screen` (results/<config>/<run>/), or screen the series first.{hint}"
        )
    return path


def _read_json(file: Path) -> dict | list:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(
            f"{file} cannot be read as JSON ({exc}). Re-run the step that writes it "
            f"(manifest/circuits: `headscreen screen`; validation: `headscreen validate`)."
        ) from exc


def _read_table(file: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for truncated or foreign files
        raise RunFileError(
            f"{file} cannot be read as Parquet ({type(exc).__name__}: {exc}). It may be truncated; "
            f"delete it and re-run the step that writes it."
        ) from exc
    lacking = [c for c in required if c not in df.columns]
    if lacking:
        raise RunFileError(
            f"{file} lacks the column(s) {lacking} that docs/run-format.md requires (it has "
            f"{list(df.columns)}). It was written by an incompatible version; re-run the step that writes it."
        )
    _check_values(file, df, required)
    return df


def _check_values(file: Path, df: pd.DataFrame, required: tuple[str, ...]) -> None:
    """The required key columns are integers and the value columns numbers, finite where the screen
    writes only finite ones: a hand-edited or damaged table is named, never rendered as if it were sound."""
    import numpy as np

    fix = "it was edited or damaged; re-run the step that writes it (screen or validate)"
    rules = {**{k: "finite" for k in KEYS if k in required}, **VALUES.get(file.name, {})}
    for col, rule in rules.items():
        if col not in df.columns or not len(df):
            continue
        column = df[col]
        if column.dtype == object:  # None-filled columns are object; any other object is not a number
            odd = [v for v in column if v is not None and not isinstance(v, int | float | np.number)]
            if odd or isinstance(next((v for v in column if v is not None), 0), bool):
                raise RunFileError(f"{file}: column {col!r} holds {type(odd[0]).__name__ if odd else 'bool'} values "
                                   f"(e.g. {odd[0] if odd else True!r}), not numbers; {fix}")
            column = pd.to_numeric(column.astype(float))
        elif not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            raise RunFileError(f"{file}: column {col!r} holds {column.dtype} values, not numbers; {fix}")
        values = column.to_numpy(dtype=float)
        bad = np.isnan(values) if rule == "not nan" else ~np.isfinite(values) if rule == "finite" else None
        if bad is not None and bad.any():
            where = df.loc[bad, [c for c in KEYS if c in df.columns]].head(1).to_dict("records")
            raise RunFileError(f"{file}: column {col!r} holds {int(bad.sum())} {'NaN' if rule == 'not nan' else 'NaN/Inf'} "
                               f"value(s) (first at {where[0] if where else 'row ' + str(int(np.argmax(bad)))}); {fix}")
        if col in KEYS and (values != np.round(values)).any():
            raise RunFileError(f"{file}: column {col!r} holds non-integer values; {fix}")


def load_run(path: Path | str, *, with_validation: bool = True) -> RunResults:
    """Read the run at `path`. Raises NotARunDirectoryError if it has no manifest.json.
    `with_validation=False` leaves the validation outputs out (validate, replacing them)."""
    path = check_run_dir(Path(path))
    manifest = _read_json(path / MANIFEST)
    if not isinstance(manifest, dict):
        raise RunFileError(f"{path / MANIFEST} holds a {type(manifest).__name__}, expected a JSON object.")
    check_current(path, manifest)
    from headscreen.rundir.staged import pending_stages

    pending = pending_stages(path)
    if pending:
        raise StaleRunError(
            f"{path}: a {pending[0]} was interrupted while publishing its results (they are complete, in "
            f"{path}/.staged/{pending[0]}); rerun `headscreen {pending[0]} {path}` or any command that writes the run "
            "to publish them first")
    run = RunResults(path=path, manifest=manifest)
    skip = () if with_validation else ("validation.parquet", "patching.parquet", "validation.json")
    for name, (attr, required) in TABLES.items():
        file = path / name
        if name in skip:
            continue
        if file.is_file():
            setattr(run, attr, _read_table(file, required))
        else:
            run.missing.append(name)
    for name, attr in DOCUMENTS.items():
        file = path / name
        if name in skip:
            continue
        if file.is_file():
            setattr(run, attr, _read_json(file))
        else:
            run.missing.append(name)
    if run.validation is None:  # an interrupted validate: its tables belong to no validation.json
        for name, attr in (("validation.parquet", "validation_long"), ("patching.parquet", "patching")):
            if getattr(run, attr) is not None:
                setattr(run, attr, None)
                run.missing.append(name)
    check_validation_current(path, manifest, run.validation)
    return run
