"""Streaming head sketcher: one checkpoint at a time, sketch each head's trajectory and its exact update norms.

`HeadSketcher.update(weights, step)` takes a checkpoint's `HeadWeights` (or an [L, H, P] tensor of head
vectors) and returns a `SketchStep` (the sketch s_t ≈ Φθ_t [L, H, d] and ‖δ_t‖ [L, H]); the stacked
records feed `fingerprint` (headscreen.spectral.fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from headscreen.series.weights import LayeredHeadWeights

from .config import SpectralConfig
from .fingerprint import fingerprint
from .fused import FusedPass
from .gram import check_series_length
from .segments import SegmentedCheckpoint, SegmentPass
from .sketch import CountSketch, ExactProjector, GaussianSketch, make_projector


@dataclass(frozen=True)
class SketchStep:
    step: int
    sketch: Float[Tensor, "layer head d"]  # s_t ≈ Φθ_t per head (float64; exact mode: θ_t itself)
    update_norm: Float[Tensor, "layer head"]  # ‖θ_t − θ_{t−1}‖ (float64); NaN for the first
    #: what was added to s_{t−1}: Φδ_t as projected, in float64 (the first checkpoint: Φθ_0 itself);
    #: None in exact mode. s_t = s_{t−1} + increment exactly, so records of increments sum to the
    #: same s_t however the series was split between workers.
    increment: Float[Tensor, "layer head d"] | None = None


class HeadSketcher:
    """Streams checkpoints, oldest first: sketch each head's trajectory and its exact update norms.

    `update(weights, step)` takes one checkpoint's `HeadWeights` (or an [L, H, P] tensor of head
    vectors) and returns its `SketchStep`. Only the previous checkpoint's weights are kept, in the
    dtype they came in (fp16 weights stay fp16); with `retain=True` they are the caller's tensors
    themselves (no copy: the caller hands them over and must not modify them afterwards).

    What is sketched. With θ_t a head's vector at checkpoint t, the record is s_t = Φθ_t — but it is
    computed as a running sum, s_0 = Φθ_0 (float64) and s_t = s_{t−1} + Φδ_t with the exact update
    δ_t = θ_t − θ_{t−1}, summed in float64. Sketching θ_t directly would need float64: in float32,
    Φθ_t − Φθ_{t−1} loses δ_t to cancellation once ‖δ‖/‖θ‖ ≲ 1e-4 (a relative error of
    ~1e-7·‖θ‖/‖δ‖ per sketch entry). δ_t is formed from the weights themselves (exact for
    fp16/bf16/fp32 weights), so Φδ_t is accurate however small the update, and s_t − s_{t−1} recovers
    it from the float64 sum. Records keep their meaning (Φθ_t, float64, [L, H, d]). The cost: s_t
    depends on s_{t−1}, so resuming needs the last record's sketch as well as its weights:
    `prime(weights, step, sketch=recorded_sketch)` (without `sketch=`, s_{t−1} is recomputed as
    Φθ_{t−1} in float64, which agrees to rounding but is not bit-identical). In exact mode the record
    is θ_t itself (compute dtype) and nothing is summed.

    Two passes, both one walk over θ_t and θ_{t−1} per checkpoint:
      * CountSketch (the default; fused.py): one compiled loop reads each element as stored, forms
        δ_t in float64, adds it into the head's signed bin and its square into ‖δ_t‖² (float64), in
        the weights' memory order (bit-identical for the same layout and any stored dtype, equal to
        rounding across layouts); a NaN/Inf in θ_t is found on the accumulator and raises before the
        state changes.
      * Gaussian and exact (segments.py): segments of columns assembled in float32, differenced,
        normed (float32 partial sums of 256 entries added in float64) and projected with one matmul
        per Φ block in `config.projection_dtype`; a finite check reads θ_t first.
    Memory bound (L layers, H heads, P = head-vector length, d = sketch dim, b = bytes per element
    of the weights as given, T checkpoints so far), beyond the caller's weights:
      * the previous checkpoint's weights: L·H·P·b bytes (fp16: 2 bytes; GQA: the K/V parts once per
        K/V head), none beyond the caller's when they are retained;
      * CountSketch: a [L, H, 2·d] float64 accumulator and the bin table, 4 bytes per column (and
        once more per part whose memory order differs from the column order; plus the hashes, 20
        bytes per column, cached within config.cache_bytes); Gaussian: two float32
        [L·H, 4096] work buffers and Φ, d·P·4 bytes, cached within config.cache_bytes (regenerated per
        checkpoint beyond it: a block of 16384×100 costs ~12 ms to draw);
      * the running sum L·H·d·8 bytes; history (if keep_history): T·L·H·(d+1)·8 bytes; in exact mode
        d = P, so the history is the whole per-head trajectory: use exact mode only for toy models.
    Pythia-1B-like (16 layers, 8 heads, d_model 2048, d_head 256 → P = 2.1M, fp16), default
    CountSketch d = 500: 537 MB of previous weights (0 extra when retained), 8 MB of bins + 42 MB of
    hashes, 1 MB of accumulator, history ≈ 0.5 MB per checkpoint. Speed and the comparison with the
    floor (read θ_t once, one pass over θ_{t−1}) and with booting a bridge per checkpoint:
    benchmarks/bench_extraction.py.
    """

    def __init__(self, config: SpectralConfig | None = None, *, keep_history: bool = True) -> None:
        self.config = config or SpectralConfig()
        self.keep_history = keep_history
        self.projector: GaussianSketch | CountSketch | ExactProjector | None = None
        self._pass: FusedPass | SegmentPass | None = None  # holds θ_{t−1}
        self._shape: tuple[int, int, int] | None = None  # (L, H, P) of the series
        self._prev_step: int | None = None
        self._sum: Tensor | None = None  # s_{t−1} [L, H, d] float64 (sketch mode)
        self._steps: list[int] = []
        self._sketches: list[Tensor] = []
        self._norms: list[Tensor] = []

    # -- input handling
    def _open(self, weights, step: int) -> SegmentedCheckpoint:
        ck = SegmentedCheckpoint(weights, step)  # checks the kind, rank and dtype; reads nothing
        if self._shape is not None and ck.shape != self._shape:
            raise ValueError(f"step {step}: head vectors have shape {ck.shape} but earlier checkpoints "
                             f"had {self._shape}; a series must keep one architecture")
        if self._prev_step is not None and step <= self._prev_step:
            raise ValueError(f"step {step} is not after the previous step {self._prev_step}; "
                             "feed checkpoints oldest first")
        if self.projector is None:
            self.projector = make_projector(self.config, ck.shape[-1])
            fused = isinstance(self.projector, CountSketch)
            self._pass = FusedPass(self.projector) if fused else SegmentPass(self.projector, self.config)
        elif self.projector.in_dim != ck.shape[-1]:
            raise ValueError(f"step {step}: P={ck.shape[-1]} differs from the series' P={self.projector.in_dim}")
        return ck

    def _ingest(self, weights, ck: SegmentedCheckpoint, **kw) -> tuple[Tensor | None, Tensor]:
        if isinstance(self._pass, FusedPass):  # checks unchecked weights itself (on its sums)
            return self._pass.ingest(weights, ck, **kw)
        if isinstance(weights, LayeredHeadWeights):
            weights.check_finite()  # read unchecked (check=False): NonFiniteWeights names the tensor
        return self._pass.ingest(ck, **kw)

    def state_bytes(self) -> dict:
        """Bytes held between checkpoints: {"prev": θ_{t−1} (shared with the caller when retained),
        "work": buffers and tables of the pass}."""
        return self._pass.state_bytes() if self._pass is not None else {"prev": 0, "work": 0}

    def prime(self, weights, step: int, *, sketch: Tensor | None = None, retain: bool = False) -> None:
        """Set the previous checkpoint (for resuming) without recording it.

        `sketch`: that checkpoint's recorded `SketchStep.sketch`, so that the running sum continues
        bit-identically. Without it, Φθ is recomputed in float64 (equal up to rounding).
        `retain`: keep `weights` themselves as θ_{t−1} (see `update`).
        """
        step = int(step)
        ck = self._open(weights, step)
        sketching = not isinstance(self.projector, ExactProjector)
        shape = (*ck.shape[:2], self.projector.dim)
        if sketch is not None and sketching and tuple(sketch.shape) != shape:
            raise ValueError(f"step {step}: the recorded sketch has shape {tuple(sketch.shape)} but this "
                             f"sketcher makes {shape}; resume with the settings the run was recorded with")
        self._pass.reset()  # priming replaces any state
        self._prev_step = None
        theta, _ = self._ingest(weights, ck, want=sketching and sketch is None, project_theta=True, retain=retain)
        self._prev_step, self._shape = step, ck.shape
        if sketching:
            self._sum = sketch.to(torch.float64).clone() if sketch is not None else theta

    def update(self, weights, step: int, *, retain: bool = False) -> SketchStep:
        """Sketch checkpoint `step` (after every step fed so far). `retain=True` hands `weights` over:
        they are kept as θ_{t−1} without a copy, so the caller must not modify them afterwards (the
        screen does this with the tensors it has just read)."""
        step = int(step)
        ck = self._open(weights, step)
        exact = isinstance(self.projector, ExactProjector)
        first = not self._pass.has_prev
        out, norm = self._ingest(weights, ck, want=True, project_theta=not exact and first, retain=retain)
        self._prev_step, self._shape = step, ck.shape
        increment = None
        sketch = out
        if not exact:
            increment = out
            sketch = out if first else self._sum + out
            self._sum = sketch
        if self.keep_history:
            self._steps.append(step)
            self._sketches.append(sketch)
            self._norms.append(norm)
        return SketchStep(step=step, sketch=sketch, update_norm=norm, increment=increment)

    # -- history
    def _need_history(self) -> None:
        if not self.keep_history:
            raise RuntimeError("keep_history=False: stack the SketchStep records yourself")
        if not self._steps:
            raise ValueError(f"no checkpoint has been fed yet; need at least {self.config.window + 1}")

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    @property
    def sketches(self) -> Float[Tensor, "T layer head d"]:
        self._need_history()
        return torch.stack(self._sketches)

    @property
    def update_norms(self) -> Float[Tensor, "T layer head"]:
        self._need_history()
        return torch.stack(self._norms)

    def fingerprint(self) -> pd.DataFrame:
        """Long fingerprint of everything fed so far (exact update norms); needs ≥ W+1 checkpoints."""
        self._need_history()
        check_series_length(len(self._steps), self.config.window)
        return fingerprint(self.sketches, self._steps, config=self.config, update_norms=self.update_norms)

    def provenance(self) -> dict:
        exact = isinstance(self.projector, ExactProjector) or self.config.exact
        summed = ("P delta_t summed in float64 by the fused pass" if isinstance(self._pass, FusedPass)
                  else f"P delta_t in {self.config.projection_dtype}, sum in float64")
        record = ("theta_t (exact mode)" if exact else
                  f"s_t = s_(t-1) + P delta_t ({summed}), s_0 = P theta_0 in float64")
        return {"config": self.config.to_dict(), "record": record,
                "projector": self.projector.provenance() if self.projector is not None else None}
