"""Toy grokking tasks trained with their trajectory captured, and analysed (docs/methods.md, "Grokking").

The public API for a notebook (the CLI is `headscreen grok`, pipelines/grok.py):

    from headscreen import grokking as gk

    cfg = gk.GrokConfig(tasks=("add",), p=97, steps=20_000)
    run = gk.train_run(cfg, "results/grok/modadd")                # trains (or resumes) the run directory
    grok = gk.analyse_run(run)                                     # writes grok.json + analysis tables
    summary = gk.read_summary(run)                                 # grok.json as a GrokSummary
    grok, tables, how = gk.load_analysis(run)                      # current grok.json, or analysed now
    comp = gk.write_comparison(run)                                # the published-preset runs only
    table = gk.summarise_sweep("results/grok/sweep")               # one row per run of a sweep

The room layout: tasks/, models/, training/, analysis/, published/, li2/. Names are imported lazily, so
importing this package loads no torch model code.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GrokConfig": "headscreen.grokking.config",
    "SweepConfig": "headscreen.grokking.config",
    "ModelSpec": "headscreen.grokking.models.transformer",
    "AnalysisSettings": "headscreen.grokking.analysis.settings",
    "GrokSummary": "headscreen.grokking.analysis.grok_summary",
    "read_summary": "headscreen.grokking.analysis.grok_summary",
    "train_run": "headscreen.grokking.training.train",
    "analyse_run": "headscreen.grokking.analysis.analyse",
    "load_analysis": "headscreen.grokking.analysis.analyse",
    "summarise_sweep": "headscreen.grokking.analysis.summary",
    "run_comparison": "headscreen.grokking.published.compare",
    "write_comparison": "headscreen.grokking.published.compare",
    "sweep_comparison": "headscreen.grokking.published.compare",
    "Li2Config": "headscreen.grokking.li2.network",
    "run_li2": "headscreen.grokking.li2.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'headscreen.grokking' has no attribute {name!r}; its API: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
