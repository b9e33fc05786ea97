"""The renderer-neutral content of a report: sections made of text, tables and figures.

The section builders fill these; `render_html`, `render_md` and `render_json` only lay them out, so
the three formats carry the same numbers.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import matplotlib

from headscreen.heads import heads_label

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


@dataclass
class Table:
    columns: list[str]
    rows: list[list]  # raw cell values; formatted by `fmt` when rendered
    caption: str = ""
    folded: bool = False  # a long reference table: collapsed under its caption (HTML and Markdown <details>)


@dataclass
class RenderedFigure:
    """A figure rendered once to PNG; `name` is unique within the report (it becomes a file name)."""

    name: str
    alt: str
    png: bytes
    width_px: int
    height_px: int


@dataclass
class Section:
    key: str  # stable id: provenance, selectivity, circuits, emergence, fingerprints, lead_times, ...
    title: str
    intro: str = ""
    notices: list[str] = field(default_factory=list)  # what is missing and how to get it
    tables: list[Table] = field(default_factory=list)
    figures: list[RenderedFigure] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the numbers, for report.json

    @property
    def available(self) -> bool:
        return bool(self.tables or self.figures)


@dataclass
class RunReport:
    name: str  # unique display name of the run within the report
    slug: str  # unique, file- and id-safe
    path: str
    step: int | None
    sections: list[Section]
    probe: str | None = None
    meta: str | None = None  # replaces the "per-checkpoint sections show step" line (grok runs and sweeps)
    explore: dict | None = None  # the HTML's interactive views' data (report/explore_data.py); HTML only


@dataclass
class Report:
    runs: list[RunReport]
    comparison: Section | None
    generated_by: dict
    title: str = "headscreen circuit report"


SECTION_ORDER = (
    ("summary", "Findings summary"),
    ("findings", "Findings check"),
    ("selectivity", "Selectivity heatmaps"),
    ("circuits", "Classified heads and circuits"),
    ("emergence", "Emergence timeline"),
    ("fingerprints", "Spectral fingerprints: circuit heads against other heads"),
    ("lead_times", "Lead time: spectral onset against behavioural emergence"),
    ("preid", "Pre-identification: does a spectral metric single out the circuit early?"),
    ("bos_layers01", "BOS heads in layers 0 and 1"),
    ("ablation", "Ablation and null distributions"),
    ("patching", "Activation patching"),
    ("copying", "In-context copying"),
    ("provenance", "Provenance"),
)
SECTION_TITLES = dict(SECTION_ORDER)


def figure_to_png(fig: Figure, name: str, alt: str, dpi: int = 100) -> RenderedFigure:
    """Render `fig` to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")  # constrained layout: no second "tight" draw
    png = buf.getvalue()
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    plt.close(fig)
    return RenderedFigure(name=name, alt=alt, png=png, width_px=width, height_px=height)


def head_list(heads) -> str:
    return heads_label(heads)


def fmt(value) -> str:
    """One table cell as text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} = {fmt(v)}" for k, v in value.items())
    return str(value)


def human_count(value) -> str | None:
    """Token counts for tables: 1536000 -> '1.54M'; None stays None."""
    if value is None:
        return None
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return fmt(value)


