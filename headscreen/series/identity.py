"""The identity of a checkpoint: what a run records to tell later whether a checkpoint is still the same.

A local checkpoint's identity is its step, its folder and a cheap content fingerprint: the SHA-256 of
its config.json, of each weight file's name and size, of each safetensors file's header (the JSON that
lists every tensor's dtype, shape and byte range) and of a sample of its data: the first and the last
64 KiB after the header. Reading it costs ~130 kB per weight file, whatever the checkpoint's size. A
checkpoint re-saved with other values in those bytes is told apart (training changes every tensor);
one that differs only in the middle of its data is not (a stated limit: use --force then).
Pickle files are fingerprinted by name, size and the same data sample.
A hub checkpoint is identified by repository and revision (no download).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from headscreen.series.base import Checkpoint, Series
from headscreen.series.tensors import PICKLE_PATTERNS, SAFETENSORS_INDEX

_MAX_HEADER = 100 * 2**20  # a safetensors header above this is not hashed whole (a crafted file)
_SAMPLE = 64 * 2**10  # bytes of data hashed at each end of a weight file


def _file_digest(path: Path) -> bytes:
    """The safetensors header (if any) plus the first and last _SAMPLE bytes of the data after it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 0
        parts = [f"{path.name}:{size}:".encode()]
        if path.suffix == ".safetensors" and size >= 8:
            n = struct.unpack("<Q", f.read(8))[0]
            parts.append(f.read(min(n, _MAX_HEADER)))
            start = 8 + n
        f.seek(min(start, size))
        parts.append(f.read(_SAMPLE))
        f.seek(max(start, size - _SAMPLE))
        parts.append(f.read(_SAMPLE))
    return b"\0".join(parts)


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 (hex, 16 digits) of config.json and of each weight file's name, size, header and data sample."""
    h = hashlib.sha256()
    config = folder / "config.json"
    h.update(config.read_bytes() if config.exists() else b"<no config.json>")
    weights = sorted({*folder.glob("*.safetensors"), *[p for pat in PICKLE_PATTERNS for p in folder.glob(pat)]})
    index = folder / SAFETENSORS_INDEX
    if index.exists():
        h.update(index.read_bytes())
    for path in weights:
        h.update(_file_digest(path))
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
