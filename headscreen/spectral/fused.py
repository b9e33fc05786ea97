"""The fused CountSketch update pass: one walk over θ_t and θ_{t−1} per checkpoint (the default sketch's path).

For every element of every head's vector, in one compiled loop: read θ_t as stored (fp16 bits turned into
their float64 value by the CPU's conversion instruction where it has one, else by integer ops and a bit cast;
bf16 by a shift and a bit cast; all exact and without a branch; float32/float64 directly), subtract
θ_{t−1} (also as stored) in float64 (exact for fp16 weights, and for bf16/float32 ones whose exponents
differ by less than ~29), add the difference into the head's
signed bin 2·h(j) + [s(j) < 0] and its square into the head's running ‖δ‖² (both float64). Afterwards
the sketch entry j is the +1 bin minus the −1 bin. Nothing else touches the weights: no head-vector
assembly, no converted copies, no separate difference, norm or finite pass (a NaN/Inf in θ_t makes its
head's sums non-finite, which is checked on the small accumulator), and θ_{t−1} is the caller's previous
tensors themselves when they are handed over (`retain`), else one copy.

Heads are walked LANES (4) at a time, in one loop nest written as LLVM vector ops (`_walk`): where a row
is contiguous, each head's next 4 values of θ_t and θ_{t−1} are one vector load each, converted and differenced
as vectors, and the 4×4 block is transposed into 4 column vectors (the rest of a row, and strided rows, go one
column at a time, the 4 heads' values gathered into one vector). Each column's bin is looked up once for the
4 heads and added into a transposed [bins, 4] accumulator with one vector read-modify-write, and the 4 ‖δ‖²
sums are the lanes of one register (one head alone is bound by the latency of its running sum). Every lane
does the same IEEE float64 operations, in the same order, as a plain loop over that head's elements (no fused
multiply-add): the records are those of one head at a time, bit for bit (tests/test_fused_sketch.py checks
them against a plain loop; benchmarks/bench_scatter.py times the kernel against a scalar one). When a head's
rows are not one contiguous stream (W_O's heads lie side by side in each row), the lines AHEAD_ROWS rows on
are prefetched, since the hardware prefetcher does not follow such a stream from page to page.

Each part (W_Q, W_K, W_V, W_O; or a whole [L, H, P] tensor) is walked layer by layer, one kernel call
per layer (a `LayeredHeadWeights`, the lazy reader's views of the mapped files, is never stacked; the
threaded kernel splits a layer's blocks of LANES heads across threads), each layer in the memory order
of θ_t (the lazy reader's views are strided: NeoX's fused QKV rows are interleaved per head), with the
bins looked up in a copy of the bin table permuted into that order, so every read is sequential. The
order of the float64 sums follows the element order: the records are bit-identical for the same
layout, whatever the stored dtype (every run, split of the series, process or executor reads a
checkpoint the same way), and agree to rounding (~1e-16 relative) between layouts. A K/V part
(grouped-query attention) is added to each query head of its group as it is read.

Why numba: the scatter into d signed bins is no few vectorised torch ops (`index_add_` costs a dispatch per
column) and the fused loop is what brings the update to its floor (benchmarks/bench_extraction.py). The
kernels are compiled once per dtype combination and cached on disk (`cache=True`).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from torch import Tensor

from headscreen.series.weights import LayeredHeadWeights

from .parts import Part, as_parts, as_vectors, flat_storage, head_parts, loop_order, parts_layout
from .segments import UpdatePass

_TWO_1008 = 2.0 ** 1008  # fp16 → float64 exponent rebias (1023 − 15)


def _host_converts_half() -> bool:
    """Whether numba compiles for a CPU with an fp16 conversion instruction (x86 F16C, aarch64). Elsewhere, or
    for a NUMBA_CPU_NAME target, `fpext half` could become a library call numba does not link."""
    import llvmlite.binding as llvm

    if nb.config.CPU_NAME is not None:
        return False
    triple = llvm.get_process_triple()
    return triple.startswith(("aarch64", "arm64")) or (
        triple.startswith("x86_64") and bool(llvm.get_host_cpu_features().get("f16c", False)))


#: fp16 by the CPU's instruction where there is one, else by integer ops (`_to_float64`): both exact, same records
HARDWARE_HALF = _host_converts_half()
#: heads walked together by one kernel call: one float64 vector of 4 lanes per column (32 bytes)
LANES = 4
#: how many rows ahead a lane's next run is prefetched when a lane's rows are not one contiguous stream (W_O's
#: heads side by side in each row: the hardware prefetcher does not follow a lane from row to row)
AHEAD_ROWS = 8
_F64X4, _I64, _I32 = ir.VectorType(ir.DoubleType(), 4), ir.IntType(64), ir.IntType(32)


def _splat(ty, x):
    return ir.Constant(ir.VectorType(ty, 4), [x] * 4)


def _to_float64(builder, bits, dtype):
    """<4 x stored> → <4 x double>, exact; Inf/NaN stay non-finite (so do the sums of a head with one). fp16
    (uint16 bits): the CPU's conversion, or sign, exponent and mantissa moved to float64's places times a
    rebiasing power of 2 (subnormals too), Inf/NaN patterns made NaN; bf16 (int16 bits): a float32's top half."""
    if dtype == types.float64:
        return bits
    if dtype == types.float32:
        return builder.fpext(bits, _F64X4)
    if dtype == types.int16:
        wide = builder.shl(builder.zext(bits, ir.VectorType(_I32, 4)), _splat(_I32, 16))
        return builder.fpext(builder.bitcast(wide, ir.VectorType(ir.FloatType(), 4)), _F64X4)
    if dtype != types.uint16:
        raise TypeError(f"the fused pass reads fp16/bf16 bits, float32 or float64, not {dtype}: convert the weights")
    if HARDWARE_HALF:
        return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 4)), _F64X4)
    u = builder.zext(bits, ir.VectorType(_I64, 4))
    sign = builder.shl(builder.and_(u, _splat(_I64, 0x8000)), _splat(_I64, 48))
    mag = builder.shl(builder.and_(u, _splat(_I64, 0x7FFF)), _splat(_I64, 42))
    val = builder.fmul(builder.bitcast(builder.or_(sign, mag), _F64X4), _splat(ir.DoubleType(), _TWO_1008))
    special = builder.icmp_unsigned("==", builder.and_(u, _splat(_I64, 0x7C00)), _splat(_I64, 0x7C00))
    return builder.select(special, _splat(ir.DoubleType(), float("nan")), val)


def _scatter_column(builder, acc_p, bin_p, k_idx, x, s):
    """acc[4·bins[k_idx] : +4] += x (one vector read-modify-write); returns s + x·x (no fused multiply-add)."""
    k = builder.zext(builder.load(builder.gep(bin_p, [k_idx])), _I64)
    ptr = builder.bitcast(builder.gep(acc_p, [builder.mul(k, _I64(LANES))]), _F64X4.as_pointer())
    builder.store(builder.fadd(builder.load(ptr, align=8), x), ptr, align=8)
    return builder.fadd(s, builder.fmul(x, x))


def _phi(builder, ty, *incoming):
    p = builder.phi(ty)
    for value, block in incoming:
        p.add_incoming(value, block)
    return p


class _Walk:
    """The LLVM code of `_walk`, one method per loop: rows (`emit`), the row-ahead prefetch, 4 columns at a time
    (vector loads and a 4×4 transpose), one column at a time (the 4 lanes gathered)."""

    def __init__(self, context, builder, signature, args):
        self.b = builder
        acc_p, self.bin_p, cur_p, cbs_p, prev_p, pbs_p, sum_p = (
            context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 1, 2, 3, 6, 7, 13))
        self.acc_p, self.s_ptr = acc_p, builder.bitcast(sum_p, _F64X4.as_pointer())
        c2, c3, p2, p3, self.has_p, self.n_a, self.n_b = (args[i] for i in (4, 5, 8, 9, 10, 11, 12))
        # per side (θ_t, θ_{t−1}): the 4 lanes' first elements, the stored kind, the row and column strides
        self.sides = [([builder.gep(p, [builder.load(builder.gep(offs, [_I64(i)]))]) for i in range(LANES)], dt, rs, cs)
                      for p, offs, dt, rs, cs in ((cur_p, cbs_p, signature.args[2].dtype, c2, c3),
                                                  (prev_p, pbs_p, signature.args[6].dtype, p2, p3))]
        unit = builder.and_(builder.icmp_signed("==", c3, _I64(1)), builder.icmp_signed("==", p3, _I64(1)))
        self.m4 = builder.select(unit, builder.and_(self.n_b, _I64(-4)), _I64(0))  # columns walked 4 at a time
        self.spread = builder.and_(unit, builder.icmp_signed(">", c2, self.n_b))  # a lane's rows: not one stream
        self.line = _I64(max(1, 64 // (signature.args[2].dtype.bitwidth // 8)))  # elements of θ_t per 64 bytes

    def block(self, name):
        return self.b.append_basic_block("walk." + name)

    def delta(self, loads):  # [θ_t <4 x stored>, θ_{t−1} <4 x stored>] → δ <4 x double>
        vc, vp = (_to_float64(self.b, v, side[1]) for v, side in zip(loads, self.sides, strict=True))
        return self.b.select(self.has_p, self.b.fsub(vc, vp), vc)

    def emit(self):
        b = self.b
        s_in, entry = b.load(self.s_ptr, align=8), b.block
        row, row_end, done = self.block("row"), self.block("row_end"), self.block("done")
        nonempty = b.and_(b.icmp_signed(">", self.n_a, _I64(0)), b.icmp_signed(">", self.n_b, _I64(0)))
        b.cbranch(nonempty, row, done)
        b.position_at_end(row)
        a, s_row = b.phi(_I64), b.phi(_F64X4)
        self.prefetch(a)
        s_vec = self.vector_columns(a, s_row)
        s_after = self.single_columns(a, s_vec, row_end)
        a_next = b.add(a, _I64(1))
        a.add_incoming(_I64(0), entry), a.add_incoming(a_next, row_end)
        s_row.add_incoming(s_in, entry), s_row.add_incoming(s_after, row_end)
        b.cbranch(b.icmp_signed("<", a_next, self.n_a), row, done)
        b.position_at_end(done)
        b.store(_phi(b, _F64X4, (s_in, entry), (s_after, row_end)), self.s_ptr, align=8)

    def prefetch(self, a):
        """Where a lane's rows are not one stream: one prefetch per 64-byte line of row a + AHEAD_ROWS."""
        b, start = self.b, self.b.block
        loop, end = self.block("pf"), self.block("pf_end")
        b.cbranch(self.spread, loop, end)
        b.position_at_end(loop)
        col = b.phi(_I64)
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(b.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                            "llvm.prefetch.p0")
        ahead = b.add(a, _I64(AHEAD_ROWS))
        for lanes, _, row_stride, _ in self.sides:
            for p in lanes:
                q = b.gep(p, [b.add(b.mul(ahead, row_stride), col)])
                b.call(fn, [b.bitcast(q, i8p), _I32(0), _I32(3), _I32(1)])  # read, keep in all levels, data
        col_next = b.add(col, self.line)
        col.add_incoming(_I64(0), start), col.add_incoming(col_next, loop)
        b.cbranch(b.icmp_signed("<", col_next, self.m4), loop, end)
        b.position_at_end(end)

    def vector_columns(self, a, s_row):
        """Columns 0 .. m4 − 1 of row a, 4 at a time; returns the sums after them."""
        b, start = self.b, self.b.block
        loop, end = self.block("vec"), self.block("vec_end")
        b.cbranch(b.icmp_signed(">", self.m4, _I64(0)), loop, end)
        b.position_at_end(loop)
        col, s = b.phi(_I64), b.phi(_F64X4)
        rows = [self.delta([b.load(b.bitcast(b.gep(lanes[i], [b.add(b.mul(a, row_stride), col)]),
                                             ir.VectorType(lanes[i].type.pointee, 4).as_pointer()), align=1)
                            for lanes, _, row_stride, _ in self.sides]) for i in range(LANES)]
        mask = lambda *ix: ir.Constant(ir.VectorType(_I32, 4), list(ix))  # noqa: E731
        t = [b.shuffle_vector(rows[i], rows[i + 1], mask(*m)) for i in (0, 2) for m in ((0, 4, 2, 6), (1, 5, 3, 7))]
        cols = [b.shuffle_vector(t[lo], t[hi], mask(*m)) for m in ((0, 1, 4, 5), (2, 3, 6, 7)) for lo, hi in ((0, 2), (1, 3))]
        s_next, k_a = s, b.mul(a, self.n_b)
        for j, x in enumerate(cols):  # columns col, col + 1, col + 2, col + 3, in order
            s_next = _scatter_column(b, self.acc_p, self.bin_p, b.add(k_a, b.add(col, _I64(j))), x, s_next)
        col_next = b.add(col, _I64(4))
        col.add_incoming(_I64(0), start), col.add_incoming(col_next, loop)
        s.add_incoming(s_row, start), s.add_incoming(s_next, loop)
        b.cbranch(b.icmp_signed("<", col_next, self.m4), loop, end)
        b.position_at_end(end)
        return _phi(b, _F64X4, (s_row, start), (s_next, loop))

    def single_columns(self, a, s_vec, row_end):
        """Columns m4 .. n_b − 1 of row a, one at a time; branches to row_end and returns the row's sums there."""
        b, start = self.b, self.b.block
        loop = self.block("one")
        b.cbranch(b.icmp_signed("<", self.m4, self.n_b), loop, row_end)
        b.position_at_end(loop)
        col, s = b.phi(_I64), b.phi(_F64X4)
        loads = []
        for lanes, _, row_stride, col_stride in self.sides:
            v = ir.Constant(ir.VectorType(lanes[0].type.pointee, 4), ir.Undefined)
            at = b.add(b.mul(a, row_stride), b.mul(col, col_stride))
            for i, p in enumerate(lanes):
                v = b.insert_element(v, b.load(b.gep(p, [at])), _I32(i))
            loads.append(v)
        s_next = _scatter_column(b, self.acc_p, self.bin_p, b.add(b.mul(a, self.n_b), col), self.delta(loads), s)
        col_next = b.add(col, _I64(1))
        col.add_incoming(self.m4, start), col.add_incoming(col_next, loop)
        s.add_incoming(s_vec, start), s.add_incoming(s_next, loop)
        b.cbranch(b.icmp_signed("<", col_next, self.n_b), loop, row_end)
        b.position_at_end(row_end)
        return _phi(b, _F64X4, (s_vec, start), (s_next, loop))


@intrinsic
def _walk(typingctx, acc, bins, cur, cbs, c2, c3, prev, pbs, p2, p3, has_prev, n_a, n_b, sums):
    """One block of LANES (4) lanes of one part: for rows a < n_a and columns b < n_b, lane i's element is
    cur[cbs[i] + a·c2 + b·c3] (θ_t) and prev[pbs[i] + a·p2 + b·p3] (θ_{t−1}); δ (θ_t alone when not has_prev)
    is converted to float64 exactly, added into acc[4·bins[a·n_b + b] + i] and its square into sums[i], in
    (a, b) order for every lane: each lane's sums are those of a plain loop over its elements, bit for bit.
    Unit-stride rows go 4 columns at a time (vector loads, a 4×4 transpose), the rest one column at a time."""
    ints = (c2, c3, p2, p3, n_a, n_b)
    if not (isinstance(cur, types.Array) and isinstance(prev, types.Array) and acc.dtype == sums.dtype == types.float64
            and all(isinstance(i, types.Integer) and i.bitwidth == 64 for i in ints)
            and isinstance(has_prev, types.Boolean)):
        return None

    def codegen(context, builder, signature, args):
        _Walk(context, builder, signature, args).emit()
        return context.get_dummy_value()

    return types.void(acc, bins, cur, cbs, c2, c3, prev, pbs, p2, p3, has_prev, n_a, n_b, sums), codegen


@nb.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _scatter_block(layer, blk, cur, c_off, cs, prev, p_off, ps, has_prev, n_heads, n_a, n_b, per_group, bins, acc,
                   sq):  # pragma: no cover (compiled)
    """The heads h0 .. h0 + LANES − 1 (h0 = blk·LANES, fewer at the end) of one layer's part, side by side
    (`_walk`): per column, one bin lookup, one read-modify-write of a LANES-wide row of a transposed [bins,
    LANES] accumulator, and LANES independent running ‖δ‖² sums. Each head's sums run over its elements in the
    same order as one head alone would: the records do not depend on LANES. Writes only acc[h] and sq[h] of
    these heads, so blocks may run on different threads."""
    h0 = blk * LANES
    nh = min(LANES, n_heads - h0)
    n_bins = acc.shape[1]
    acc_t = np.zeros((n_bins, LANES), dtype=np.float64)  # the block's bins, heads side by side
    sums = np.zeros(LANES, dtype=np.float64)
    cbs, pbs = np.zeros(LANES, dtype=np.int64), np.zeros(LANES, dtype=np.int64)
    for j in range(LANES):  # lane j reads its head's K/V group; a padding lane (j >= nh) re-reads lane 0's
        g = (h0 + (j if j < nh else 0)) // per_group
        cbs[j] = c_off + layer * cs[0] + g * cs[1]
        pbs[j] = p_off + layer * ps[0] + g * ps[1]
        if j < nh:
            acc_t[:, j] = acc[h0 + j]
            sums[j] = sq[h0 + j]
    _walk(acc_t.reshape(n_bins * LANES), bins, cur, cbs, cs[2], cs[3], prev, pbs, ps[2], ps[3], has_prev, n_a, n_b,
          sums)
    for j in range(nh):
        acc[h0 + j] = acc_t[:, j]
        sq[h0 + j] = sums[j]


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _scatter_part(cur, c_off, cs, prev, p_off, ps, has_prev, n_layers, n_groups, n_a, n_b,
                  per_group, bins, acc, sq):  # pragma: no cover (compiled)
    """acc[l·H + h, bins[a·B + b]] += δ and sq[l·H + h] += δ² for every element (l, g, a, b) of one part
    [L, G, A, B] (at cur[c_off + l·cs[0] + g·cs[1] + a·cs[2] + b·cs[3]]), for the heads
    h = g·per_group .. g·per_group + per_group − 1; δ = θ_t − θ_{t−1} (θ_t when not has_prev), float64;
    each head's sums in (a, b) order. Heads go LANES at a time (_scatter_block). No bounds checks: the
    offsets and strides must address elements of the arrays (`flat_storage` gives them so)."""
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
