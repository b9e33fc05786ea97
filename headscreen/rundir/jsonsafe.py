"""JSON-safe values: the one conversion every JSON document the package writes goes through.

numpy/torch scalars become Python numbers, arrays and tensors become lists, NaN/±inf and pandas'
missing values become None (strict JSON has no NaN), dict keys become strings; recursively.
"""

from __future__ import annotations

import math

import pandas as pd


def json_safe(value):
    """`value` with every number plain Python, every non-finite float None, every dict key a string."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, str | bytes) or value is None:
        return value
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy array, torch tensor
        return json_safe(value.tolist())
    if hasattr(value, "item"):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def records(df: pd.DataFrame) -> list[dict]:
    """A DataFrame's rows as JSON-safe dicts."""
    return json_safe(df.to_dict(orient="records"))
