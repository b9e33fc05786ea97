"""report.html: one self-contained file. Figures are embedded as base64 PNG, the CSS and the one script are
inline and nothing is fetched: it opens offline, from a mail attachment as well as from disk. With
JavaScript off it is the static report; the script adds each run's Explore block (attention viewer,
checkpoint slider; report/explore_html.py) and sorting and filtering to the long tables."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from headscreen.report.content import RenderedFigure, Report, RunReport, Section, Table, fmt
from headscreen.report.explore_html import TITLE as EXPLORE_TITLE
from headscreen.report.explore_html import explore_block
from headscreen.report.explore_js import EXPLORE_CSS, EXPLORE_JS

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1a1a1a;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 4rem; background: white; }
h1 { margin-top: 0; } h2 { border-bottom: 2px solid #333; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-top: 2rem; color: #222; }
nav { background: #f0f3f7; padding: .6rem 1rem; border-radius: 6px; font-size: .9rem; }
nav ul { margin: .2rem 0; padding-left: 1.2rem; } nav li { margin: .1rem 0; }
nav ul ul { padding-left: .4rem; } nav ul ul li { display: inline; margin-right: .9rem; }
table { border-collapse: collapse; margin: .4rem 0 1.2rem; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; } tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td:first-child { white-space: nowrap; }
p.caption { font-style: italic; margin: .8rem 0 .2rem; color: #444; font-size: .9rem; }
figure { margin: .8rem 0 1.4rem; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #555; }
.notice { background: #fff4e5; border-left: 4px solid #f0a030; padding: .5rem .8rem; margin: .5rem 0 1rem; }
.intro { color: #444; } .meta { color: #555; font-size: .9rem; }
details { margin: .4rem 0 1.2rem; } details summary { cursor: pointer; font-style: italic; color: #444; font-size: .9rem; }
section.section-summary table, section.section-findings table { font-size: .92rem; }
section.section-summary td:first-child { font-weight: 600; }
td.verdict-held { background: #e3f4e1 !important; font-weight: 600; } td.verdict-not { background: #fbe3e1 !important; font-weight: 600; }
td.verdict-weak { background: #fff4e5 !important; font-weight: 600; } td.verdict-na { background: #eeeeee !important; color: #555; }
"""


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


VERDICT_CLASSES = {"held": "verdict-held", "not held": "verdict-not", "not significant": "verdict-weak",
                   "cannot test": "verdict-na"}  # the findings check's verdict cells


def _cell_html(v) -> str:
    if _is_number(v):
        return f'<td class="num">{escape(fmt(v))}</td>'
    css = VERDICT_CLASSES.get(v) if isinstance(v, str) else None
    return f'<td class="{css}">{escape(fmt(v))}</td>' if css else f"<td>{escape(fmt(v))}</td>"


INTERACTIVE_ROWS = 10  # tables at least this long get a filter box and sortable columns (JavaScript)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(_cell_html(v) for v in row)
        body.append(f"<tr>{cells}</tr>")
    css = ' class="hs-table"' if len(table.rows) >= INTERACTIVE_ROWS else ""  # sortable, filterable with JS
    grid = f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if table.folded:
        label = escape(table.caption or "Full table")
        return f'<details><summary>{label} ({len(table.rows)} rows)</summary>{grid}</details>'
    caption = f'<p class="caption">{escape(table.caption)}</p>' if table.caption else ""
    return f"{caption}{grid}"


def figure_html(fig: RenderedFigure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="fig-{escape(fig.name)}"><img src="data:image/png;base64,{data}" alt="{escape(fig.alt)}" '
            f'width="{fig.width_px}" height="{fig.height_px}"><figcaption>{escape(fig.alt)}</figcaption></figure>')


def section_html(sec: Section, anchor: str, level: int) -> str:
    parts = [f'<section id="{escape(anchor)}" class="section-{escape(sec.key)}">',
             f"<h{level}>{escape(sec.title)}</h{level}>"]
    if sec.intro:
        parts.append(f'<p class="intro">{escape(sec.intro)}</p>')
    parts += [f'<div class="notice"><strong>Note:</strong> {escape(n)}</div>' for n in sec.notices]
    parts += [figure_html(f) for f in sec.figures]
    parts += [table_html(t) for t in sec.tables]
    parts.append("</section>")
    return "\n".join(parts)


def section_anchor(run: RunReport, sec: Section) -> str:
    return f"{run.slug}-{sec.key}"


def explore_anchor(run: RunReport) -> str:
    return f"{run.slug}-explore"


LEAD_KEYS = ("summary", "findings")  # the Explore block follows these


def _run_sections(run: RunReport) -> list[str]:
    out, placed = [], run.explore is None
    for s in run.sections:
        if not placed and s.key not in LEAD_KEYS:
            out.append(explore_block(run, explore_anchor(run)))
            placed = True
        out.append(section_html(s, section_anchor(run, s), 3))
    if not placed:
        out.append(explore_block(run, explore_anchor(run)))
    return out


def _nav(report: Report) -> str:
    items = []
    if report.comparison is not None:
        items.append('<li><a href="#comparison">Comparison across models</a></li>')
    for run in report.runs:
        links = [(section_anchor(run, s), s.title) for s in run.sections]
        if run.explore is not None:
            at = next((i for i, s in enumerate(run.sections) if s.key not in LEAD_KEYS), len(links))
            links.insert(at, (explore_anchor(run), EXPLORE_TITLE))
        subs = "".join(f'<li><a href="#{escape(a)}">{escape(t)}</a></li>' for a, t in links)
        items.append(f'<li><a href="#{escape(run.slug)}">{escape(run.name)}</a><ul>{subs}</ul></li>')
    return f"<nav><strong>Contents</strong><ul>{''.join(items)}</ul></nav>"


def render_html(report: Report) -> str:
    gen = report.generated_by
    names = ", ".join(r.name for r in report.runs)
    body = [f"<h1>{escape(report.title)}: {escape(names)}</h1>",
            f'<p class="meta">Generated by headscreen {escape(str(gen.get("headscreen_version")))} from '
            f"{len(report.runs)} run(s), from the stored results alone: no model was loaded.</p>", _nav(report)]
    if report.comparison is not None:
        body.append(section_html(report.comparison, "comparison", 2))
    for run in report.runs:
        step = run.step if run.step is not None else "(none: nothing screened)"
        meta = run.meta if run.meta is not None else f"per-checkpoint sections show step {step}."
        body.append(f'<article id="{escape(run.slug)}"><h2>{escape(run.name)}</h2>'
                    f'<p class="meta">Run directory <code>{escape(run.path)}</code>; {escape(meta)}</p>')
        body += _run_sections(run)
        body.append("</article>")
    script = f"<script>{EXPLORE_JS}</script>" if _needs_script(report) else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>headscreen report: {escape(names)}</title><style>{CSS}{EXPLORE_CSS}</style></head>"
            f"<body><main>{''.join(body)}</main>{script}</body></html>\n")


def _needs_script(report: Report) -> bool:
    sections = [s for r in report.runs for s in r.sections] + ([report.comparison] if report.comparison else [])
    return (any(r.explore is not None for r in report.runs)
            or any(len(t.rows) >= INTERACTIVE_ROWS for s in sections for t in s.tables))


def write_html(report: Report, path: Path) -> Path:
    path.write_text(render_html(report), encoding="utf-8")
    return path
