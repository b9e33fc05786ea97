"""`Checkpoint` and `Series`: an ordered list of checkpoints and the ways to read each one.

A series reads a checkpoint's attention tensors lazily (`head_weights`) or boots it into a fresh
`TransformerBridge` (`boot`) only when a probe needs forward passes. Sources (local folders, hub
repositories, our own trained series) differ only in how a checkpoint becomes a local folder.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from headscreen.series.adapters import AttentionGeometry, geometry_from_config, read_head_weights
from headscreen.series.checks import check_checkpoint, check_finite_parameters, read_hf_config
from headscreen.series.errors import CheckpointNotFound, SeriesError, ShapeMismatch
from headscreen.series.tensors import TensorSource
from headscreen.series.weights import HeadWeights, LayeredHeadWeights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    tokens: int | None  # tokens seen, when known
    name: str  # folder name (local) or revision (hub)
    path: Path | None = None  # local folder, when there is one
    meta: dict = field(default_factory=dict)  # e.g. train_loss from series.json

    def label(self) -> str:
        return f"step {self.step} ({self.name})"


class Series:
    """Base class. Subclasses implement `folder(ckpt, purpose)`: a local folder holding the checkpoint."""

    source_kind = "abstract"

    def __init__(self, name: str, checkpoints: list[Checkpoint], *, allow_pickle: bool = False,
                 trust_remote_code: bool = False):
        if not checkpoints:
            raise CheckpointNotFound(f"series {name!r} has no checkpoints")
        steps = [c.step for c in checkpoints]
        dupes = sorted({s for s in steps if steps.count(s) > 1})
        if dupes:
            raise CheckpointNotFound(f"series {name!r} lists steps {dupes} more than once; give each step one checkpoint")
        self.name = name
        self.checkpoints = sorted(checkpoints, key=lambda c: c.step)
        self.allow_pickle = allow_pickle
        self.trust_remote_code = trust_remote_code
        if trust_remote_code:
            print(f"warning: trust_remote_code is on for series {name!r}: booting its checkpoints runs the Python "
                  "code shipped in their folders; use it only for checkpoints you trust", file=sys.stderr)
        self._reference: tuple[Checkpoint, dict[str, tuple[int, ...]]] | None = None
        self._checked: dict[tuple[int, Path], AttentionGeometry] = {}  # (step, folder) -> geometry, checks passed
        self.boot_dtype = torch.float32  # what `boot` loads the weights as (headscreen.series.precision)

    # --- to be provided by sources ---------------------------------------------------------
    def folder(self, ckpt: Checkpoint, purpose: str = "attention") -> Path:  # purpose: "attention" | "full"
        raise NotImplementedError

    def tokenizer_dir(self) -> Path | None:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"source": self.source_kind, "name": self.name, "n_checkpoints": len(self.checkpoints),
                "steps": self.steps, "allow_pickle": self.allow_pickle, "trust_remote_code": self.trust_remote_code}

    # --- shared ----------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def checkpoint(self, step: int) -> Checkpoint:
        for c in self.checkpoints:
            if c.step == step:
                return c
        raise CheckpointNotFound(f"series {self.name!r} has no step {step}; available: {self.steps[:5]}…{self.steps[-3:]}")

    def hf_config(self, ckpt: Checkpoint) -> dict:
        return read_hf_config(self.folder(ckpt), ckpt.label())

    def check(self, ckpt: Checkpoint, purpose: str = "attention", src: TensorSource | None = None) -> AttentionGeometry:
        """Run the checkpoint checks (headscreen.series.checks) once per folder; returns the geometry.
        `src`: the TensorSource of that folder the caller reads next (its headers are parsed once)."""
        folder = self.folder(ckpt, purpose)
        key = (ckpt.step, folder)
        if key not in self._checked:
            self._checked[key] = check_checkpoint(folder, allow_pickle=self.allow_pickle,
                                                  label=f"{ckpt.label()} at {folder}", src=src,
                                                  all_shards=purpose == "full" or self.source_kind != "hub")
        return self._checked[key]

    def geometry(self, ckpt: Checkpoint | None = None) -> AttentionGeometry:
        ckpt = ckpt or self.checkpoints[-1]
        return geometry_from_config(self.hf_config(ckpt), where=f"checkpoint {ckpt.label()} config.json")

    def tensor_source(self, ckpt: Checkpoint) -> TensorSource:
        return TensorSource(self.folder(ckpt), allow_pickle=self.allow_pickle)

    def head_weights(self, ckpt: Checkpoint, dtype: torch.dtype | None = torch.float32, *,
                     check: bool = True) -> HeadWeights | LayeredHeadWeights:
        """Attention weights of one checkpoint, read lazily (only attention tensors), as float32 by default.
        dtype=None: as stored, e.g. fp16, and without any copy: a `LayeredHeadWeights` of views of the
        shards' memory maps (see `read_head_weights`). check=False (with dtype=None): the NaN/Inf check
        of the weight matrices is left to the consumer (the fused sketch pass checks its sums).

        Raises `ShapeMismatch` if shapes differ from the first checkpoint read from this series.
        """
        try:
            src = self.tensor_source(ckpt)
        except SeriesError:
            self.check(ckpt)  # its first failing check (e.g. config.json) is the error to report
            raise
        geometry = self.check(ckpt, src=src)  # headers and claimed shapes, before anything is allocated
        try:
            hw = read_head_weights(src, geometry, dtype=dtype, check=check)
        finally:
            src.close()  # drop the shard handles: nothing of this checkpoint is kept
        shapes = hw.shapes()
        if self._reference is None:
            self._reference = (ckpt, shapes)
        else:
            ref_ckpt, ref = self._reference
            for name in sorted(set(ref) | set(shapes)):
                if ref.get(name) != shapes.get(name):
                    raise ShapeMismatch(
                        f"checkpoint {ckpt.label()}: {name} has shape {shapes.get(name)} but {ref_ckpt.label()} "
                        f"had {ref.get(name)}; a series must keep one architecture — split it into two series"
                    )
        return hw

    def iter_head_weights(self, checkpoints: list[Checkpoint] | None = None) -> Iterator[tuple[Checkpoint, HeadWeights]]:
        """Yield (checkpoint, HeadWeights) oldest first, one checkpoint in memory at a time."""
        for ckpt in checkpoints if checkpoints is not None else self.checkpoints:
            yield ckpt, self.head_weights(ckpt)

    def boot(self, ckpt: Checkpoint, *, device: str = "cpu", dtype: torch.dtype | None = None):
        """A fresh `TransformerBridge` for this checkpoint, offline, in raw (non-compatibility) mode.

        The checkpoint passes the header and shape checks first (`check`: nothing is loaded before),
        and every parameter of the booted model, attention included, is checked for NaN/Inf; each
        failure is a `SeriesError` naming the checkpoint. The attention tensors are not read a second
        time by the lazy reader. `dtype`: the weights' dtype (default: `self.boot_dtype`, float32 unless
        the screen chose another; headscreen.series.precision).
        """
        from headscreen.series.boot import boot_bridge

        folder = self.folder(ckpt, purpose="full")
        self.check(ckpt, purpose="full")
        bridge = boot_bridge(folder, self.tokenizer_dir(), device=device, dtype=dtype or self.boot_dtype,
                             trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle,
                             checked=True)
        check_finite_parameters(bridge, f"{ckpt.label()} at {folder}")
        return bridge


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in TOKENIZER_FILES)
