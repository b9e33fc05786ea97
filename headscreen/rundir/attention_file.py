"""attention.safetensors in a run directory: stored attention patterns of the circuit and BOS heads.

Written by `headscreen screen` after its tables (pipelines/attention.py), read by the report and the
notebook view, so that neither needs a model (docs/run-format.md, "attention.safetensors").

Tensors: `tokens.<probe>` int64 [row, pos] (the first rows of the probe batch) and
`pattern.<probe>.<step>.L<layer>H<head>` float16 [row, query, key]. The safetensors metadata key
`json` holds the index below (`AttentionIndex`), so a reader can list what is stored without reading
the patterns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from headscreen.heads import Head, head_label
from headscreen.rundir.atomic import atomic_write

FILE = "attention.safetensors"
FORMAT = "headscreen-attention/1"
DTYPE = torch.float16  # values in [0, 1]: absolute rounding error <= 2**-12 (2.4e-4)


def pattern_key(probe: str, step: int, head: Head) -> str:
    return f"pattern.{probe}.{int(step)}.{head_label(head)}"


@dataclass
class AttentionIndex:
    """What attention.safetensors holds (its metadata)."""

    tables_id: str | None  # the manifest's tables.id the patterns were computed for
    rows: int
    probes: dict[str, dict]  # probe -> {seq_len, query_pos [row], a_pos [row] | None, text [[token text]]}
    entries: list[dict] = field(default_factory=list)  # {probe, step, layer, head, key, why [..]}
    format: str = FORMAT
    dtype: str = "float16"

    def to_dict(self) -> dict:
        return {"format": self.format, "dtype": self.dtype, "tables_id": self.tables_id, "rows": self.rows,
                "probes": self.probes, "entries": self.entries}


def write_attention(path: Path, index: AttentionIndex, tokens: dict[str, torch.Tensor],
                    patterns: dict[str, torch.Tensor]) -> Path:
    """Write the file atomically; `tokens` {probe: [row, pos]}, `patterns` {pattern_key: [row, q, k]}."""
    from safetensors.torch import save_file

    tensors = {f"tokens.{p}": t.to(torch.int64).contiguous().cpu() for p, t in tokens.items()}
    tensors |= {k: v.to(DTYPE).contiguous().cpu() for k, v in patterns.items()}
    meta = {"json": json.dumps(index.to_dict())}
    return atomic_write(Path(path), lambda p: save_file(tensors, str(p), meta))


class AttentionFileError(ValueError):
    """attention.safetensors exists but cannot be read."""


def read_index(path: Path) -> AttentionIndex:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            doc = json.loads((f.metadata() or {}).get("json", "{}"))
    except Exception as e:  # a truncated or foreign file: safetensors raises several types
        raise AttentionFileError(f"{path} cannot be read ({type(e).__name__}: {e}); delete it and rerun "
                                 "`headscreen screen` on the run to rewrite it") from e
    if doc.get("format") != FORMAT:
        raise AttentionFileError(f"{path} has format {doc.get('format')!r}, expected {FORMAT!r}; rerun the screen")
    return AttentionIndex(tables_id=doc.get("tables_id"), rows=int(doc["rows"]), probes=doc["probes"],
                          entries=doc["entries"], dtype=doc.get("dtype", "float16"))


def read_attention(path: Path) -> tuple[AttentionIndex, dict[str, torch.Tensor]]:
    """(index, every tensor by name) of attention.safetensors."""
    from safetensors import safe_open

    index = read_index(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return index, tensors
