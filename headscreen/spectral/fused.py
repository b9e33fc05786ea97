"""The fused CountSketch update pass: one walk over θ_t and θ_{t−1} per checkpoint (the default sketch's path).

For every element of every head's vector, in one compiled loop: read θ_t as stored (fp16/bf16 bits
turned into their float64 value with integer ops and a bit cast, exact; float32/float64 directly),
subtract θ_{t−1} (also as stored) in float64 (exact for fp16 weights, and for bf16/float32 ones whose
exponents differ by less than ~29), add the difference into the head's signed bin 2·h(j) + [s(j) < 0]
and its square into the head's running ‖δ‖² (both float64). Afterwards the sketch entry j is the +1
bin minus the −1 bin. Nothing else touches the weights: no head-vector assembly, no converted
copies, no separate difference, norm or finite pass (a NaN/Inf in θ_t makes its head's sums
non-finite, which is checked on the small accumulator), and θ_{t−1} is the caller's previous tensors
themselves when they are handed over (`retain`), else one copy.

Each part (W_Q, W_K, W_V, W_O; or a whole [L, H, P] tensor) is walked layer by layer, one kernel call
per layer (a `LayeredHeadWeights`, the lazy reader's views of the mapped files, is never stacked; the
threaded kernel splits a layer's heads, or K/V groups, across threads), each layer in the memory order
of θ_t (the lazy reader's views are strided: NeoX's fused QKV rows are interleaved per head), with the
bins looked up in a copy of the bin table permuted into that order, so every read is sequential. The
order of the float64 sums follows the element order: the records are bit-identical for the same
layout, whatever the stored dtype (every run, split of the series, process or executor reads a
checkpoint the same way), and agree to rounding (~1e-16 relative) between layouts. A K/V part
(grouped-query attention) is added to each query head of its group as it is read.

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
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload
from torch import Tensor

from .segments import PARTS, UpdatePass

#: half-precision tensors are handed to the compiled loop as their bit patterns, fp16 as uint16 and bf16
#: as int16, so that the loop is compiled once per kind with the right conversion (no branch per element)
_BITS = {torch.float16: np.uint16, torch.bfloat16: np.int16}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TWO_1008 = 2.0 ** 1008  # fp16 → float64 exponent rebias (1023 − 15)


@intrinsic
def _bitcast_f64(typingctx, bits):
    """The float64 whose IEEE bit pattern is the uint64 `bits`."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def _bitcast_f32(typingctx, bits):
    """The float32 whose IEEE bit pattern is the uint32 `bits`."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


def _value(v):  # the float64 value of one stored element, NaN for fp16 Inf/NaN (overload below)
    raise NotImplementedError


def _trusted(v):  # the same for an element known to be finite (θ_{t−1} was checked as θ_t)
    raise NotImplementedError


def _from_bits(checked: bool):
    def impl(v):
        if isinstance(v, types.Integer) and v.signed:  # bf16 bits: the top half of a float32 (Inf/NaN kept)
            return lambda v: np.float64(_bitcast_f32(np.uint32(np.uint64(np.uint16(v)) << np.uint64(16))))
        if isinstance(v, types.Integer):  # fp16 bits: exact, no table
            def from_fp16(v):
                u = np.uint64(v)
                if checked and (u & np.uint64(0x7C00)) == np.uint64(0x7C00):  # Inf/NaN
                    return np.nan
                # sign, exponent and mantissa moved to float64's places; the product rebiases the
                # exponent (zero and subnormals included)
                mag = (u & np.uint64(0x7FFF)) << np.uint64(42)
                return _bitcast_f64(((u & np.uint64(0x8000)) << np.uint64(48)) | mag) * _TWO_1008
            return from_fp16
        return lambda v: np.float64(v)
    return impl


overload(_value, inline="always")(_from_bits(True))
overload(_trusted, inline="always")(_from_bits(False))


@nb.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _scatter_group(layer, g, cur, c_off, cs, prev, p_off, ps, has_prev, n_heads, n_a, n_b, per_group, bins, acc,
                   sq):  # pragma: no cover (compiled)
    """The heads h0 .. h0 + per_group − 1 (h0 = layer·H + g·per_group) of one part: see _scatter_part.
    Writes only acc[h] and sq[h] of those heads, so (layer, g) pairs may run on different threads."""
    c0, c1, c2, c3 = np.uint64(cs[0]), np.uint64(cs[1]), np.uint64(cs[2]), np.uint64(cs[3])
    p0, p1, p2, p3 = np.uint64(ps[0]), np.uint64(ps[1]), np.uint64(ps[2]), np.uint64(ps[3])
    unit = cs[3] == 1 and ps[3] == 1
    buf = np.empty(n_b, dtype=np.float64)  # δ of one run of the inner dim
    h0 = layer * n_heads + g * per_group
    row = acc[h0]
    s = sq[h0]  # one running sum per head, in element order (per_group == 1)
    for a in range(n_a):
        ua = np.uint64(a)
        cb = np.uint64(c_off) + np.uint64(layer) * c0 + np.uint64(g) * c1 + ua * c2
        pb = np.uint64(p_off) + np.uint64(layer) * p0 + np.uint64(g) * p1 + ua * p2
        kb = ua * np.uint64(n_b)
        # 1. convert and difference a run (contiguous runs: a loop the compiler vectorises)
        if unit:
            cur_run, prev_run = cur[cb:cb + np.uint64(n_b)], prev[pb:pb + np.uint64(n_b)]
            if has_prev:
                for b in range(n_b):
                    buf[b] = _value(cur_run[b]) - _trusted(prev_run[b])
            else:
                for b in range(n_b):
                    buf[b] = _value(cur_run[b])
        else:
            for b in range(n_b):
                ub = np.uint64(b)
                x = _value(cur[cb + ub * c3])
                if has_prev:
                    x -= _trusted(prev[pb + ub * p3])
                buf[b] = x
        # 2. scatter into the bins and add the squares
        if per_group == 1:  # the common case, kept free of the inner loop
            for b in range(n_b):
                x = buf[b]
                row[bins[kb + np.uint64(b)]] += x
                s += x * x
        else:
            for b in range(n_b):
                x = buf[b]
                for h in range(h0, h0 + per_group):
                    acc[h, bins[kb + np.uint64(b)]] += x
                    sq[h] += x * x
    if per_group == 1:
        sq[h0] = s


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _scatter_part(cur, c_off, cs, prev, p_off, ps, has_prev, n_layers, n_groups, n_a, n_b,
                  per_group, bins, acc, sq):  # pragma: no cover (compiled)
    """acc[l·H + h, bins[a·B + b]] += δ and sq[l·H + h] += δ² for every element (l, g, a, b) of one part
    [L, G, A, B] (at cur[c_off + l·cs[0] + g·cs[1] + a·cs[2] + b·cs[3]]), for the heads
    h = g·per_group .. g·per_group + per_group − 1; δ = θ_t − θ_{t−1} (θ_t when not has_prev), float64.
    Indices are unsigned: no negative-index wraparound in the inner loop."""
    n_heads = n_groups * per_group
    for layer in range(n_layers):
        for g in range(n_groups):
            _scatter_group(layer, g, cur, c_off, cs, prev, p_off, ps, has_prev, n_heads, n_a, n_b, per_group, bins,
                           acc, sq)


@nb.njit(cache=True, nogil=True, boundscheck=False, parallel=True)
def _scatter_part_threads(cur, c_off, cs, prev, p_off, ps, has_prev, n_layers, n_groups, n_a, n_b,
                          per_group, bins, acc, sq):  # pragma: no cover (compiled)
    """_scatter_part with the (layer, group) pairs split across numba's threads. Each pair's sums run on
    one thread in the same element order as the serial loop: the records are bit-identical."""
    n_heads = n_groups * per_group
    for lg in nb.prange(n_layers * n_groups):
        _scatter_group(lg // n_groups, lg % n_groups, cur, c_off, cs, prev, p_off, ps, has_prev, n_heads, n_a, n_b,
                       per_group, bins, acc, sq)


def pass_threads() -> int:
    """Threads of the fused pass: torch's intra-op thread count (the CLI's --threads), capped by numba's
    pool. 1 runs the serial kernel."""
    return max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS))


Part = tuple[tuple[Tensor, ...], int]  # (per-layer [G, A, B] views, first column of the part in the head vector)


def head_parts(weights) -> list[Part]:
    """The parts of one checkpoint's head vectors, per layer, as views (no copy): W_Q, W_K, W_V, W_O at
    columns 0, n, 2n, 3n (n = d_model·d_head; K/V with their own number of heads) of a `HeadWeights`,
    or of a `LayeredHeadWeights` (one record per layer, walked without stacking), or an [L, H, P]
    tensor as one part [H, 1, P] per layer."""
    if isinstance(weights, Tensor):
        return [(tuple(weights.unsqueeze(2).unbind(0)), 0)]
    n = weights.d_model * weights.d_head
    layers = getattr(weights, "layers", None)
    if layers is not None:
        return [(tuple(getattr(lw, name)[0] for lw in layers), i * n) for i, name in enumerate(PARTS)]
    return [(tuple(getattr(weights, name).unbind(0)), i * n) for i, name in enumerate(PARTS)]


def parts_layout(parts: list[Part]) -> tuple:
    """What must agree between θ_t and θ_{t−1} for a part-by-part difference: layers, shapes and columns."""
    return tuple((len(ts), tuple(ts[0].shape), col) for ts, col in parts)


def as_vectors(parts: list[Part], n_heads: int) -> Tensor:
    """The [L, H, P] head vectors of `parts` (a copy; for a series that mixes input kinds)."""
    dtype = parts[0][0][0].dtype
    for ts, _ in parts:
        dtype = torch.promote_types(dtype, ts[0].dtype)
    return torch.cat([torch.stack(ts).repeat_interleave(n_heads // ts[0].shape[0], dim=1).flatten(2).to(dtype)
                      for ts, _ in parts], -1)


def _as_parts(vectors: Tensor) -> list[Part]:
    return [(tuple(vectors.unsqueeze(2).unbind(0)), 0)]


def _flat(t: Tensor) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """(the whole storage as a 1-D numpy array, offset, strides) of a float tensor (half precision as
    bit patterns, see _BITS)."""
    if t.dtype not in _FLOATS:
        raise ValueError(f"head weights must be float16/bfloat16/float32/float64; got {t.dtype}")
    t = t.detach()
    n = t.untyped_storage().nbytes() // t.element_size()
    whole = torch.as_strided(t, (n,), (1,), 0)
    if t.dtype in _BITS:
        return whole.view(torch.int16).numpy().view(_BITS[t.dtype]), t.storage_offset(), tuple(t.stride())
    return whole.numpy(), t.storage_offset(), tuple(t.stride())


def _loop_order(t: Tensor, prev: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
    """The part (and θ_{t−1}'s) as [L, G, outer, inner] with the inner dim the one of smaller stride in
    θ_t, so the loop walks memory in order; True when (a, b) were swapped to get there."""
    if t.shape[2] > 1 and t.shape[3] > 1 and t.stride(2) < t.stride(3):
        return t.transpose(2, 3), None if prev is None else prev.transpose(2, 3), True
    return t, prev, False


def fused_update(parts: list[Part], prev: list[Part] | None, bins: np.ndarray, n_heads: int,
                 dim: int, tables: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(S·x [L, H, d] float64, ‖x‖² [L, H] float64, finite [L, H] bool) with x = θ_t − θ_{t−1}
    (θ_t when prev is None), S the CountSketch whose signed bins are `bins` ([P] uint32, 2·h + [s < 0]:
    the column's accumulator bin; the sketch entry j is bin 2j minus bin 2j + 1).

    Each part is walked in θ_t's memory order (so every read is sequential whatever the layout; the
    bins are looked up in a copy of `bins` permuted into that order, kept in `tables`). The order of
    the float64 sums therefore follows the layout: records are bit-identical for the same layout
    (every run, split and executor reads a checkpoint the same way) and agree to rounding (~1e-16
    relative) across layouts. `prev` must have the parts' layout (`parts_layout`); its strides may
    differ. A head whose θ_t holds a NaN/Inf has finite = False (its sketch and norm are then
    meaningless)."""
    tables = {} if tables is None else tables
    n_layers = len(parts[0][0])
    acc = np.zeros((n_layers * n_heads, 2 * dim), dtype=np.float64)
    sq = np.zeros(n_layers * n_heads, dtype=np.float64)
    threads = pass_threads()
    for i, (layers, col0) in enumerate(parts):
        for layer, t in enumerate(layers):
            if t.numel() == 0:
                continue
            rows = slice(layer * n_heads, (layer + 1) * n_heads)  # this layer's heads
            t, pt, swapped = _loop_order(t.unsqueeze(0), None if prev is None else prev[i][0][layer].unsqueeze(0))
            _, n_groups, n_outer, n_inner = t.shape
            key = (col0, n_outer, n_inner, swapped)
            if key not in tables:  # the bins of this part's columns in loop order
                cols = bins[col0: col0 + n_outer * n_inner].reshape((n_inner, n_outer) if swapped else (n_outer, n_inner))
                tables[key] = np.ascontiguousarray(cols.T if swapped else cols).reshape(-1)
            cur, c_off, cs = _flat(t)
            pv, p_off, ps = (cur, c_off, cs) if pt is None else _flat(pt)
            kernel = _scatter_part if threads == 1 or n_groups == 1 else _scatter_part_threads
            if kernel is _scatter_part_threads:
                nb.set_num_threads(threads)
            kernel(cur, c_off, cs, pv, p_off, ps, pt is not None, 1, n_groups, n_outer, n_inner,
                   n_heads // n_groups, tables[key], acc[rows], sq[rows])
    out = acc[:, 0::2] - acc[:, 1::2]
    finite = torch.from_numpy(np.isfinite(acc).all(-1) & np.isfinite(sq)).view(n_layers, n_heads)
    return torch.from_numpy(out).view(n_layers, n_heads, dim), torch.from_numpy(sq).view(n_layers, n_heads), finite


class FusedPass(UpdatePass):
    """θ_{t−1} (as parts, in the layout and dtype they came in) and the fused CountSketch pass over θ_t."""

    def __init__(self, projector) -> None:
        self.dim = projector.dim
        self.bins = projector.signed_bins().astype(np.uint32)  # [P], built once per series
        self.tables: dict = {}  # bins permuted into each part's loop order (4 bytes per column each)
        self.prev: list[Part] | None = None

    def state_bytes(self) -> dict:
        held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for ts, _ in self.prev or () for t in ts}
        return {"prev": sum(held.values()), "work": self.bins.nbytes + sum(t.nbytes for t in self.tables.values())}

    def ingest(self, weights, ck, *, want: bool, project_theta: bool,
               retain: bool = False) -> tuple[Tensor | None, Tensor]:
        """(out or None, norms [L, H]) for checkpoint `ck` (a validated SegmentedCheckpoint of `weights`):
        out = Sθ_t (project_theta) or Sδ_t, float64. θ_t becomes θ_{t−1}: the given tensors themselves
        when `retain` (the caller must not modify them afterwards), else a copy. A NaN/Inf in θ_t raises
        before anything is changed."""
        n_layers, n_heads, _ = ck.shape
        parts, prev = head_parts(weights), self.prev
        if prev is not None and parts_layout(prev) != parts_layout(parts):  # a series mixing input kinds
            parts, prev = _as_parts(as_vectors(parts, n_heads)), _as_parts(as_vectors(prev, n_heads))
        if want:
            out, sq, finite = fused_update(parts, None if project_theta else prev, self.bins, n_heads, self.dim,
                                          self.tables)
            if not bool(finite.all()):
                layer, head = divmod(int((~finite).flatten().nonzero()[0, 0]), n_heads)
                raise ValueError(f"step {ck.step}: NaN/inf weights in layer {layer} head {head}; the checkpoint is "
                                 "corrupt or diverged")
        else:  # priming with a recorded sketch: only θ_t is kept
            ck.check_finite()
            out = sq = None
        self.prev = parts if retain else [(tuple(t.clone() for t in ts), col) for ts, col in parts]
        if sq is None or project_theta:
            norm = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        else:
            norm = sq.sqrt()
        return (out if want else None), norm
