"""report.json: the numbers of every section, machine-readable (the same ones the HTML and Markdown show)."""

from __future__ import annotations

import json
from pathlib import Path

from headscreen.report.content import Report, Section
from headscreen.rundir.jsonsafe import json_safe

FORMAT = "headscreen-report/1"


def section_json(sec: Section) -> dict:
    return {"title": sec.title, "available": sec.available, "notices": list(sec.notices),
            "figures": [f"{f.name}.png" for f in sec.figures], "data": sec.data}


def report_document(report: Report) -> dict:
    doc = {
        "format": FORMAT,
        "generated_by": report.generated_by,
        "runs": [{"name": r.name, "slug": r.slug, "run_directory": r.path, "step": r.step, "probe": r.probe,
                  "sections": {s.key: section_json(s) for s in r.sections}} for r in report.runs],
        "comparison": section_json(report.comparison) if report.comparison else None,
    }
    return json_safe(doc)


def write_json(report: Report, path: Path) -> Path:
    path.write_text(json.dumps(report_document(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
