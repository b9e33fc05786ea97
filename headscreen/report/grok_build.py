"""`grok_report`: the renderer-neutral Report of grok runs (a pair comparison when several are given) or of
grok sweeps, from the runs' files and what the report pipeline prepared (report/inputs.py)."""

from __future__ import annotations

from pathlib import Path

from headscreen.report.content import Report, RunReport
from headscreen.report.grok_findings import grok_findings_section
from headscreen.report.grok_sections import (
    RUN_SECTIONS,
    grok_kind,
    load_grok_run,
    pair_section,
    unfinished_note,
)
from headscreen.report.grok_sweep import sweep_sections
from headscreen.report.inputs import ReportInputs
from headscreen.report.runinfo import slugify


def grok_report(paths: list[Path], generated_by: dict, inputs: ReportInputs | None = None) -> Report:
    """The report of grok runs (a pair comparison when several are given) or of grok sweeps, from the runs'
    files and what the report pipeline prepared (`inputs`)."""
    inputs = inputs or ReportInputs()
    kinds = [grok_kind(p) for p in paths]
    if None in kinds:
        bad = paths[kinds.index(None)]
        raise ValueError(f"{bad} is not a grok run or sweep, but other arguments are; report grok runs separately "
                         "from screened series")
    reports, grok_runs = [], []
    for i, (p, kind) in enumerate(zip(paths, kinds, strict=True)):
        name = p.name if kind == "run" else f"sweep {p.name}"
        slug = slugify(name) if len(paths) == 1 else f"run{i + 1}-{slugify(name)}"
        findings = grok_findings_section(inputs.need("grok_checks", p))
        if kind == "sweep":
            sections = sweep_sections(p, slug, inputs)
            step = None
        else:
            run = load_grok_run(p, inputs)
            run.slug = slug
            grok_runs.append(run)
            sections = [sec for build in RUN_SECTIONS if (sec := build(run)) is not None]
            step = run.grok.get("grok_step")
        sections = ([findings] if findings is not None else []) + sections
        meta = ("a grokking sweep: one row per run, the lead-time scaling and the grok/memorise pairs."
                if kind == "sweep" else "a grokking run: every section covers the whole trajectory.")
        if kind == "run" and run.unfinished:
            name, meta = f"{name} (UNFINISHED)", unfinished_note(run)
        reports.append(RunReport(name=name, slug=slug, path=str(p), step=step, sections=sections, meta=meta))
    comparison = pair_section(grok_runs, prefix="comparison") if len(grok_runs) > 1 else None
    title = "headscreen grokking report"
    if any(r.unfinished for r in grok_runs):
        title += " (UNFINISHED run: not every run has finished training)"
    return Report(runs=reports, comparison=comparison, generated_by=generated_by, title=title)
