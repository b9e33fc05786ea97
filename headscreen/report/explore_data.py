"""The data of the report's interactive views (selectivity slider, attention viewer), from the run's files alone.

`explore_payload` returns one JSON-ready dict per run; render_html writes it into the page as JSON
(escaped by `script_json`) and the page's script draws from it. Patterns are quantised to one byte per
weight (round(255·w): the drawn value is within 1/510 of the stored one) and only the causal lower
triangle (key <= query) is kept, base64-encoded.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import torch

from headscreen.report.load import RunResults
from headscreen.report.runinfo import grid_shape
from headscreen.rundir.attention_file import FILE, read_attention

CLASS_ORDER = ("induction", "previous", "first", "duplicate", "self", "local")


def quantise_lower(pattern: torch.Tensor) -> str:
    """[query, key] pattern -> base64 of round(255·w) for key <= query, row by row (T(T+1)/2 bytes)."""
    T = pattern.shape[-1]
    q = torch.clamp(torch.round(pattern.float() * 255), 0, 255).to(torch.uint8).numpy()
    rows, cols = np.tril_indices(T)
    return base64.b64encode(q[rows, cols].tobytes()).decode("ascii")


def _sig(v: float) -> float | None:
    """3 significant digits (the slider's cells and tooltips); None for NaN / inf."""
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.3g}")


def selectivity_frames(run: RunResults) -> dict | None:
    """{steps, layers, heads, probes: {probe: {class: [per step: flat layer*heads values]}}} of selectivity.parquet."""
    df, shape = run.selectivity, grid_shape(run)
    if df is None or df.empty or shape is None:
        return None
    n_l, n_h = shape
    steps = sorted(int(s) for s in df["step"].unique())
    at = {s: i for i, s in enumerate(steps)}
    out: dict = {"steps": steps, "layers": n_l, "heads": n_h, "probes": {}}
    means = df.groupby(["probe", "class", "step", "layer", "head"], sort=False)["selectivity"].mean()
    grids: dict[tuple[str, str], np.ndarray] = {}
    for (probe, cls, step, layer, head), v in means.items():
        g = grids.setdefault((str(probe), str(cls)), np.full((len(steps), n_l * n_h), np.nan))
        g[at[int(step)], int(layer) * n_h + int(head)] = v
    for (probe, cls), g in sorted(grids.items(), key=lambda kv: (kv[0][0], _class_rank(kv[0][1]))):
        out["probes"].setdefault(probe, {})[cls] = [[_sig(v) for v in row] for row in g.tolist()]
    return out


def _class_rank(cls: str) -> tuple[int, str]:
    return (CLASS_ORDER.index(cls) if cls in CLASS_ORDER else len(CLASS_ORDER), cls)


def attention_view(run: RunResults) -> tuple[dict | None, str | None]:
    """(the viewer's data, None), or (None, why there is none) for a run without a current attention file."""
    path = Path(run.path) / FILE
    if not path.is_file():
        return None, (f"{FILE} is not in {run.path} (runs screened before headscreen stored attention patterns have "
                      "none): rerun `headscreen screen` on this run to add the attention viewer.")
    index, tensors = read_attention(path)
    current = (run.manifest.get("tables") or {}).get("id")
    if index.tables_id is not None and current is not None and index.tables_id != current:
        return None, (f"{path} was computed for tables that a later screen replaced; rerun `headscreen screen` to "
                      "rewrite it.")
    if not index.entries:
        return None, "No head is in the induction, previous-token or BOS class at the last checkpoint: no pattern to show."
    probes = {}
    for probe, p in index.probes.items():
        toks = tensors.get(f"tokens.{probe}")
        probes[probe] = {"seq_len": p["seq_len"], "text": p["text"], "query_pos": p.get("query_pos"),
                         "a_pos": p.get("a_pos"), "ids": toks.tolist() if toks is not None else None}
    entries = []
    for e in index.entries:
        pat = tensors[e["key"]]  # [row, q, k]
        entries.append({"probe": e["probe"], "step": e["step"], "layer": e["layer"], "head": e["head"],
                        "why": e.get("why", []), "rows": [quantise_lower(pat[r]) for r in range(pat.shape[0])]})
    return {"rows": index.rows, "probes": probes, "entries": entries}, None


def explore_payload(run: RunResults, *, thresholds: dict, probe: str | None, slug: str, step: int | None = None) -> dict:
    """Everything the page's script needs for one run (`step`: where the slider starts; default the last)."""
    attention, notice = attention_view(run)
    return {"slug": slug, "probe": probe, "step": step, "thresholds": {k: thresholds.get(k) for k in ("class", "induction_circuit")},
            "selectivity": selectivity_frames(run), "attention": attention, "attention_notice": notice}


def script_json(payload: dict) -> str:
    """`payload` as JSON that is safe inside <script type="application/json">: every <, > and & (so no
    token can close the element or open a comment) and U+2028/9 are written as \\u escapes."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text
