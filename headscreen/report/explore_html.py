"""Each run's "Explore" block of report.html: the attention viewer and the selectivity slider.

The block holds the run's data as JSON (explore_data.script_json) and empty containers that the page's
script (explore_js.EXPLORE_JS) fills; with JavaScript off only a note shows, and the static sections
below carry the same results.
"""

from __future__ import annotations

from html import escape

from headscreen.report.content import RunReport
from headscreen.report.explore_data import script_json

TITLE = "Explore: attention patterns and the circuit forming"

VIEWER_INTRO = (
    "The attention pattern of each circuit and BOS head on the first rows of each probe, at the last checkpoint and "
    "at the checkpoint where the head joined its class (stored by the screen in attention.safetensors). Rows are "
    "queries (destinations), columns keys (sources); hover a cell for both tokens and the weight. An induction head "
    "draws a stripe one step right of the diagonal copy of each earlier occurrence (on the repeated probe: the "
    "diagonal offset by the span, minus one); a previous-token head a line just below the diagonal; a BOS head a "
    "dark first column.")
SLIDER_INTRO = ("Selectivity of every layer × head per class at each screened checkpoint (log colour scale, as the "
                "heatmaps below; outlined cells pass the class threshold). Move the slider, or press Play, to watch "
                "the circuit form.")


def explore_block(run: RunReport, anchor: str) -> str:
    data = run.explore
    if data is None:
        return ""
    src = f"hs-data-{run.slug}"
    parts = [f'<section id="{escape(anchor)}" class="section-explore hs-explore" data-src="{escape(src)}">',
             f"<h3>{escape(TITLE)}</h3>",
             "<noscript><div class=\"notice\"><strong>Note:</strong> the attention viewer and the checkpoint slider "
             "need JavaScript; the static figures and tables below show the same results.</div></noscript>"]
    if data.get("attention_notice"):
        parts.append(f'<div class="notice"><strong>Note:</strong> {escape(data["attention_notice"])}</div>')
    parts.append('<div class="hs-js" hidden>')
    if data.get("attention"):
        parts += ["<h4>Attention patterns</h4>", f'<p class="intro">{escape(VIEWER_INTRO)}</p>',
                  '<div class="hs-attention"></div>']
    if data.get("selectivity"):
        parts += ["<h4>Selectivity at every checkpoint</h4>", f'<p class="intro">{escape(SLIDER_INTRO)}</p>',
                  '<div class="hs-slider"></div>']
    parts.append("</div>")
    parts.append(f'<script type="application/json" id="{escape(src)}">{script_json(data)}</script>')
    parts.append("</section>")
    return "\n".join(parts)
