"""Streaming head sketcher: one checkpoint at a time, sketch each head's trajectory and its exact update norms.

`HeadSketcher.update(weights, step)` takes a checkpoint's `HeadWeights` (or an [L, H, P] tensor of head
vectors) and returns a `SketchStep` (the sketch s_t ≈ Φθ_t [L, H, d] and ‖δ_t‖ [L, H]); the stacked
records feed `fingerprint` (headscreen.spectral.fingerprint).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .config import SpectralConfig
from .fingerprint import fingerprint
from .gram import check_series_length
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


_NORM_CHUNK = 256  # ‖δ‖² = Σ of float32 partial sums over 256 entries, added in float64


def _sq_norms(x: Tensor) -> Tensor:
    """Σ x² along the last dim of a contiguous [n, P] tensor, float64-accurate at float32 speed."""
    p = x.shape[-1]
    main = p // _NORM_CHUNK * _NORM_CHUNK
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    if main:
        part = torch.linalg.vector_norm(x[:, :main].reshape(x.shape[0], -1, _NORM_CHUNK), dim=-1)
        out += part.to(torch.float64).pow(2).sum(-1)
    if main < p:
        out += x[:, main:].to(torch.float64).pow(2).sum(-1)
    return out


#: Columns of the head vectors processed together. All L·H heads of a segment are differenced, normed
#: and projected at once, so each block of Φ is read once per checkpoint and the working set (two
#: [L·H, SEGMENT] float32 buffers and a Φ block) stays in cache. Not part of any definition.
SEGMENT = 4096


class _Checkpoint:
    """One checkpoint's head vectors, read a segment of columns at a time (no [L, H, P] copy).

    A head vector is concat(W_Q[h], W_K[g(h)], W_V[g(h)], W_O[h]) flattened (`HeadWeights.head_vectors`);
    `parts` lists (first column, width, view [L, G, width], G) with G = H for W_Q/W_O and the K/V heads
    for W_K/W_V (each broadcast over its group of H/G query heads).
    """

    def __init__(self, weights, step: int) -> None:
        self.step = step
        if isinstance(weights, Tensor):
            if weights.ndim != 3:
                raise ValueError(f"step {step}: head vectors must be [layer, head, P]; got shape {tuple(weights.shape)}")
            if not weights.is_floating_point():
                raise ValueError(f"step {step}: head vectors must be floating point; got {weights.dtype}")
            self.shape = tuple(weights.shape)
            self.dtype = weights.dtype
            self.tensors: tuple[Tensor, ...] = (weights,)
            self.parts = [(0, self.shape[2], weights)]
        elif hasattr(weights, "head_vectors") and hasattr(weights, "W_Q"):
            self.tensors = (weights.W_Q, weights.W_K, weights.W_V, weights.W_O)
            for t in self.tensors:
                if not t.is_floating_point():
                    raise ValueError(f"step {step}: head weights must be floating point; got {t.dtype}")
            n_layers, n_heads = weights.n_layers, weights.n_heads
            n = weights.d_model * weights.d_head
            self.shape = (n_layers, n_heads, 4 * n)
            self.dtype = functools.reduce(torch.promote_types, [t.dtype for t in self.tensors])
            self.parts = [(i * n, n, t.reshape(n_layers, t.shape[1], n)) for i, t in enumerate(self.tensors)]
        else:
            raise TypeError(f"step {step}: expected HeadWeights or an [L, H, P] tensor; got {type(weights).__name__}")
        # vectors are formed in float32 (float64 stays float64): exact for fp16/bf16/fp32 weights
        self.work_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32

    def segments(self):
        """Column ranges [lo, hi) of width SEGMENT (the last one shorter); independent of the layout."""
        p = self.shape[2]
        for lo in range(0, p, SEGMENT):
            yield lo, min(lo + SEGMENT, p)

    def columns(self, lo: int, hi: int, out: Tensor) -> Tensor:
        """Columns [lo, hi) of every head vector, as [L·H, hi − lo] (written into `out`)."""
        n_layers, n_heads, _ = self.shape
        dst = out[: n_layers * n_heads, : hi - lo]
        for base, width, view in self.parts:
            a, b = max(lo, base), min(hi, base + width)
            if a >= b:
                continue
            groups = view.shape[1]
            dst[:, a - lo : b - lo].view(n_layers, groups, n_heads // groups, b - a).copy_(
                view[:, :, None, a - base : b - base])
        return dst

    def check_finite(self) -> None:
        # a sum is non-finite if any entry is (or if it overflows: then the exact check decides)
        if all(torch.isfinite(t.sum()).item() for t in self.tensors):
            return
        n_layers, n_heads, _ = self.shape
        bad = torch.zeros(n_layers * n_heads, dtype=torch.bool)
        buf = torch.empty(n_layers * n_heads, SEGMENT, dtype=self.work_dtype)
        for lo, hi in self.segments():
            bad |= ~torch.isfinite(self.columns(lo, hi, buf)).all(-1)
        if bad.any():
            layer, head = divmod(int(bad.nonzero()[0, 0]), n_heads)
            raise ValueError(f"step {self.step}: NaN/inf weights in layer {layer} head {head}; the "
                             "checkpoint is corrupt or diverged")


class HeadSketcher:
    """Streams checkpoints, oldest first: sketch each head's trajectory and its exact update norms.

    `update(weights, step)` takes one checkpoint's `HeadWeights` (or an [L, H, P] tensor of head
    vectors) and returns its `SketchStep`. Only the previous checkpoint's head vectors are kept, in
    the dtype they came in (fp16 weights stay fp16).

    What is sketched. With θ_t a head's vector at checkpoint t, the record is s_t = Φθ_t — but it is
    computed as a running sum, s_0 = Φθ_0 (float64) and s_t = s_{t−1} + Φδ_t with the exact update
    δ_t = θ_t − θ_{t−1}, projected in `config.projection_dtype` (float32 by default) and summed in
    float64. Sketching θ_t directly would need float64: in float32, Φθ_t − Φθ_{t−1} loses δ_t to
    cancellation once ‖δ‖/‖θ‖ ≲ 1e-4 (a relative error of ~1e-7·‖θ‖/‖δ‖ per sketch entry). δ_t is
    formed from the weights themselves (exact for fp16/bf16/fp32 weights), so the float32 sketch of
    δ_t is accurate to ~1e-6 of ‖δ_t‖ however small the update, and s_t − s_{t−1} recovers it from
    the float64 sum. Records keep their meaning (Φθ_t, float64, [L, H, d]) and stay comparable with
    ones made by sketching θ_t in float64. The cost: s_t depends on s_{t−1}, so resuming needs the
    last record's sketch as well as its weights: `prime(weights, step, sketch=recorded_sketch)`
    (without `sketch=`, s_{t−1} is recomputed as Φθ_{t−1} in float64, which agrees to rounding but
    is not bit-identical). In exact mode the record is θ_t itself (compute dtype) and nothing is summed.

    The update norm ‖δ_t‖ is exact up to float32 rounding of 256-entry partial sums (relative error
    ~1e-7; the partial sums are added in float64).

    One fused pass per checkpoint over segments of `SEGMENT` columns (a [L·H, SEGMENT] float32 block,
    1.5 MB at 96 heads, stays in cache): the segment of every head's vector is assembled from the
    weights as stored (read and converted), differenced directly against the stored θ_{t−1} (one op
    reading it, no converted copy), normed, projected (CountSketch: one scatter-add of the columns
    into 2·d signed bins per block, cost independent of d; Gaussian: one matmul per Φ block, so each
    block is read once per checkpoint), and written over θ_{t−1}. The non-finite check is a separate
    read of the weights *before* the pass, so a corrupt checkpoint leaves the sketcher unchanged.
    Memory bound (L layers, H heads, P = head-vector length, d = sketch dim, b = bytes per element
    of the weights as given, T checkpoints so far), beyond the caller's weights:
      * the previous checkpoint's head vectors: L·H·P·b bytes (fp16 weights: 2 bytes);
      * two float32 [L·H, SEGMENT] work buffers and one [L·H, d] (CountSketch: 2·d) accumulator;
      * the running sum L·H·d·8 bytes; CountSketch hashes 20 bytes per column, Gaussian Φ d·P·4
        bytes, each cached within config.cache_bytes (regenerated per checkpoint beyond it: a
        Gaussian block of 16384×100 costs ~12 ms to draw);
      * history (if keep_history): T·L·H·(d+1)·8 bytes; in exact mode d = P, so the history is the
        whole per-head trajectory: use exact mode only for toy models.
    Pythia-1B-like (16 layers, 8 heads, d_model 2048, d_head 256 → P = 2.1M, fp16), default
    CountSketch d = 500: 537 MB of previous vectors, 2 × 2 MB of work buffers, 42 MB of hashes,
    history ≈ 0.5 MB per checkpoint. Speed and the comparison with the floor (read θ_t once, one pass
    over θ_{t−1}) and with booting a bridge per checkpoint: benchmarks/bench_extraction.py.
    """

    def __init__(self, config: SpectralConfig | None = None, *, keep_history: bool = True) -> None:
        self.config = config or SpectralConfig()
        self.keep_history = keep_history
        self.projector: GaussianSketch | CountSketch | ExactProjector | None = None
        self._prev: Tensor | None = None  # [L, H, P] in the dtype the weights came in
        self._prev_step: int | None = None
        self._sum: Tensor | None = None  # s_{t−1} [L, H, d] float64 (sketch mode)
        self._increment: Tensor | None = None  # the last Φδ_t [L, H, d] float64
        self._buf: tuple[Tensor, Tensor] | None = None  # [L·H, SEGMENT] work buffers (θ_t, δ_t)
        self._steps: list[int] = []
        self._sketches: list[Tensor] = []
        self._norms: list[Tensor] = []

    # -- input handling
    def _open(self, weights, step: int) -> _Checkpoint:
        ck = _Checkpoint(weights, step)
        if self._prev is not None and ck.shape != tuple(self._prev.shape):
            raise ValueError(f"step {step}: head vectors have shape {ck.shape} but earlier checkpoints "
                             f"had {tuple(self._prev.shape)}; a series must keep one architecture")
        if self._prev_step is not None and step <= self._prev_step:
            raise ValueError(f"step {step} is not after the previous step {self._prev_step}; "
                             "feed checkpoints oldest first")
        ck.check_finite()
        if self.projector is None:
            self.projector = make_projector(self.config, ck.shape[-1])
        elif self.projector.in_dim != ck.shape[-1]:
            raise ValueError(f"step {step}: P={ck.shape[-1]} differs from the series' P={self.projector.in_dim}")
        return ck

    def _buffers(self, ck: _Checkpoint) -> tuple[Tensor, Tensor]:
        rows = ck.shape[0] * ck.shape[1]
        if self._buf is None or self._buf[0].dtype != ck.work_dtype or self._buf[0].shape[0] != rows:
            self._buf = tuple(torch.empty(rows, SEGMENT, dtype=ck.work_dtype) for _ in range(2))
        return self._buf

    def _new_prev(self, ck: _Checkpoint) -> Tensor:
        """Where θ_t is stored for the next update, in the dtype it came in (so it is stored exactly):
        the old buffer when that dtype is the same (each segment is overwritten only after use)."""
        if self._prev is not None and self._prev.dtype == ck.dtype:
            return self._prev
        return torch.empty(ck.shape, dtype=ck.dtype)

    def _ingest(self, ck: _Checkpoint, *, record: bool, project_theta: bool) -> tuple[Tensor | None, Tensor]:
        """One pass over the columns: (sketch or None, norms); stores θ_t as the previous vectors.

        project_theta: return Φθ_t (float64) instead of s_{t−1} + Φδ_t (first checkpoint, priming).
        """
        n_layers, n_heads, p = ck.shape
        rows = n_layers * n_heads
        cur_buf, delta_buf = self._buffers(ck)
        new_prev = self._new_prev(ck)
        prev_flat = None if self._prev is None else self._prev.view(rows, p)
        new_flat = new_prev.view(rows, p)
        exact = isinstance(self.projector, ExactProjector)
        sq = torch.zeros(rows, dtype=torch.float64)
        want = record or project_theta
        if exact and want:
            out = torch.empty(rows, p, dtype=self.config.compute_dtype)
        elif want:
            pdt = torch.float64 if project_theta else self.projector.dtype
            out = torch.zeros(rows, self.projector.dim, dtype=pdt)
        for lo, hi in ck.segments():
            cur = ck.columns(lo, hi, cur_buf)
            if prev_flat is not None:
                delta = torch.sub(cur, prev_flat[:, lo:hi], out=delta_buf[:, : hi - lo])  # converts θ_{t−1}
                sq += _sq_norms(delta)
            if exact and want:
                out[:, lo:hi] = cur
            elif want and project_theta:
                out += self.projector.project(cur, col_offset=lo, dtype=torch.float64)
            elif want:
                out += self.projector.project(delta, col_offset=lo)
            new_flat[:, lo:hi] = cur
        self._prev = new_prev
        norm = sq.sqrt() if prev_flat is not None else torch.full((rows,), math.nan, dtype=torch.float64)
        norm = norm.view(n_layers, n_heads)
        if not want:
            return None, norm
        out = out.view(n_layers, n_heads, -1)
        if exact or project_theta:
            return out, norm
        self._increment = out.to(torch.float64)
        return self._sum + self._increment, norm

    def prime(self, weights, step: int, *, sketch: Tensor | None = None) -> None:
        """Set the previous checkpoint (for resuming) without recording it.

        `sketch`: that checkpoint's recorded `SketchStep.sketch`, so that the running sum continues
        bit-identically. Without it, Φθ is recomputed in float64 (equal up to rounding).
        """
        step = int(step)
        ck = self._open(weights, step)
        sketching = not isinstance(self.projector, ExactProjector)
        shape = (*ck.shape[:2], self.projector.dim)
        if sketch is not None and sketching and tuple(sketch.shape) != shape:
            raise ValueError(f"step {step}: the recorded sketch has shape {tuple(sketch.shape)} but this "
                             f"sketcher makes {shape}; resume with the settings the run was recorded with")
        self._prev, self._prev_step = None, None  # priming replaces any state
        theta, _ = self._ingest(ck, record=False, project_theta=sketching and sketch is None)
        self._prev_step = step
        if sketching:
            self._sum = sketch.to(torch.float64).clone() if sketch is not None else theta

    def update(self, weights, step: int) -> SketchStep:
        step = int(step)
        ck = self._open(weights, step)
        exact = isinstance(self.projector, ExactProjector)
        first = self._prev is None
        sketch, norm = self._ingest(ck, record=True, project_theta=not exact and first)
        self._prev_step = step
        increment = None
        if not exact:
            self._sum = sketch
            increment = sketch if first else self._increment
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
        record = ("theta_t (exact mode)" if exact else
                  f"s_t = s_(t-1) + P delta_t (P delta_t in {self.config.projection_dtype}, sum in float64), "
                  "s_0 = P theta_0 in float64")
        return {"config": self.config.to_dict(), "record": record,
                "projector": self.projector.provenance() if self.projector is not None else None}
