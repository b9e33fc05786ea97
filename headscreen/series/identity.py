"""The identity of a checkpoint: what a run records to tell later whether a checkpoint is still the same.

A local checkpoint's identity is its step, its folder and a cheap content fingerprint: the SHA-256 of
its config.json, of each weight file's name and size, and of each safetensors file's header (the JSON
that lists every tensor's dtype, shape and byte range). Reading it costs a few kB per file, never the
tensor data, so a re-trained or re-saved checkpoint whose tensors have the same names, shapes and sizes
but other values is not told apart (a stated limit: change the series' folder or use --force then).
A hub checkpoint is identified by repository and revision (no download).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from headscreen.series.base import Checkpoint, Series
from headscreen.series.tensors import PICKLE_PATTERNS, SAFETENSORS_INDEX

_MAX_HEADER = 100 * 2**20  # a safetensors header above this is not hashed whole (a crafted file)


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return head
        n = struct.unpack("<Q", head)[0]
        return head + f.read(min(n, _MAX_HEADER))


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 (hex, 16 digits) of config.json, the weight files' names and sizes, and safetensors headers."""
    h = hashlib.sha256()
    config = folder / "config.json"
    h.update(config.read_bytes() if config.exists() else b"<no config.json>")
    weights = sorted({*folder.glob("*.safetensors"), *[p for pat in PICKLE_PATTERNS for p in folder.glob(pat)]})
    index = folder / SAFETENSORS_INDEX
    for path in ([index] if index.exists() else []) + weights:
        h.update(f"\0{path.name}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".safetensors":
            h.update(_safetensors_header(path))
    return h.hexdigest()[:16]


def checkpoint_identity(series: Series, ckpt: Checkpoint) -> dict:
    """{"step", "name", "path", "fingerprint"} of one checkpoint (see the module docstring)."""
    if ckpt.path is not None:
        return {"step": ckpt.step, "name": ckpt.name, "path": str(ckpt.path),
                "fingerprint": folder_fingerprint(ckpt.path) if ckpt.path.is_dir() else None}
    repo = getattr(series, "repo", series.name)
    return {"step": ckpt.step, "name": ckpt.name, "path": None, "fingerprint": f"{repo}@{ckpt.name}"}


def series_identity(series: Series) -> list[dict]:
    """The identities of every checkpoint of `series`, oldest first."""
    return [checkpoint_identity(series, c) for c in series.checkpoints]
