"""`build_report`: run directories in, report.html / report.md (+ PNGs) / report.json out."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import matplotlib
import pandas as pd

from headscreen._version import __version__
from headscreen.report.causal_sections import ablation_section, patching_section
from headscreen.report.compare import comparison_section
from headscreen.report.content import Report, RunReport
from headscreen.report.dynamics_sections import copying_section, fingerprints_section, lead_times_section
from headscreen.report.explore_data import explore_payload
from headscreen.report.findings_sections import findings_section, findings_summary_section, preid_section
from headscreen.report.grok_build import grok_report
from headscreen.report.grok_sections import grok_kind
from headscreen.report.inputs import ReportInputs
from headscreen.report.load import RunResults, check_run_dir, load_run
from headscreen.report.provenance_section import provenance_section
from headscreen.report.render_html import write_html
from headscreen.report.render_json import write_json
from headscreen.report.render_md import write_markdown
from headscreen.report.runinfo import (
    Context,
    choose_probe,
    model_name,
    report_step,
    slugify,
    step_tokens,
    thresholds,
)
from headscreen.report.schema import circuits_by_step, for_probe
from headscreen.report.screen_sections import (
    bos_layers01_section,
    circuits_section,
    emergence_section,
    selectivity_section,
)
from headscreen.rundir.kind import check_reportable

LEAD_BUILDERS = (findings_summary_section, findings_section)  # what was found, first
SECTION_BUILDERS = (selectivity_section, circuits_section, emergence_section, fingerprints_section,
                    lead_times_section, preid_section, bos_layers01_section, ablation_section, patching_section,
                    copying_section)


def default_out_dir(run_dirs: list[Path]) -> Path:
    """One run: <run>/report/. Several: <their common parent>/comparison/ (results/comparison for runs in results/)."""
    if len(run_dirs) == 1:
        return run_dirs[0] / "report"
    return Path(os.path.commonpath([str(p.resolve()) for p in run_dirs])) / "comparison"


def _unique_names(runs: list[RunResults]) -> list[str]:
    names = [model_name(r) for r in runs]
    return [f"{n} ({r.path.name})" if names.count(n) > 1 else n for n, r in zip(names, runs, strict=True)]


def run_report(run: RunResults, name: str, slug: str, step: int | None, probe: str | None = None,
               inputs: ReportInputs | None = None) -> RunReport:
    chosen = report_step(run, step)
    probe = choose_probe(run, probe)
    circuits = for_probe(circuits_by_step(run.circuits), probe) if run.circuits else []
    ctx = Context(run=run, step=chosen, slug=slug, tokens=step_tokens(run), thresholds=thresholds(run),
                  probe=probe, circuits=circuits, inputs=inputs or ReportInputs())
    sections = ([build(ctx) for build in LEAD_BUILDERS] + [build(ctx) for build in SECTION_BUILDERS]
                + [provenance_section(run)])  # provenance last
    explore = explore_payload(run, thresholds=ctx.thresholds, probe=probe, slug=slug, step=chosen)
    return RunReport(name=name, slug=slug, path=str(run.path), step=chosen, sections=sections, probe=probe,
                     explore=explore)


def assemble(run_dirs: list[Path], step: int | None = None, probe: str | None = None,
             inputs: ReportInputs | None = None) -> Report:
    """Load the runs and build the renderer-neutral report (no file is written); `inputs`: what the report
    pipeline computed first (report/inputs.py)."""
    inputs = inputs or ReportInputs()
    if not run_dirs:
        raise ValueError("no run directory given; pass at least one, e.g. results/<config>/<run>/.")
    for p in run_dirs:  # a series, a trajectory or a mixed directory is named as what it is
        check_reportable(p)
    if any(grok_kind(p) for p in run_dirs):  # grokking runs and sweeps have their own sections
        return grok_report([Path(p) for p in run_dirs], _generated_by(), inputs)
    dirs = [check_run_dir(Path(p)) for p in run_dirs]  # fail on a bad path before loading anything
    runs = [inputs.runs.get(inputs.key(p)) or load_run(p) for p in dirs]  # loaded once when prepared
    names = _unique_names(runs)
    slugs = [slugify(n) if len(runs) == 1 else f"run{i + 1}-{slugify(n)}" for i, n in enumerate(names)]
    reports = [run_report(r, n, s, step, probe, inputs) for r, n, s in zip(runs, names, slugs, strict=True)]
    return Report(runs=reports, comparison=comparison_section(reports) if len(reports) > 1 else None,
                  generated_by=_generated_by())


class ReportOutError(ValueError):
    """The report folder (--out) cannot be written."""


def check_out_dir(out: Path) -> None:
    """The report folder can be written: not a file, and a folder (or its nearest existing parent) in
    which a file can be created (tried, then removed); checked before anything is rendered."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise ReportOutError(f"--out {out} is an existing file, not a folder; give a folder for the report files")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ReportOutError(f"--out {out}: {probe} is a file, so the report folder cannot be made there; "
                             "choose another --out")
    try:
        fd, name = tempfile.mkstemp(prefix=".headscreen-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ReportOutError(f"--out {out}: cannot write into {probe} ({e.strerror or e}); choose another --out "
                             "or fix its permissions") from e


def _generated_by() -> dict:
    return {
        "headscreen_version": __version__, "python": platform.python_version(),
        "matplotlib": matplotlib.__version__, "pandas": pd.__version__,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def build_report(run_dirs: list[Path], out_dir: Path | None = None, step: int | None = None, *,
                 probe: str | None = None, inputs: ReportInputs | None = None) -> dict[str, Path]:
    """Render the report of one or several runs; returns {"html", "md", "json"} -> written path.

    `step` picks the checkpoint of the per-step sections (default: each run's last); it must be a screened
    step of every run. `probe` picks the probe whose circuits, emergence, lead times and BOS counts are
    shown and compared (default: "retrieval" if screened, else "repeated", "text", the first); the
    selectivity heatmaps show every probe. `out_dir` defaults to `default_out_dir(run_dirs)`. PNGs of the
    figures are written beside report.md. `inputs`: the results the report pipeline computed first
    (`pipelines.report.report` prepares them; a section that needs one nobody prepared raises
    `MissingReportInput`).
    """
    run_dirs = [Path(p) for p in run_dirs]
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    check_out_dir(out)  # before anything is rendered
    report = assemble(run_dirs, step, probe, inputs)
    out.mkdir(parents=True, exist_ok=True)
    return {"html": write_html(report, out / "report.html"), "md": write_markdown(report, out),
            "json": write_json(report, out / "report.json")}
