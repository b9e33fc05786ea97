"""What a report needs beyond the run files: the results the report pipeline computed first.

The report package reads and lays out; it never analyses (no model, no training or analysis code). Where a
section needs a computed result, `headscreen report` (pipelines/report.py, its preparing step in
pipelines/report_prep.py) computes it before rendering: written into the run where it belongs there
(grok.json and the analysis tables of a finished grok run, preid.json / preid.parquet of a screen run,
sweep.parquet of a grok sweep), else handed over here in memory (an unfinished or read-only grok run, the
pre-identification of a probe other than the run's own, the Dyck/SCAN findings measures, a sweep's
lead-time fits). A section that needs a result nobody prepared raises `MissingReportInput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class MissingReportInput(ValueError):
    """A report section needs a computed result that was not prepared (render through `headscreen report`)."""


ANALYSED_NOW = ("analysed", "unfinished")  # GrokAnalysis.how values that mean "computed for this report"


@dataclass
class GrokAnalysis:
    """One grok run's analysis as the pipeline found or made it.

    how = "current" (grok.json on disk matches the trajectory), "analysed" (analysed now; written unless
    the run is read-only) or "unfinished" (training has not finished: in memory only, nothing written).
    `grok` / `tables` hold the in-memory analysis where it was not written (else None: read the run)."""

    how: str
    grok: dict | None = None
    tables: dict[str, pd.DataFrame] | None = None


@dataclass
class PreidResult:
    """preid.json's document, preid.parquet's table and the notice of a pre-identification computed in
    memory (for a probe other than the run's own, or a run that cannot be written)."""

    doc: dict | None
    table: pd.DataFrame | None
    notice: str | None = None


@dataclass
class ReportInputs:
    """The prepared results by run/sweep directory (keys: `key(path)`)."""

    grok: dict[str, GrokAnalysis] = field(default_factory=dict)
    preid: dict[str, PreidResult] = field(default_factory=dict)
    sweep_fits: dict[str, pd.DataFrame] = field(default_factory=dict)  # lead-time fits by weight decay
    grok_checks: dict[str, dict | None] = field(default_factory=dict)  # Dyck/SCAN findings measures (None: other task)
    runs: dict[str, Any] = field(default_factory=dict)  # screen runs the preparation loaded (RunResults), as on disk

    @staticmethod
    def key(path: str | Path) -> str:
        return str(Path(path).resolve())

    def need(self, kind: str, path: str | Path):
        """The prepared `kind` ("grok", "sweep_fits", "grok_checks") of `path`, or `MissingReportInput`."""
        prepared = getattr(self, kind)
        if self.key(path) not in prepared:
            raise MissingReportInput(f"{path}: the report needs its {kind.replace('_', ' ')} computed first; render "
                                     "it with `headscreen report` (pipelines.report.report), which runs the "
                                     "missing analyses before rendering")
        return prepared[self.key(path)]
