"""The fused CountSketch update pass: one walk over θ_t and θ_{t−1} per checkpoint (the default sketch's path).

For every element of every head's vector, in one compiled loop: read θ_t as stored (fp16 bits turned into
their float64 value by the CPU's conversion instruction where it has one, else by integer ops and a bit cast;
bf16 by a shift and a bit cast; all exact and without a branch; float32/float64 directly), subtract θ_{t−1} (also as stored) in float64 (exact for fp16 weights, and
for bf16/float32 ones whose exponents differ by less than ~29), add the difference into the head's
signed bin 2·h(j) + [s(j) < 0] and its square into the head's running ‖δ‖² (both float64). Afterwards
the sketch entry j is the +1 bin minus the −1 bin. Nothing else touches the weights: no head-vector
assembly, no converted copies, no separate difference, norm or finite pass (a NaN/Inf in θ_t makes its
head's sums non-finite, which is checked on the small accumulator), and θ_{t−1} is the caller's previous
tensors themselves when they are handed over (`retain`), else one copy.

Heads are walked LANES at a time: their runs are converted side by side, each column's bin is looked up
once for all of them and added into a transposed [bins, LANES] accumulator, and the LANES ‖δ‖² sums are
independent chains (one head alone is bound by the latency of its one running sum). The column loop is
written as 4-wide vector ops (`_columns`: one vector add into the bin, and the 4 sums in one register;
the same IEEE adds and multiplies in every lane as the scalar loop). Each head's sums still run over its
own elements in its own order, so the records are those of one head at a time, bit for bit
(tests/test_fused_sketch.py checks them against a plain loop; benchmarks/bench_scatter.py times both).

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
def _half_f64(typingctx, bits):
    """The float64 value of the fp16 whose IEEE bit pattern is the uint16 `bits`: exact, Inf/NaN kept (LLVM's
    `fpext half`: F16C's vector conversion on x86, fcvt on aarch64)."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 16):
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.DoubleType())

    return types.float64(bits), codegen


def _host_converts_half() -> bool:
    """Whether numba compiles for a CPU with an fp16 conversion instruction (x86 F16C, aarch64). Elsewhere, or
    for a NUMBA_CPU_NAME target, `fpext half` could become a library call numba does not link."""
    import llvmlite.binding as llvm

    if nb.config.CPU_NAME is not None:
        return False
    triple = llvm.get_process_triple()
    return triple.startswith(("aarch64", "arm64")) or (
        triple.startswith("x86_64") and bool(llvm.get_host_cpu_features().get("f16c", False)))


#: fp16 θ is converted by the CPU's instruction (`_half_f64`) where there is one, else by integer ops
#: (`_fp16_bits`); both give the exact value, so the records do not depend on which
HARDWARE_HALF = _host_converts_half()


@intrinsic
def _columns(typingctx, acc, bins, kb, buf, offs, m, sums):
    """One chunk of LANES runs as a loop of 4-wide vector ops: for b < m, x = (buf[offs[i] + b])_i, k = bins[kb + b]:
    acc[LANES·k : LANES·k + LANES] += x and sums += x·x, lane by lane the same IEEE adds and multiplies (no fused
    multiply-add) as the scalar loop, so bit for bit the same sums. The sums stay in registers: a column costs
    one vector add's latency."""
    arrays = (acc, bins, buf, offs, sums)
    if not (all(isinstance(a, types.Array) and a.ndim == 1 for a in arrays) and acc.dtype == buf.dtype ==
            sums.dtype == types.float64 and offs.dtype == types.int64 and isinstance(kb, types.Integer)
            and isinstance(m, types.Integer)):
        return None
    n_vec = LANES // 4

    def codegen(context, builder, signature, args):
        acc_p, bin_p, buf_p, off_p, sum_p = (context.make_array(signature.args[i])(context, builder, args[i]).data
                                             for i in (0, 1, 3, 4, 6))
        i64, i32, vec = ir.IntType(64), ir.IntType(32), ir.VectorType(ir.DoubleType(), 4)
        kb_v, m_v = (builder.sext(v, i64) if v.type.width < 64 else v for v in (args[2], args[5]))
        rows = [builder.gep(buf_p, [builder.load(builder.gep(off_p, [i64(i)]))]) for i in range(LANES)]
        s_ptrs = [builder.bitcast(builder.gep(sum_p, [i64(4 * v)]), vec.as_pointer()) for v in range(n_vec)]
        s_in, entry = [builder.load(p, align=8) for p in s_ptrs], builder.block
        loop, done = builder.append_basic_block("cols.loop"), builder.append_basic_block("cols.done")
        builder.cbranch(builder.icmp_signed(">", m_v, i64(0)), loop, done)
        builder.position_at_end(loop)
        b, s = builder.phi(i64), [builder.phi(vec) for _ in range(n_vec)]
        k = builder.zext(builder.load(builder.gep(bin_p, [builder.add(kb_v, b)])), i64)
        row_p = builder.gep(acc_p, [builder.mul(k, i64(LANES))])
        s_next = []
        for v in range(n_vec):
            x = ir.Constant(vec, ir.Undefined)
            for i in range(4):
                x = builder.insert_element(x, builder.load(builder.gep(rows[4 * v + i], [b])), i32(i))
            a_ptr = builder.bitcast(builder.gep(row_p, [i64(4 * v)]), vec.as_pointer())
            builder.store(builder.fadd(builder.load(a_ptr, align=8), x), a_ptr, align=8)
            s_next.append(builder.fadd(s[v], builder.fmul(x, x)))
        b_next = builder.add(b, i64(1))
        b.add_incoming(i64(0), entry), b.add_incoming(b_next, loop)
        for v in range(n_vec):
            s[v].add_incoming(s_in[v], entry), s[v].add_incoming(s_next[v], loop)
        builder.cbranch(builder.icmp_signed("<", b_next, m_v), loop, done)
        builder.position_at_end(done)
        s_out = [builder.phi(vec) for _ in range(n_vec)]  # phis first, then the stores
        for v in range(n_vec):
            s_out[v].add_incoming(s_in[v], entry), s_out[v].add_incoming(s_next[v], loop)
            builder.store(s_out[v], s_ptrs[v], align=8)
        return context.get_dummy_value()

    return types.void(acc, bins, kb, buf, offs, m, sums), codegen


def _exact(v):  # the float64 value of one stored element (overload below); fp16 Inf/NaN: see _special
    raise NotImplementedError


def _special(v):  # 1 (uint64) for an fp16 Inf/NaN that _exact turned into finite junk, else 0 (overload below)
    raise NotImplementedError


@nb.njit(cache=True, nogil=True, inline="always")
def _fp16_bits(v):  # pragma: no cover (compiled)
    """The float64 value of the fp16 bit pattern v (uint16) by integer ops: sign, exponent and mantissa moved
    to float64's places, a product rebiases the exponent (subnormals too); exact. Inf/NaN: finite junk ≥ 2^16."""
    u = np.uint64(v)
    mag = (u & np.uint64(0x7FFF)) << np.uint64(42)
    return _bitcast_f64(((u & np.uint64(0x8000)) << np.uint64(48)) | mag) * _TWO_1008


@nb.njit(cache=True, nogil=True, inline="always")
def _fp16_special(v):  # pragma: no cover (compiled)
    """1 (uint64) for an fp16 Inf/NaN bit pattern v, else 0: exponent all ones ⇔ (e + 0x400) reaches bit 15."""
    return ((np.uint64(v) & np.uint64(0x7C00)) + np.uint64(0x0400)) >> np.uint64(15)


@overload(_exact, inline="always")
def _exact_impl(v):
    if isinstance(v, types.Integer) and v.signed:  # bf16 bits: the top half of a float32 (Inf/NaN kept)
        return lambda v: np.float64(_bitcast_f32(np.uint32(np.uint64(np.uint16(v)) << np.uint64(16))))
    if isinstance(v, types.Integer):  # fp16 bits: exact, no table, no branch
        return (lambda v: _half_f64(v)) if HARDWARE_HALF else (lambda v: _fp16_bits(v))
    return lambda v: np.float64(v)


@overload(_special, inline="always")
def _special_impl(v):
    if isinstance(v, types.Integer) and not v.signed and not HARDWARE_HALF:  # fp16 bits by integer ops
        return lambda v: _fp16_special(v)
    return lambda v: np.uint64(0)


#: heads walked together by one kernel call: their runs are converted side by side and each column's bin is
#: looked up once for all of them; each head keeps its own float64 sums in its own element order (4: the
#: width of `_columns`, one 32-byte vector of float64)
LANES = 4
#: elements of a run converted at a time (bounds the work buffer to LANES × CHUNK float64)
CHUNK = 256


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
    and LANES independent running ‖δ‖² sums (no serial chain through one sum; both in `_columns`). Each head's sums run over
    its elements in the same order as one head alone would: the records do not depend on LANES. Writes only
    acc[h] and sq[h] of these heads, so blocks may run on different threads."""
    h0 = blk * LANES
    nh = min(LANES, n_heads - h0)
    g_first = h0 // per_group
    n_rows = (h0 + nh - 1) // per_group - g_first + 1  # groups read by this block (<= nh)
    c0, c1, c2, c3 = np.uint64(cs[0]), np.uint64(cs[1]), np.uint64(cs[2]), np.uint64(cs[3])
    p0, p1, p2, p3 = np.uint64(ps[0]), np.uint64(ps[1]), np.uint64(ps[2]), np.uint64(ps[3])
    unit = cs[3] == 1 and ps[3] == 1
    buf = np.zeros((LANES + 1, CHUNK), dtype=np.float64)  # δ of each group's run; row LANES stays 0 (padding)
    flat = buf.reshape((LANES + 1) * CHUNK)  # the same memory, flat, for _columns
    rows = np.full(LANES, LANES, dtype=np.int64)  # the buf row each lane reads
    n_bins = acc.shape[1]
    acc_t = np.zeros((n_bins, LANES), dtype=np.float64)  # the block's bins, heads side by side
    acc_v = acc_t.reshape(n_bins * LANES)  # the same memory, flat, for _columns
    sums = np.zeros(LANES, dtype=np.float64)
    for j in range(nh):
        rows[j] = (h0 + j) // per_group - g_first
        acc_t[:, j] = acc[h0 + j]
        sums[j] = sq[h0 + j]
    offs = rows * CHUNK  # where each lane's run starts in flat
    for a in range(n_a):
        ua = np.uint64(a)
        for b0 in range(0, n_b, CHUNK):
            m = min(CHUNK, n_b - b0)
            ub0 = np.uint64(b0)
            for r in range(n_rows):
                ug = np.uint64(g_first + r)
                cb = np.uint64(c_off) + np.uint64(layer) * c0 + ug * c1 + ua * c2 + ub0 * c3
                pb = np.uint64(p_off) + np.uint64(layer) * p0 + ug * p1 + ua * p2 + ub0 * p3
                _convert_run(cur, cb, c3, prev, pb, p3, unit, has_prev, m, buf[r])
            _columns(acc_v, bins, ua * np.uint64(n_b) + ub0, flat, offs, m, sums)
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
