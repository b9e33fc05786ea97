"""A screened run in a notebook: a compact HTML summary and the attention viewer inline, from the run's files alone.

    from headscreen.report.notebook import load_run_view
    run = load_run_view("results/demo/run")
    run                                   # Jupyter shows RunView._repr_html_(): model, steps, circuits, validation
    run.attention("L1H3", probe="repeated")  # the report's attention viewer, inline, opened on that head
    run.pattern("L1H3", probe="repeated")    # the stored pattern itself: tensor [row, query, key]

The viewer is the report's own (explore_js, explore_data), in an <iframe srcdoc> so that its script runs in
Jupyter's classic notebook and JupyterLab alike and its styles stay inside it. Nothing is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

import torch

from headscreen.heads import Head, head_label, heads_label, parse_head_label
from headscreen.report.explore_data import explore_payload
from headscreen.report.explore_html import explore_block
from headscreen.report.explore_js import EXPLORE_CSS, EXPLORE_JS
from headscreen.report.load import RunResults, load_run
from headscreen.report.render_html import CSS
from headscreen.report.runinfo import choose_probe, model_name, screened_steps, slugify, thresholds
from headscreen.report.schema import circuits_by_step, for_probe, validation_status
from headscreen.rundir.attention_file import FILE, pattern_key, read_attention


def load_run_view(path: str | Path, probe: str | None = None) -> RunView:
    """The run directory at `path` (written by `headscreen screen`), for display; `probe` as in `headscreen report`."""
    run = load_run(path)
    return RunView(run, choose_probe(run, probe))


def _head(head: str | Head) -> Head:
    if isinstance(head, str):
        parsed = parse_head_label(head)
        if parsed is None:
            raise ValueError(f"head {head!r} is not a head label like 'L1H3'")
        return parsed
    layer, h = head
    return int(layer), int(h)


@dataclass
class AttentionView:
    """The attention viewer of one run as a self-contained page; Jupyter renders it inline."""

    page: str  # a complete HTML document
    height: int = 900

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{escape(self.page, quote=True)}" style="width:100%;height:{self.height}px;'
                'border:1px solid #ddd" title="headscreen attention viewer"></iframe>')

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(self.page, encoding="utf-8")
        return Path(path)


class RunView:
    """One screened run, read from its directory (no model)."""

    def __init__(self, run: RunResults, probe: str | None):
        self.results = run
        self.probe = probe
        self.name = model_name(run)

    @property
    def steps(self) -> list[int]:
        return screened_steps(self.results)

    def circuits(self, step: int | None = None) -> dict[str, list[Head]]:
        """{"induction", "previous", "bos": [heads]} at `step` (default: the last) on this view's probe."""
        recs = for_probe(circuits_by_step(self.results.circuits), self.probe) if self.results.circuits else []
        if not recs:
            return {"induction": [], "previous": [], "bos": []}
        rec = recs[-1] if step is None else next((r for r in recs if r["step"] == step), None)
        if rec is None:
            raise ValueError(f"step {step} was not screened; screened: {[r['step'] for r in recs]}")
        return {k: [tuple(h) for h in rec[k]] for k in ("induction", "previous", "bos")}

    def pattern(self, head: str | Head, *, probe: str | None = None, step: int | None = None) -> torch.Tensor:
        """The stored pattern [row, query, key] (float16) of `head` (default step: the last stored for it)."""
        head, probe = _head(head), probe or self.probe
        if probe is None:
            raise ValueError(f"run {self.results.path} has no probe with stored patterns; screen it (or run "
                             "`headscreen attention RUN`) first")
        index, tensors = read_attention(Path(self.results.path) / FILE)
        steps = sorted(e["step"] for e in index.entries if e["probe"] == probe and (e["layer"], e["head"]) == head)
        if not steps or (step is not None and step not in steps):
            raise ValueError(f"no stored pattern of {head_label(head)} on probe {probe!r}"
                             + (f" at step {step}" if step is not None else "") + f"; stored steps: {steps}")
        return tensors[pattern_key(probe, steps[-1] if step is None else step, head)]

    def attention(self, head: str | Head | None = None, *, probe: str | None = None, step: int | None = None,
                  row: int = 0, height: int = 900) -> AttentionView:
        """The report's attention viewer (and checkpoint slider), opened on `head` / `probe` / `step` / `row`."""
        slug = slugify(self.name)
        payload = explore_payload(self.results, thresholds=thresholds(self.results), probe=probe or self.probe, slug=slug)
        if payload["attention"] is None:
            raise ValueError(payload["attention_notice"])
        payload["initial"] = {"probe": probe, "head": head_label(_head(head)) if head is not None else None,
                              "step": step, "row": row}
        from headscreen.report.content import RunReport

        block = explore_block(RunReport(name=self.name, slug=slug, path=str(self.results.path), step=None,
                                        sections=[], explore=payload), f"{slug}-explore")
        page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(self.name)}</title>'
                f"<style>{CSS}{EXPLORE_CSS} main {{ max-width: none; padding: .5rem; }}</style></head>"
                f"<body><main>{block}</main><script>{EXPLORE_JS}</script></body></html>")
        return AttentionView(page=page, height=height)

    def _repr_html_(self) -> str:
        circ = self.circuits()
        status, detail = validation_status(self.results.validation) if self.results.validation is not None else (
            "not validated", None)
        detail = detail or self._top1()
        index = None
        if (Path(self.results.path) / FILE).is_file():
            from headscreen.rundir.attention_file import read_index

            index = read_index(Path(self.results.path) / FILE)
        stored = (f"{len(index.entries)} patterns of {len({(e['layer'], e['head']) for e in index.entries})} heads "
                  "(.attention())" if index and index.entries else "none (headscreen attention RUN)")
        steps = self.steps
        rows = [("Run", str(self.results.path)),
                ("Checkpoints screened", f"{len(steps)} (steps {steps[0]}–{steps[-1]})" if steps else "none"),
                ("Probe", str(self.probe)),
                ("Induction circuit (last step)", heads_label(circ["induction"])),
                ("Previous-token circuit", heads_label(circ["previous"])),
                ("BOS heads", heads_label(circ["bos"])),
                ("Validation", status + (f": {detail}" if detail else "")),
                ("Stored attention", stored)]
        body = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>{escape(v)}</td></tr>"
                       for k, v in rows)
        return f"<div><strong>headscreen run: {escape(self.name)}</strong><table>{body}</table></div>"

    def _top1(self) -> str | None:
        """'top-1 drop 0.52 (null mean 0.01), p = 0.0033' of the primary ablation, when validated."""
        doc = self.results.validation
        first = (doc.get("checkpoints") or [None])[0] if isinstance(doc, dict) else None
        if not isinstance(first, dict):
            return None
        probes = first.get("probes")
        primary: dict = next(iter(probes.values())) if isinstance(probes, dict) and probes else {}
        t = (primary.get("tests") or {}).get("top1")
        if not t:
            return None
        return (f"{first.get('ablation', '')} ablation of {heads_label(first.get('circuit') or [])}: top-1 drop "
                f"{t['observed_drop']:.3g} (null mean {t['null_mean_drop']:.3g}), p = {t['p_value']:.2g}")

    def __repr__(self) -> str:
        c = self.circuits()
        return f"RunView({self.name!r}, {len(self.steps)} checkpoints, induction {heads_label(c['induction'])})"
