"""The fused CountSketch update pass: one walk over θ_t and θ_{t−1} per checkpoint (the default sketch's path).

For every element of every head's vector, in one compiled loop: read θ_t as stored (fp16/bf16 through
a 65,536-entry float32 table, float32/float64 directly), subtract θ_{t−1} (also as stored) in float64
(exact for fp16/bf16/float32 weights), and add the difference and its square into the head's signed
bin 2·h(j) + [s(j) < 0] (float64). Afterwards the sketch entry j is the +1 bin minus the −1 bin and
‖δ‖² is the sum of the squares over all bins. Nothing else touches the weights: no head-vector
assembly, no converted copies, no separate difference, norm or finite pass (a NaN/Inf in θ_t makes
its head's bins non-finite, which is checked on the small accumulator), and θ_{t−1} is the caller's
previous tensors themselves when they are handed over (`retain`), else one copy.

The loop runs over each part (W_Q, W_K, W_V, W_O; or a whole [L, H, P] tensor) in the *canonical*
order (layer, head, then the head vector's columns in increasing order), whatever the memory layout
of the tensors (the lazy reader's views are strided: NeoX's fused QKV rows are interleaved per head),
so every bin receives its terms in the same order: the records are bit-identical for any layout,
stored dtype, split of the series, process or executor. A K/V part (grouped-query attention) is added
to each query head of its group as it is read, so the per-head order equals that of the expanded
head vectors.

Why numba: the scatter into d signed bins cannot be expressed as a few vectorised torch ops without
walking the data again (torch's `index_add_` along the columns costs one dispatch per column; the
profile had the CountSketch projection at ~40% of the update, barely cheaper than the dense Gaussian
matmul), and the fused loop is what brings the update to the floor (benchmarks/bench_extraction.py).
The kernels are compiled once per dtype combination and cached on disk (`cache=True`).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from numba import types
from numba.extending import overload
from torch import Tensor

#: fp16 / bf16 bit pattern -> float32 value (exact), indexed by the stored uint16
_LUTS = {
    torch.float16: np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32),
    torch.bfloat16: (np.arange(65536, dtype=np.uint32) << 16).view(np.float32),
}
_NO_LUT = np.zeros(1, dtype=np.float32)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _value(lut, v):  # the float64 value of one stored element (typed by the overload below)
    raise NotImplementedError


@overload(_value, inline="always")
def _value_impl(lut, v):
    if isinstance(v, types.Integer):  # fp16/bf16 bits
        return lambda lut, v: np.float64(lut[v])
    return lambda lut, v: np.float64(v)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _scatter_part(cur, c_off, cs, lut_c, prev, p_off, ps, lut_p, has_prev, n_layers, n_groups, n_a, n_b,
                  per_group, bins2, col0, acc):  # pragma: no cover (compiled)
    """acc[l·H + h, k] += δ, acc[l·H + h, k + 1] += δ² (k = bins2[column] = 2·bin) for every element of
    one part [L, G, A, B] (element (l, g, a, b) at cur[c_off + l·cs[0] + g·cs[1] + a·cs[2] + b·cs[3]],
    column col0 + a·B + b, heads h = g·per_group .. g·per_group + per_group − 1); δ = θ_t − θ_{t−1}
    (θ_t when not has_prev). Indices are unsigned: no negative-index wraparound in the inner loop."""
    n_heads = n_groups * per_group
    c0, c1, c2, c3 = np.uint64(cs[0]), np.uint64(cs[1]), np.uint64(cs[2]), np.uint64(cs[3])
    p0, p1, p2, p3 = np.uint64(ps[0]), np.uint64(ps[1]), np.uint64(ps[2]), np.uint64(ps[3])
    one = np.uint32(1)
    for layer in range(n_layers):
        for g in range(n_groups):
            h0 = layer * n_heads + g * per_group
            row = acc[h0]
            for a in range(n_a):
                ua = np.uint64(a)
                cb = np.uint64(c_off) + np.uint64(layer) * c0 + np.uint64(g) * c1 + ua * c2
                pb = np.uint64(p_off) + np.uint64(layer) * p0 + np.uint64(g) * p1 + ua * p2
                kb = np.uint64(col0) + ua * np.uint64(n_b)
                for b in range(n_b):
                    ub = np.uint64(b)
                    x = _value(lut_c, cur[cb + ub * c3])
                    if has_prev:
                        x -= _value(lut_p, prev[pb + ub * p3])
                    k = bins2[kb + ub]
                    if per_group == 1:  # the common case, kept free of the inner loop
                        row[k] += x
                        row[k + one] += x * x
                    else:
                        for h in range(h0, h0 + per_group):
                            acc[h, k] += x
                            acc[h, k + one] += x * x


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _finish(acc, out, sq):  # pragma: no cover (compiled)
    """out[r, j] = bin(+1) − bin(−1) of row j; sq[r] = Σ of the squares over the bins, in bin order."""
    for r in range(acc.shape[0]):
        s = 0.0
        for j in range(out.shape[1]):
            out[r, j] = acc[r, 4 * j] - acc[r, 4 * j + 2]
            s += acc[r, 4 * j + 1]
            s += acc[r, 4 * j + 3]
        sq[r] = s


Part = tuple[Tensor, int]  # ([L, G, A, B] view, first column of the part in the head vector)


def head_parts(weights) -> list[Part]:
    """The parts of one checkpoint's head vectors, as views (no copy): W_Q, W_K, W_V, W_O of a
    `HeadWeights` at columns 0, n, 2n, 3n (n = d_model·d_head; K/V with their own number of heads), or
    an [L, H, P] tensor as one part [L, H, 1, P]."""
    if isinstance(weights, Tensor):
        return [(weights.unsqueeze(2), 0)]
    n = weights.d_model * weights.d_head
    return [(t, i * n) for i, t in enumerate((weights.W_Q, weights.W_K, weights.W_V, weights.W_O))]


def parts_layout(parts: list[Part]) -> tuple:
    """What must agree between θ_t and θ_{t−1} for a part-by-part difference: shapes and columns."""
    return tuple((tuple(t.shape), col) for t, col in parts)


def as_vectors(parts: list[Part], n_heads: int) -> Tensor:
    """The [L, H, P] head vectors of `parts` (a copy; for a series that mixes input kinds)."""
    dtype = parts[0][0].dtype
    for t, _ in parts:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.cat([t.repeat_interleave(n_heads // t.shape[1], dim=1).flatten(2).to(dtype) for t, _ in parts], -1)


def _flat(t: Tensor) -> tuple[np.ndarray, int, tuple[int, ...], np.ndarray]:
    """(the whole storage as a 1-D numpy array, offset, strides, value table) of a float tensor."""
    if t.dtype not in _FLOATS:
        raise ValueError(f"head weights must be float16/bfloat16/float32/float64; got {t.dtype}")
    t = t.detach()
    n = t.untyped_storage().nbytes() // t.element_size()
    whole = torch.as_strided(t, (n,), (1,), 0)
    if t.dtype in _LUTS:
        return whole.view(torch.int16).numpy().view(np.uint16), t.storage_offset(), tuple(t.stride()), _LUTS[t.dtype]
    return whole.numpy(), t.storage_offset(), tuple(t.stride()), _NO_LUT


def fused_update(parts: list[Part], prev: list[Part] | None, bins2: np.ndarray, n_heads: int,
                 dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """(S·x [L, H, d] float64, ‖x‖² [L, H] float64, finite [L, H] bool) with x = θ_t − θ_{t−1}
    (θ_t when prev is None), S the CountSketch whose signed bins are `bins2` / 2 ([P] uint32, 2·bin with
    bin = 2·h + [s < 0]: the column of the bin's value in an accumulator row of (value, square) pairs).

    `prev` must have the parts' layout (`parts_layout`); each part's strides may differ. A head whose
    θ_t holds a NaN/Inf has finite = False (its sketch and norm are then meaningless)."""
    n_layers = parts[0][0].shape[0]
    acc = np.zeros((n_layers * n_heads, 4 * dim), dtype=np.float64)
    for i, (t, col0) in enumerate(parts):
        _, n_groups, n_a, n_b = t.shape
        if t.numel() == 0:
            continue
        cur, c_off, cs, lut_c = _flat(t)
        if prev is None:
            pv, p_off, ps, lut_p = cur, c_off, cs, lut_c
        else:
            pv, p_off, ps, lut_p = _flat(prev[i][0])
        _scatter_part(cur, c_off, cs, lut_c, pv, p_off, ps, lut_p, prev is not None, n_layers, n_groups, n_a,
                      n_b, n_heads // n_groups, bins2, col0, acc)
    out = np.empty((n_layers * n_heads, dim), dtype=np.float64)
    sq = np.empty(n_layers * n_heads, dtype=np.float64)
    _finish(acc, out, sq)
    finite = torch.from_numpy(np.isfinite(acc).all(-1)).view(n_layers, n_heads)
    return torch.from_numpy(out).view(n_layers, n_heads, dim), torch.from_numpy(sq).view(n_layers, n_heads), finite


class FusedPass:
    """θ_{t−1} (as parts, in the layout and dtype they came in) and the fused CountSketch pass over θ_t."""

    def __init__(self, projector) -> None:
        self.dim = projector.dim
        self.bins2 = (2 * projector.signed_bins()).astype(np.uint32)  # [P], built once per series
        self.prev: list[Part] | None = None

    @property
    def has_prev(self) -> bool:
        return self.prev is not None

    def reset(self) -> None:
        self.prev = None

    def state_bytes(self) -> dict:
        held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t, _ in self.prev or ()}
        return {"prev": sum(held.values()), "work": self.bins2.nbytes}

    def ingest(self, weights, ck, *, want: bool, project_theta: bool,
               retain: bool = False) -> tuple[Tensor | None, Tensor]:
        """(out or None, norms [L, H]) for checkpoint `ck` (a validated SegmentedCheckpoint of `weights`):
        out = Sθ_t (project_theta) or Sδ_t, float64. θ_t becomes θ_{t−1}: the given tensors themselves
        when `retain` (the caller must not modify them afterwards), else a copy. A NaN/Inf in θ_t raises
        before anything is changed."""
        n_layers, n_heads, _ = ck.shape
        parts, prev = head_parts(weights), self.prev
        if prev is not None and parts_layout(prev) != parts_layout(parts):  # a series mixing input kinds
            parts = [(as_vectors(parts, n_heads).unsqueeze(2), 0)]
            prev = [(as_vectors(prev, n_heads).unsqueeze(2), 0)]
        if want:
            out, sq, finite = fused_update(parts, None if project_theta else prev, self.bins2, n_heads, self.dim)
            if not bool(finite.all()):
                layer, head = divmod(int((~finite).flatten().nonzero()[0, 0]), n_heads)
                raise ValueError(f"step {ck.step}: NaN/inf weights in layer {layer} head {head}; the checkpoint is "
                                 "corrupt or diverged")
        else:  # priming with a recorded sketch: only θ_t is kept
            ck.check_finite()
            out = sq = None
        self.prev = parts if retain else [(t.clone(), col) for t, col in parts]
        if sq is None or project_theta:
            norm = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        else:
            norm = sq.sqrt()
        return (out if want else None), norm
