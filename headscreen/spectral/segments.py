"""The segmented update pass of the Gaussian sketch and of exact mode (the CountSketch default has its own
fused pass, fused.py).

One pass per checkpoint over segments of `SEGMENT` columns (a [L·H, SEGMENT] float32 block, 1.5 MB at
96 heads, stays in cache): the segment of every head's vector is assembled from the weights as given,
differenced against the stored θ_{t−1} (one op reading it, no converted copy), normed, projected (one
matmul per Φ block, so each block is read once per checkpoint; exact mode: copied) and written over
θ_{t−1}, which is kept as [L, H, P] in the dtype the weights came in.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .sketch import ExactProjector

#: the head weights' parts, in the order of the head vector (HeadWeights.head_vectors)
PARTS = ("W_Q", "W_K", "W_V", "W_O")
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


class SegmentedCheckpoint:
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
            self.tensors = (weights,)
        elif getattr(weights, "layers", None) is not None or (hasattr(weights, "head_vectors")
                                                               and hasattr(weights, "W_Q")):
            self._weights = weights
            # a LayeredHeadWeights is checked on its first layer: `tensors` would stack it (a copy that
            # only the segmented pass and the finite check need; the fused pass walks the layers)
            first = weights.layers[0] if getattr(weights, "layers", None) is not None else weights
            kinds = (first.W_Q, first.W_K, first.W_V, first.W_O)
            for t in kinds:
                if not t.is_floating_point():
                    raise ValueError(f"step {step}: head weights must be floating point; got {t.dtype}")
            n_layers, n_heads = weights.n_layers, weights.n_heads
            n = weights.d_model * weights.d_head
            self.shape = (n_layers, n_heads, 4 * n)
            self.dtype = functools.reduce(torch.promote_types, [t.dtype for t in kinds])
        else:
            raise TypeError(f"step {step}: expected HeadWeights or an [L, H, P] tensor; got {type(weights).__name__}")
        # vectors are formed in float32 (float64 stays float64): exact for fp16/bf16/fp32 weights
        self.work_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32

    @functools.cached_property
    def tensors(self) -> tuple[Tensor, ...]:
        """(W_Q, W_K, W_V, W_O) [L, G, ·, ·] of head weights (set in __init__ for an [L, H, P] tensor)."""
        w = self._weights
        return (w.W_Q, w.W_K, w.W_V, w.W_O)

    @functools.cached_property
    def parts(self) -> list[tuple[int, int, Tensor]]:
        """(first column, width, [L, G, width]) per tensor; made on first use (a reshape of a strided
        view copies it, which the fused pass never needs)."""
        n_layers, _, p = self.shape
        width = p // len(self.tensors)
        return [(i * width, width, t.reshape(n_layers, t.shape[1], width)) for i, t in enumerate(self.tensors)]

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
        # a sum is non-finite if any entry is (or if it overflows: then the exact check decides); a
        # LayeredHeadWeights is checked layer by layer (stacked only to name a bad head)
        layers = getattr(getattr(self, "_weights", None), "layers", None)
        quick = self.tensors if layers is None else [getattr(lw, n) for lw in layers for n in PARTS]
        if all(torch.isfinite(t.sum()).item() for t in quick):
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


class UpdatePass:
    """What both update passes share: θ_{t−1} is held in `prev` (None before the first checkpoint)."""

    prev = None

    @property
    def has_prev(self) -> bool:
        return self.prev is not None

    def reset(self) -> None:
        self.prev = None


class SegmentPass(UpdatePass):
    """θ_{t−1} ([L, H, P], as given) and the segmented pass over θ_t: for the Gaussian and exact projectors."""

    def __init__(self, projector, config) -> None:
        self.projector, self.config = projector, config
        self.prev: Tensor | None = None  # [L, H, P] in the dtype the weights came in
        self._buf: tuple[Tensor, Tensor] | None = None  # [L·H, SEGMENT] work buffers (θ_t, δ_t)

    def state_bytes(self) -> dict:
        return {"prev": 0 if self.prev is None else self.prev.numel() * self.prev.element_size(),
                "work": sum(b.numel() * b.element_size() for b in self._buf or ())}

    def _buffers(self, ck: SegmentedCheckpoint) -> tuple[Tensor, Tensor]:
        rows = ck.shape[0] * ck.shape[1]
        if self._buf is None or self._buf[0].dtype != ck.work_dtype or self._buf[0].shape[0] != rows:
            self._buf = tuple(torch.empty(rows, SEGMENT, dtype=ck.work_dtype) for _ in range(2))
        return self._buf

    def _new_prev(self, ck: SegmentedCheckpoint) -> Tensor:
        """Where θ_t is stored for the next update, in the dtype it came in (so it is stored exactly):
        the old buffer when that dtype is the same (each segment is overwritten only after use)."""
        if self.prev is not None and self.prev.dtype == ck.dtype:
            return self.prev
        return torch.empty(ck.shape, dtype=ck.dtype)

    def ingest(self, ck: SegmentedCheckpoint, *, want: bool, project_theta: bool,
               retain: bool = False) -> tuple[Tensor | None, Tensor]:
        """(out or None, norms [L, H]); stores θ_t as the previous vectors (always a copy: `retain` is
        for the fused pass). out: Φθ_t in float64 (project_theta), else Φδ_t in float64; θ_t itself in
        exact mode. The non-finite check reads the weights before anything is changed."""
        ck.check_finite()
        n_layers, n_heads, p = ck.shape
        rows = n_layers * n_heads
        cur_buf, delta_buf = self._buffers(ck)
        new_prev = self._new_prev(ck)
        prev_flat = None if self.prev is None else self.prev.view(rows, p)
        new_flat = new_prev.view(rows, p)
        exact = isinstance(self.projector, ExactProjector)
        sq = torch.zeros(rows, dtype=torch.float64)
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
        self.prev = new_prev
        norm = sq.sqrt() if prev_flat is not None else torch.full((rows,), math.nan, dtype=torch.float64)
        norm = norm.view(n_layers, n_heads)
        if not want:
            return None, norm
        out = out.view(n_layers, n_heads, -1)
        return (out if exact or project_theta else out.to(torch.float64)), norm
