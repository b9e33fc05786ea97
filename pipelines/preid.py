"""Pre-identification tables of a run: preid.parquet and preid.json (headscreen.probes.preid).

`headscreen screen` writes them with the selectivity circuit; `headscreen validate` rewrites them with
the causally validated circuit once validation.json exists, so the run's files always name the circuit
they used. Both read the run's stored tables only.
"""

from __future__ import annotations

from pathlib import Path

from headscreen.config import from_mapping
from headscreen.probes.preid import PreidSettings, preid_from_tables
from headscreen.rundir.store import atomic_write, write_json


def settings_of_manifest(manifest: dict) -> PreidSettings:
    """The `preid:` section of the run's model config (else the defaults)."""
    section = ((manifest.get("config") or {}).get("model_config") or {}).get("preid")
    return from_mapping(PreidSettings, section, "preid")


_RUN = object()  # preid_tables: use the validation.json of the run directory


def preid_tables(run_dir: str | Path, settings: PreidSettings | None = None, *, validation=_RUN):
    """(preid table, preid.json document) from the tables in `run_dir`; `validation` replaces the run's
    validation.json (validate computes them with the validation it is about to publish)."""
    from headscreen.report.load import load_run
    from headscreen.report.runinfo import choose_probe, step_tokens

    run = load_run(run_dir, with_validation=validation is _RUN)
    if validation is not _RUN:
        run.validation = validation
    settings = settings or settings_of_manifest(run.manifest)
    return preid_from_tables(classes=run.classes, fingerprints=run.fingerprints, participation=run.participation,
                       onsets=run.onsets, validation=run.validation, probe=choose_probe(run, None),
                       tokens=step_tokens(run), settings=settings)


def write_preid(directory: str | Path, table, doc: dict) -> None:
    """preid.parquet and preid.json into `directory` (each atomically)."""
    atomic_write(Path(directory) / "preid.parquet", lambda p: table.to_parquet(p, index=False))
    write_json(Path(directory) / "preid.json", doc)


def preidentify_run(run_dir: str | Path, settings: PreidSettings | None = None) -> dict:
    """Compute the analysis from the tables in `run_dir`, write preid.parquet and preid.json; return the document."""
    table, doc = preid_tables(run_dir, settings)
    write_preid(run_dir, table, doc)
    return doc
