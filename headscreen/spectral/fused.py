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


#: fp16 θ is converted by the CPU's instruction where there is one, else by integer ops (`_to_float64`); both
#: give the exact value, so the records do not depend on which
HARDWARE_HALF = _host_converts_half()
#: heads walked together by one kernel call: one float64 vector of 4 lanes per column (32 bytes)
LANES = 4
#: how many rows ahead a lane's next run is prefetched when a lane's rows are not one contiguous stream (W_O's
#: heads side by side in each row: the hardware prefetcher does not follow a lane from row to row)
AHEAD_ROWS = 8
_F64X4 = ir.VectorType(ir.DoubleType(), 4)
_I64, _I32 = ir.IntType(64), ir.IntType(32)


def _splat(ty, x):
    return ir.Constant(ir.VectorType(ty, 4), [x] * 4)


def _to_float64(builder, bits, dtype):
    """<4 x stored> → <4 x double>, exact. fp16 (uint16 bits): the CPU's conversion, or sign, exponent and
    mantissa moved to float64's places and a product that rebiases the exponent (subnormals included), with
    Inf/NaN patterns (which that turns into finite values ≥ 2^16) replaced by NaN; bf16 (int16 bits): the top
    half of a float32. Inf/NaN stay non-finite, so a head whose θ_t has one gets non-finite sums."""
    if dtype == types.float64:
        return bits
    if dtype == types.float32:
        return builder.fpext(bits, _F64X4)
    if dtype == types.int16:
        wide = builder.shl(builder.zext(bits, ir.VectorType(_I32, 4)), _splat(_I32, 16))
        return builder.fpext(builder.bitcast(wide, ir.VectorType(ir.FloatType(), 4)), _F64X4)
    if HARDWARE_HALF:
        return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 4)), _F64X4)
    u = builder.zext(bits, ir.VectorType(_I64, 4))
    sign = builder.shl(builder.and_(u, _splat(_I64, 0x8000)), _splat(_I64, 48))
    mag = builder.shl(builder.and_(u, _splat(_I64, 0x7FFF)), _splat(_I64, 42))
    val = builder.fmul(builder.bitcast(builder.or_(sign, mag), _F64X4), _splat(ir.DoubleType(), 2.0 ** 1008))
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


@intrinsic
def _walk(typingctx, acc, bins, cur, cbs, c2, c3, prev, pbs, p2, p3, has_prev, n_a, n_b, sums):
    """One block of LANES (4) lanes of one part: for rows a < n_a and columns b < n_b, lane i's element is
    cur[cbs[i] + a·c2 + b·c3] (θ_t) and prev[pbs[i] + a·p2 + b·p3] (θ_{t−1}); δ (θ_t alone when not has_prev)
    is converted to float64 exactly, added into acc[4·bins[a·n_b + b] + i] and its square into sums[i], in
    (a, b) order for every lane: each lane's sums are those of a plain loop over its elements, bit for bit.
    Unit-stride rows go 4 columns at a time: each lane's 4 values are one vector load, and the 4×4 block is
    transposed into 4 column vectors; the rest of a row (and strided rows) one column at a time. The running
    sums stay in a register: a column costs one vector add's latency."""
    ints = (c2, c3, p2, p3, n_a, n_b)
    if not (isinstance(cur, types.Array) and isinstance(prev, types.Array) and acc.dtype == sums.dtype == types.float64
            and all(isinstance(i, types.Integer) and i.bitwidth == 64 for i in ints)
            and isinstance(has_prev, types.Boolean)):
        return None
    sig = types.void(acc, bins, cur, cbs, c2, c3, prev, pbs, p2, p3, has_prev, n_a, n_b, sums)

    def codegen(context, builder, signature, args):
        acc_p, bin_p, cur_p, cbs_p, prev_p, pbs_p, sum_p = (
            context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 1, 2, 3, 6, 7, 13))
        c2_v, c3_v, p2_v, p3_v, has_p, na_v, nb_v = (args[i] for i in (4, 5, 8, 9, 10, 11, 12))
        sides = [(cur_p, [builder.gep(cur_p, [builder.load(builder.gep(cbs_p, [_I64(i)]))]) for i in range(LANES)],
                  signature.args[2].dtype, c2_v, c3_v),
                 (prev_p, [builder.gep(prev_p, [builder.load(builder.gep(pbs_p, [_I64(i)]))]) for i in range(LANES)],
                  signature.args[6].dtype, p2_v, p3_v)]
        unit = builder.and_(builder.icmp_signed("==", c3_v, _I64(1)), builder.icmp_signed("==", p3_v, _I64(1)))
        m4 = builder.select(unit, builder.and_(nb_v, _I64(-4)), _I64(0))
        spread = builder.and_(unit, builder.icmp_signed(">", c2_v, nb_v))  # a lane's rows are not contiguous
        line_step = _I64(max(1, 64 // (signature.args[2].dtype.bitwidth // 8)))
        s_ptr = builder.bitcast(sum_p, _F64X4.as_pointer())
        s_in, entry = builder.load(s_ptr, align=8), builder.block
        names = ("row", "pf", "pf_end", "vec", "vec_end", "one", "row_end", "done")
        row, pf, pf_end, vec, vec_end, one, row_end, done = (builder.append_basic_block("walk." + n) for n in names)
        nonempty = builder.and_(builder.icmp_signed(">", na_v, _I64(0)), builder.icmp_signed(">", nb_v, _I64(0)))
        builder.cbranch(nonempty, row, done)

        def delta(loads):  # [cur <4 x T>, prev <4 x T>] → δ <4 x double>
            vc, vp = (_to_float64(builder, v, side[2]) for v, side in zip(loads, sides, strict=True))
            return builder.select(has_p, builder.fsub(vc, vp), vc)

        builder.position_at_end(row)  # --- row a
        a, s_row = builder.phi(_I64), builder.phi(_F64X4)
        k_a = builder.mul(a, nb_v)
        builder.cbranch(spread, pf, pf_end)
        builder.position_at_end(pf)  # prefetch row a + AHEAD_ROWS, one hint per 64-byte line of each lane
        b_pf = builder.phi(_I64)
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                            "llvm.prefetch.p0")
        ahead = builder.add(a, _I64(AHEAD_ROWS))
        for _, lanes, _, stride, _ in sides:
            for p in lanes:
                q = builder.gep(p, [builder.add(builder.mul(ahead, stride), b_pf)])
                builder.call(fn, [builder.bitcast(q, i8p), _I32(0), _I32(3), _I32(1)])
        b_pf_next = builder.add(b_pf, line_step)
        b_pf.add_incoming(_I64(0), row), b_pf.add_incoming(b_pf_next, pf)
        builder.cbranch(builder.icmp_signed("<", b_pf_next, m4), pf, pf_end)
        builder.position_at_end(pf_end)
        builder.cbranch(builder.icmp_signed(">", m4, _I64(0)), vec, vec_end)
        builder.position_at_end(vec)  # --- 4 columns at a time
        b, s = builder.phi(_I64), builder.phi(_F64X4)
        rows = [delta([builder.load(builder.bitcast(builder.gep(lanes[i], [builder.add(builder.mul(a, stride), b)]),
                                                    ir.VectorType(base.type.pointee, 4).as_pointer()), align=1)
                       for base, lanes, _, stride, _ in sides]) for i in range(LANES)]
        mask = lambda *ix: ir.Constant(ir.VectorType(_I32, 4), list(ix))  # noqa: E731
        t = [builder.shuffle_vector(rows[i], rows[i + 1], mask(*m)) for i in (0, 2) for m in ((0, 4, 2, 6), (1, 5, 3, 7))]
        cols = [builder.shuffle_vector(t[lo], t[hi], mask(*m)) for m in ((0, 1, 4, 5), (2, 3, 6, 7)) for lo, hi in ((0, 2), (1, 3))]
        s_next = s
        for j, x in enumerate(cols):  # columns b, b + 1, b + 2, b + 3, in order
            s_next = _scatter_column(builder, acc_p, bin_p, builder.add(k_a, builder.add(b, _I64(j))), x, s_next)
        b_next = builder.add(b, _I64(4))
        b.add_incoming(_I64(0), pf_end), b.add_incoming(b_next, vec)
        s.add_incoming(s_row, pf_end), s.add_incoming(s_next, vec)
        builder.cbranch(builder.icmp_signed("<", b_next, m4), vec, vec_end)
        builder.position_at_end(vec_end)
        s_vec = _phi(builder, _F64X4, (s_row, pf_end), (s_next, vec))
        builder.cbranch(builder.icmp_signed("<", m4, nb_v), one, row_end)
        builder.position_at_end(one)  # --- one column at a time: the 4 lanes' elements gathered into one vector
        b1, s1 = builder.phi(_I64), builder.phi(_F64X4)
        loads = []
        for base, lanes, _, stride, step in sides:
            v = ir.Constant(ir.VectorType(base.type.pointee, 4), ir.Undefined)
            for i, p in enumerate(lanes):
                at = builder.add(builder.mul(a, stride), builder.mul(b1, step))
                v = builder.insert_element(v, builder.load(builder.gep(p, [at])), _I32(i))
            loads.append(v)
        s1_next = _scatter_column(builder, acc_p, bin_p, builder.add(k_a, b1), delta(loads), s1)
        b1_next = builder.add(b1, _I64(1))
        b1.add_incoming(m4, vec_end), b1.add_incoming(b1_next, one)
        s1.add_incoming(s_vec, vec_end), s1.add_incoming(s1_next, one)
        builder.cbranch(builder.icmp_signed("<", b1_next, nb_v), one, row_end)
        builder.position_at_end(row_end)
        s_after = _phi(builder, _F64X4, (s_vec, vec_end), (s1_next, one))
        a_next = builder.add(a, _I64(1))
        a.add_incoming(_I64(0), entry), a.add_incoming(a_next, row_end)
        s_row.add_incoming(s_in, entry), s_row.add_incoming(s_after, row_end)
        builder.cbranch(builder.icmp_signed("<", a_next, na_v), row, done)
        builder.position_at_end(done)
        builder.store(_phi(builder, _F64X4, (s_in, entry), (s_after, row_end)), s_ptr, align=8)
        return context.get_dummy_value()

    return sig, codegen


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
