"""The published per-measurement records of the transversely-curved-dynamics study (Xu, arXiv 2602.16746)
and its event rules run on them (source and columns: headscreen/grokking/published/data/README.md).

`published_records()` loads the packaged CSV (or another of the same columns); `run_events` applies the
study's rules to one run's rows: onset = the ratio rule as the study's code runs it
(detect.PUBLISHED_ONSET), grokking = the first measurement with test accuracy ≥ 0.5 / 0.9 / 0.95;
`published_events` does it for every run of a table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from headscreen.grokking.analysis.detect import PUBLISHED_ONSET, SeriesTooShort, grok_step, onset_ratio

DATA = Path(__file__).parent / "data" / "curv_defect_published.csv.gz"
COLUMNS = ("study", "op", "lr", "wd", "seed", "step", "defect_median", "defect_p25", "defect_p75",
           "train_acc", "test_acc")
RUN_KEYS = ("study", "op", "lr", "wd", "seed")
GROK_LEVELS = (0.5, 0.9, 0.95)
LEAD_LEVEL = 0.9  # the published lead time runs to test accuracy >= 0.9
# our task names for the study's operation names
OP_TASKS = {"add": "add", "sub": "sub", "mul": "mul", "x2_y2": "sq", "x2_xy_y2": "x2_xy_y2", "x3_xy": "x3_xy"}


def published_records(path: str | Path | None = None) -> pd.DataFrame:
    """The published records (default: the packaged copy); a clear error when a column is missing."""
    src = Path(path) if path is not None else DATA
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist; give a CSV with columns {', '.join(COLUMNS)}")
    df = pd.read_csv(src)
    missing = sorted(set(COLUMNS) - set(df.columns))
    if missing:
        raise ValueError(f"{src} lacks columns {missing}; expected {', '.join(COLUMNS)}")
    return df


def level_key(level: float) -> str:
    return f"grok_{round(level * 100)}"


def run_events(steps, defect, test_acc) -> dict:
    """baseline (median of the first 3 defects), onset (published rule), grok_50/90/95 and lead (to 0.9)."""
    steps = np.asarray(steps)
    defect = np.asarray(defect, dtype=np.float64)
    try:
        onset = onset_ratio(steps, defect, **PUBLISHED_ONSET)
    except SeriesTooShort:
        onset = None
    out = {"baseline": float(np.nanmedian(defect[:3])), "onset": onset}
    for lv in GROK_LEVELS:
        out[level_key(lv)] = grok_step(steps, test_acc, lv)
    g = out[level_key(LEAD_LEVEL)]
    out["lead"] = None if g is None or onset is None else int(g) - int(onset)
    return out


def published_events(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per published run: RUN_KEYS, last step, and `run_events`."""
    df = published_records() if records is None else records
    rows = []
    for key, g in df.sort_values("step").groupby(list(RUN_KEYS), sort=True):
        ev = run_events(g["step"].to_numpy(), g["defect_median"].to_numpy(), g["test_acc"].to_numpy())
        rows.append({**dict(zip(RUN_KEYS, key, strict=True)), "last_step": int(g["step"].iloc[-1]), **ev})
    out = pd.DataFrame(rows)
    for col in ("onset", "lead", *(level_key(lv) for lv in GROK_LEVELS)):
        out[col] = pd.array(out[col].to_numpy(), dtype="Int64")
    return out
