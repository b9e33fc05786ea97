"""The step of `headscreen report` before rendering: compute what the report needs and the runs lack.

The report package only reads (headscreen/report/inputs.py). This step, per argument:

* a grok run: its analysis (headscreen.grokking.analysis.analyse.load_analysis): grok.json and the analysis
  tables are written for a finished run whose grok.json is missing or stale; an unfinished or read-only run
  is analysed in memory only. A Dyck/SCAN run also gets its findings measures
  (headscreen.grokking.published.sequence_checks).
* a grok sweep: sweep.parquet rewritten where it is missing or covers unfinished runs (summary.write_sweep_summary,
  which analyses the finished runs without a current grok.json), the lead-time fits by weight decay, the
  analysis of each finished run and, for Dyck/SCAN, the lead-time law.
* a screen run: preid.json / preid.parquet computed and written where they are missing or predate
  validation.json (pipelines.preid, with the run's `preid:` settings); for a probe other than the run's own
  (or a run that cannot be written) the analysis is kept in memory and the report says so.

Each step that computes says so on stderr (`say`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from headscreen.report.inputs import GrokAnalysis, PreidResult, ReportInputs


def _stderr(text: str) -> None:
    print(f"headscreen report: {text}", file=sys.stderr)


def grok_analysis(run: Path, *, say: Callable[[str], None] = _stderr, progress: bool = False) -> GrokAnalysis:
    """The run's analysis for the report: current on disk, analysed now (and written), or in memory."""
    from headscreen.grokking.analysis.analyse import load_analysis

    grok, tables, how = load_analysis(run, progress=progress)
    if how == "current":
        return GrokAnalysis(how)
    if how == "unfinished":
        say(f"{run} has not finished training: analysed in memory for this report (nothing written)")
        return GrokAnalysis(how, grok, tables)
    say(f"{run}: grok.json was missing or computed from another trajectory; analysed it first"
        + (" (read-only run: in memory only)" if tables is not None else " (grok.json and tables written)"))
    return GrokAnalysis(how, grok if tables is not None else None, tables)


def _prepare_grok_run(run: Path, inputs: ReportInputs, say, progress: bool) -> None:
    from headscreen.grokking.published.sequence_checks import run_checks

    inputs.grok[inputs.key(run)] = grok_analysis(run, say=say, progress=progress)
    inputs.grok_checks[inputs.key(run)] = run_checks(run)


def _prepare_sweep(sweep: Path, inputs: ReportInputs, say, progress: bool) -> None:
    import pandas as pd

    from headscreen.grokking.analysis.summary import power_law_by_weight_decay, write_sweep_summary
    from headscreen.grokking.published.sequence_checks import sweep_checks
    from headscreen.report.grok_sweep import summary_is_current, sweep_run_dirs

    inputs.grok_checks[inputs.key(sweep)] = sweep_checks(sweep)
    if not summary_is_current(sweep):
        say(f"{sweep}: sweep.parquet is missing or covers unfinished runs; summarising the sweep first")
        write_sweep_summary(sweep, progress=False)
    df = pd.read_parquet(sweep / "sweep.parquet")
    inputs.sweep_fits[inputs.key(sweep)] = power_law_by_weight_decay(df)
    unfinished = set(df.loc[~df["complete"].astype(bool), "run"])
    for run in sweep_run_dirs(sweep):
        if run.name not in unfinished:
            inputs.grok[inputs.key(run)] = grok_analysis(run, say=say, progress=progress)


def _prepare_preid(path: Path, probe: str | None, inputs: ReportInputs, say) -> None:
    from headscreen.probes.preid import preid_from_tables
    from headscreen.report.findings_sections import preid_staleness
    from headscreen.report.load import load_run
    from headscreen.report.runinfo import choose_probe, step_tokens
    from pipelines.preid import settings_of_manifest, write_preid

    run = load_run(path)
    inputs.runs[inputs.key(path)] = run  # the report renders this load unless the run is written below
    chosen = choose_probe(run, probe)
    why = preid_staleness(run, chosen)
    if why is None or run.classes is None:
        return
    table, doc = preid_from_tables(classes=run.classes, fingerprints=run.fingerprints,
                                   participation=run.participation, onsets=run.onsets, validation=run.validation,
                                   probe=chosen, tokens=step_tokens(run), settings=settings_of_manifest(run.manifest))
    if chosen == choose_probe(run, None) and os.access(path, os.W_OK):
        say(f"{path}: {why}; computed the pre-identification and wrote preid.json / preid.parquet")
        write_preid(path, table, doc)
        del inputs.runs[inputs.key(path)]  # the run has changed on disk: the report loads it again
        return
    say(f"{path}: {why}; computed the pre-identification for this report (not written into the run)")
    inputs.preid[inputs.key(path)] = PreidResult(doc, table, f"Computed now from the stored tables ({why}); "
                                                 "`headscreen validate` or `headscreen screen` writes them into the run.")


def prepare(paths: list[Path], *, probe: str | None = None, say: Callable[[str], None] = _stderr,
            progress: bool = False) -> ReportInputs:
    """Run the missing analyses of every report argument (see the module docstring); returns what is kept in
    memory for the report. Bad arguments are left to the report's own checks (named errors)."""
    from headscreen.report.grok_sections import grok_kind
    from headscreen.report.load import MANIFEST
    from headscreen.rundir.kind import check_reportable

    inputs = ReportInputs()
    paths = [Path(p) for p in paths]
    for path in paths:
        check_reportable(path)  # a series, a trajectory or a mixed directory is named as what it is
    kinds = [grok_kind(p) for p in paths]
    if any(kinds) and not all(kinds):
        return inputs  # grok and screen runs together: the report refuses them, naming the odd one
    for path, kind in zip(paths, kinds, strict=True):
        if kind == "run":
            _prepare_grok_run(path, inputs, say, progress)
        elif kind == "sweep":
            _prepare_sweep(path, inputs, say, progress)
        elif (path / MANIFEST).is_file():
            _prepare_preid(path, probe, inputs, say)
    return inputs
