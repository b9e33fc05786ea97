"""The fused CountSketch update pass: one walk over θ_t and θ_{t−1} per checkpoint (the default sketch's path).

For every element of every head's vector, in one compiled loop: read θ_t as stored (fp16/bf16 bits
turned into their float64 value with integer ops and a bit cast, exact and without a branch;
float32/float64 directly), subtract θ_{t−1} (also as stored) in float64 (exact for fp16 weights, and
for bf16/float32 ones whose exponents differ by less than ~29), add the difference into the head's
signed bin 2·h(j) + [s(j) < 0] and its square into the head's running ‖δ‖² (both float64). Afterwards
the sketch entry j is the +1 bin minus the −1 bin. Nothing else touches the weights: no head-vector
assembly, no converted copies, no separate difference, norm or finite pass (a NaN/Inf in θ_t makes its
head's sums non-finite, which is checked on the small accumulator), and θ_{t−1} is the caller's previous
tensors themselves when they are handed over (`retain`), else one copy.

Heads are walked LANES at a time: their runs are converted side by side, each column's bin is looked up
once for all of them and added into a transposed [bins, LANES] accumulator, and the LANES ‖δ‖² sums are
independent chains (one head alone is bound by the latency of its one running sum); the LANES adds into
a bin are one 4-wide vector add (`_add4`: the same IEEE add in every lane). Each contiguous run is
prefetched a page ahead (`_prefetch`), since the hardware prefetcher stops at page boundaries and the
pass walks 2 × LANES streams at once. Each head's sums still run over its own elements in its own order,
so the records are those of one head at a time, bit for bit (tests/test_fused_sketch.py checks them
against a plain loop; benchmarks/bench_scatter.py times both).

Each part (W_Q, W_K, W_V, W_O; or a whole [L, H, P] tensor) is walked layer by layer, one kernel call
per layer (a `LayeredHeadWeights`, the lazy reader's views of the mapped files, is never stacked; the
threaded kernel splits a layer's blocks of LANES heads across threads), each layer in the memory order
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
from numba.core import cgutils
from numba.extending import intrinsic, overload
from torch import Tensor

from headscreen.series.weights import LayeredHeadWeights

from .parts import Part, as_parts, as_vectors, flat_storage, head_parts, loop_order, parts_layout
from .segments import UpdatePass

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


@intrinsic
def _prefetch(typingctx, arr, idx):
    """A read prefetch of arr's element `idx` into every cache level (a hint: no fault, no result)."""
    if not (isinstance(arr, types.Array) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())  # one declaration for all
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data cache
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@intrinsic
def _add4(typingctx, acc, k, x0, x1, x2, x3):
    """acc[4k : 4k + 4] += (x0, x1, x2, x3) as one 4-wide load, add and store (acc: 1-D float64). Each lane
    is the same IEEE float64 add as the scalar `acc[4k + i] += xi`: the sums are bit for bit the same."""
    if not (isinstance(acc, types.Array) and acc.dtype == types.float64 and acc.ndim == 1
            and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arr, kk, *xs = args
        data = context.make_array(signature.args[0])(context, builder, arr).data
        vec = ir.VectorType(ir.DoubleType(), 4)
        ptr = builder.bitcast(builder.gep(data, [builder.mul(kk, ir.Constant(kk.type, 4))]), vec.as_pointer())
        x = ir.Constant(vec, ir.Undefined)
        for i, xi in enumerate(xs):
            x = builder.insert_element(x, xi, ir.Constant(ir.IntType(32), i))
        builder.store(builder.fadd(builder.load(ptr, align=8), x), ptr, align=8)
        return context.get_dummy_value()

    return types.void(acc, k, types.float64, types.float64, types.float64, types.float64), codegen


def _exact(v):  # the float64 value of one stored element (overload below); fp16 Inf/NaN give finite junk
    raise NotImplementedError


def _special(v):  # 1 (uint64) for an fp16 Inf/NaN bit pattern, else 0; 0 for the other kinds (overload below)
    raise NotImplementedError


@overload(_exact, inline="always")
def _exact_impl(v):
    if isinstance(v, types.Integer) and v.signed:  # bf16 bits: the top half of a float32 (Inf/NaN kept)
        return lambda v: np.float64(_bitcast_f32(np.uint32(np.uint64(np.uint16(v)) << np.uint64(16))))
    if isinstance(v, types.Integer):  # fp16 bits: exact, no table, no branch
        def from_fp16(v):
            u = np.uint64(v)
            # sign, exponent and mantissa moved to float64's places; the product rebiases the exponent
            # (zero and subnormals included). Inf/NaN (exponent 31) come out as finite values of 2^16 and
            # up: `_special` flags them
            mag = (u & np.uint64(0x7FFF)) << np.uint64(42)
            return _bitcast_f64(((u & np.uint64(0x8000)) << np.uint64(48)) | mag) * _TWO_1008
        return from_fp16
    return lambda v: np.float64(v)


@overload(_special, inline="always")
def _special_impl(v):
    if isinstance(v, types.Integer) and not v.signed:  # fp16: exponent bits all ones ⇔ (e + 0x400) reaches bit 15
        return lambda v: ((np.uint64(v) & np.uint64(0x7C00)) + np.uint64(0x0400)) >> np.uint64(15)
    return lambda v: np.uint64(0)


#: heads walked together by one kernel call: their runs are converted side by side and each column's bin is
#: looked up once for all of them; each head keeps its own float64 sums in its own element order (4: the
#: width of `_add4`, one 32-byte vector of float64)
LANES = 4
#: elements of a run converted at a time (bounds the work buffer to LANES × CHUNK float64)
CHUNK = 512
#: how far ahead of the chunk being converted each contiguous run of θ_t and θ_{t−1} is prefetched, in
#: elements (4 KiB of fp16: the next page, where the hardware prefetcher stops; benchmarks/bench_extraction.py)
AHEAD = 2048


@nb.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _convert_run(cur, cb, c3, prev, pb, p3, unit, has_prev, m, out):  # pragma: no cover (compiled)
    """out[:m] = δ of m elements of one run (θ_t at cur[cb + b·c3], θ_{t−1} at prev[pb + b·p3]), float64.
    An fp16 Inf/NaN in θ_t sets out[0] to NaN, so that its head's sums are not finite (the caller's check);
    θ_{t−1} was checked when it was θ_t. No branch per element: contiguous runs vectorise."""
    special = np.uint64(0)
    if unit:
        cur_run, prev_run = cur[cb:cb + np.uint64(m)], prev[pb:pb + np.uint64(m)]
        if has_prev:
            for b in range(m):
                v = cur_run[b]
                special |= _special(v)
                out[b] = _exact(v) - _exact(prev_run[b])
        else:
            for b in range(m):
                v = cur_run[b]
                special |= _special(v)
                out[b] = _exact(v)
    else:
        for b in range(m):
            ub = np.uint64(b)
            v = cur[cb + ub * c3]
            special |= _special(v)
            x = _exact(v)
            if has_prev:
                x -= _exact(prev[pb + ub * p3])
            out[b] = x
    if special:
        out[0] = np.nan


@nb.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _scatter_block(layer, blk, cur, c_off, cs, prev, p_off, ps, has_prev, n_heads, n_a, n_b, per_group, bins, acc,
                   sq):  # pragma: no cover (compiled)
    """The heads h0 .. h0 + LANES − 1 (h0 = blk·LANES, fewer at the end) of one layer's part, side by side:
    per column, one bin lookup and one read-modify-write of a LANES-wide row of a transposed accumulator,
    and LANES independent running ‖δ‖² sums (no serial chain through one sum). Each head's sums run over
    its elements in the same order as one head alone would: the records do not depend on LANES. Writes only
    acc[h] and sq[h] of these heads, so blocks may run on different threads."""
    h0 = blk * LANES
    nh = min(LANES, n_heads - h0)
    g_first = h0 // per_group
    n_rows = (h0 + nh - 1) // per_group - g_first + 1  # groups read by this block (<= nh)
    c0, c1, c2, c3 = np.uint64(cs[0]), np.uint64(cs[1]), np.uint64(cs[2]), np.uint64(cs[3])
    p0, p1, p2, p3 = np.uint64(ps[0]), np.uint64(ps[1]), np.uint64(ps[2]), np.uint64(ps[3])
    unit = cs[3] == 1 and ps[3] == 1
    n_cur, n_prev = np.uint64(cur.size), np.uint64(prev.size)
    line = max(1, 64 // cur.itemsize)  # elements per cache line
    buf = np.zeros((LANES + 1, CHUNK), dtype=np.float64)  # δ of each group's run; row LANES stays 0 (padding)
    rows = np.full(LANES, LANES, dtype=np.int64)  # the buf row each lane reads
    n_bins = acc.shape[1]
    acc_t = np.zeros((n_bins, LANES), dtype=np.float64)  # the block's bins, heads side by side
    acc_v = acc_t.reshape(n_bins * LANES)  # the same memory, flat, for _add4
    sums = np.zeros(LANES, dtype=np.float64)
    for j in range(nh):
        rows[j] = (h0 + j) // per_group - g_first
        acc_t[:, j] = acc[h0 + j]
        sums[j] = sq[h0 + j]
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    s0, s1, s2, s3 = sums[0], sums[1], sums[2], sums[3]
    for a in range(n_a):
        ua = np.uint64(a)
        for b0 in range(0, n_b, CHUNK):
            m = min(CHUNK, n_b - b0)
            ub0 = np.uint64(b0)
            for r in range(n_rows):
                ug = np.uint64(g_first + r)
                cb = np.uint64(c_off) + np.uint64(layer) * c0 + ug * c1 + ua * c2 + ub0 * c3
                pb = np.uint64(p_off) + np.uint64(layer) * p0 + ug * p1 + ua * p2 + ub0 * p3
                if unit:  # one prefetch per 64-byte line, AHEAD elements on (a hint; within the arrays)
                    for off in range(AHEAD, AHEAD + m, line):
                        uo = np.uint64(off)
                        if cb + uo < n_cur:
                            _prefetch(cur, cb + uo)
                        if has_prev and pb + uo < n_prev:
                            _prefetch(prev, pb + uo)
                _convert_run(cur, cb, c3, prev, pb, p3, unit, has_prev, m, buf[r])
            kb = ua * np.uint64(n_b) + ub0
            for b in range(m):
                k = bins[kb + np.uint64(b)]
                x0, x1, x2, x3 = buf[r0, b], buf[r1, b], buf[r2, b], buf[r3, b]
                _add4(acc_v, k, x0, x1, x2, x3)  # acc_t[k, i] += xi, one 4-wide add (LANES is 4)
                s0 += x0 * x0
                s1 += x1 * x1
                s2 += x2 * x2
                s3 += x3 * x3
    sums[0], sums[1], sums[2], sums[3] = s0, s1, s2, s3
    for j in range(nh):
        acc[h0 + j] = acc_t[:, j]
        sq[h0 + j] = sums[j]


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _scatter_part(cur, c_off, cs, prev, p_off, ps, has_prev, n_layers, n_groups, n_a, n_b,
                  per_group, bins, acc, sq):  # pragma: no cover (compiled)
    """acc[l·H + h, bins[a·B + b]] += δ and sq[l·H + h] += δ² for every element (l, g, a, b) of one part
    [L, G, A, B] (at cur[c_off + l·cs[0] + g·cs[1] + a·cs[2] + b·cs[3]]), for the heads
    h = g·per_group .. g·per_group + per_group − 1; δ = θ_t − θ_{t−1} (θ_t when not has_prev), float64;
    each head's sums in (a, b) order. Heads go LANES at a time (_scatter_block). Indices are unsigned:
    no negative-index wraparound in the inner loop."""
    n_heads = n_groups * per_group
    n_blocks = (n_heads + LANES - 1) // LANES
    for layer in range(n_layers):
        for blk in range(n_blocks):
            _scatter_block(layer, blk, cur, c_off, cs, prev, p_off, ps, has_prev, n_heads, n_a, n_b, per_group, bins,
                           acc[layer * n_heads:(layer + 1) * n_heads], sq[layer * n_heads:(layer + 1) * n_heads])


@nb.njit(cache=True, nogil=True, boundscheck=False, parallel=True)
def _scatter_part_threads(cur, c_off, cs, prev, p_off, ps, has_prev, n_layers, n_groups, n_a, n_b,
                          per_group, bins, acc, sq):  # pragma: no cover (compiled)
    """_scatter_part with the (layer, block of LANES heads) pairs split across numba's threads. Each head's
    sums run on one thread in the same element order as the serial loop: the records are bit-identical."""
    n_heads = n_groups * per_group
    n_blocks = (n_heads + LANES - 1) // LANES
    for lb in nb.prange(n_layers * n_blocks):
        layer = lb // n_blocks
        _scatter_block(layer, lb % n_blocks, cur, c_off, cs, prev, p_off, ps, has_prev, n_heads, n_a, n_b, per_group,
                       bins, acc[layer * n_heads:(layer + 1) * n_heads], sq[layer * n_heads:(layer + 1) * n_heads])


def pass_threads() -> int:
    """Threads of the fused pass: torch's intra-op thread count (the CLI's --threads), capped by numba's
    pool. 1 runs the serial kernel."""
    return max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS))


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
            t, pt, swapped = loop_order(t.unsqueeze(0), None if prev is None else prev[i][0][layer].unsqueeze(0))
            _, n_groups, n_outer, n_inner = t.shape
            key = (col0, n_outer, n_inner, swapped)
            if key not in tables:  # the bins of this part's columns in loop order
                cols = bins[col0: col0 + n_outer * n_inner].reshape((n_inner, n_outer) if swapped else (n_outer, n_inner))
                tables[key] = np.ascontiguousarray(cols.T if swapped else cols).reshape(-1)
            cur, c_off, cs = flat_storage(t)
            pv, p_off, ps = (cur, c_off, cs) if pt is None else flat_storage(pt)
            kernel = _scatter_part if threads == 1 or n_heads <= LANES else _scatter_part_threads
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
            parts, prev = as_parts(as_vectors(parts, n_heads)), as_parts(as_vectors(prev, n_heads))
        if want:
            out, sq, finite = fused_update(parts, None if project_theta else prev, self.bins, n_heads, self.dim,
                                          self.tables)
            if not bool(finite.all()):
                if isinstance(weights, LayeredHeadWeights):
                    weights.check_finite()  # read unchecked: NonFiniteWeights names the checkpoint and tensor
                layer, head = divmod(int((~finite).flatten().nonzero()[0, 0]), n_heads)
                raise ValueError(f"step {ck.step}: NaN/inf weights in layer {layer} head {head}; the checkpoint is "
                                 "corrupt or diverged")
        else:  # priming with a recorded sketch: only θ_t is kept
            if isinstance(weights, LayeredHeadWeights):
                weights.check_finite()
            ck.check_finite()
            out = sq = None
        self.prev = parts if retain else [(tuple(t.clone() for t in ts), col) for ts, col in parts]
        if sq is None or project_theta:
            norm = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        else:
            norm = sq.sqrt()
        return (out if want else None), norm
