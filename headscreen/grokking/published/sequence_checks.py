"""The measures behind the Dyck/SCAN findings check of a grok run or sweep (docs/methods.md, "Grokking II: the
published recipes"), computed for the report pipeline (pipelines/report_prep.py); the report lays them out.

A run: the study's events (sequence_rules.run_events), the g₂₃ compression and the gradient share of v₁
(analysis.edge_lifecycle) and the edge-direction ablation (analysis.edge_ablation), each beside its published
figure; a sweep: the lead-time law (sequence_rules.lead_law).
A measure that cannot be taken on this run is {"status": "cannot test", "why": ...}.
"""

from __future__ import annotations

import json
from pathlib import Path

SEQ_TASKS = ("dyck", "scan")
G23_WINDOW = {"dyck": 3, "scan": 5}  # the study's window of g₂₃


def _measure(fn, *args) -> dict:
    try:
        return fn(*args)
    except ValueError as e:
        return {"status": "cannot test", "why": str(e)}


def run_checks(run_dir: str | Path) -> dict | None:
    """The findings measures of one dyck/scan run; None for other tasks."""
    from headscreen.grokking.analysis import edge_ablation
    from headscreen.grokking.analysis.edge_lifecycle import PUBLISHED, g23_compression, gradient_share
    from headscreen.grokking.published import sequence_rules

    path = Path(run_dir)
    task = json.loads((path / "manifest.json").read_text())["config"]["tasks"][0]
    if task not in SEQ_TASKS:
        return None
    return {"kind": "run", "task": task, "events": sequence_rules.run_events(path),
            "law_published": sequence_rules.PUBLISHED_LAW[task],
            "g23_published": PUBLISHED["g23_compression"][task], "g23": _measure(g23_compression, path, G23_WINDOW[task]),
            "share_published": PUBLISHED["gradient_share"][task], "share": _measure(gradient_share, path),
            "ablation_published": edge_ablation.PUBLISHED[task], "ablation": _measure(edge_ablation.edge_ablation, path)}


def sweep_checks(sweep_dir: str | Path) -> dict | None:
    """The lead-time law of a dyck/scan sweep (sequence_rules.lead_law); None for other tasks."""
    from headscreen.grokking.published import sequence_rules

    table = sequence_rules.lead_table(sweep_dir)
    task = str(table["task"].iloc[0])
    if task not in SEQ_TASKS:
        return None
    return {"kind": "sweep", "task": task, "law": sequence_rules.lead_law(table, task)}
