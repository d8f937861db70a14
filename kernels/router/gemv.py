"""Decode-sized fused NVFP4 router in CuTe DSL: a bandwidth-bound GEMV on the CUDA cores with the
top-k in the same launch (the GEMV kernel), and its tensor-core sibling for a few to a few hundred
tokens (the swap-AB kernel).  Portable: plain loads, ``prmt``/``dp4a``, ``redux.sync``, shuffles
(SM80 and later).

At T <= a few dozen tokens the router is a weight stream (E x K/2 bytes of FP4 codes plus E x K/16
scale bytes) and a latency problem, not an MMA problem.  So, in the GEMV kernel:

* one CTA per ``rb`` experts and per group of ``tm`` tokens (grid ``[E/rb, ceil(T/tm)]``), the whole
  K in one CTA: no split-K workspace, no cross-CTA sum, nothing to make non-deterministic;
* each thread owns 16-byte chunks of a weight row (32 FP4 codes, two E4M3 scale blocks) and
  issues all of its weight and activation loads before it decodes any of them, straight into
  registers (no shared-memory staging of tiles);
* decode and multiply in integers (:data:`_DOT8`: ``prmt`` table lookups of twice the E2M1
  magnitudes, sign masks, ``dp4a``): a 16-element block's dot product is exact, then scaled once
  by ``s_w * s_a`` (E4M3 values from a 256-entry table in shared memory);
* the CTA's partial dot products are reduced by warp butterflies and a fixed-order sum over the
  warps (the same bits on every run), scaled by ``alpha = g_a * g_b``, and published as logits
  ``[1, T, E]`` to a sentinel-filled workspace;
* CTA 0 of a token group routes it as the logits land (:class:`_WarpRouter`, polled): one warp
  per token, a sorted top-k of its E/32 logits' order keys per lane, k picks of one ``redux.sync``
  each (a ballot off the chain detects exact ties across lanes; the picks are then redone with a
  second ``redux.sync`` for the lowest id), the softmax denominator by a butterfly
  (deterministic); it writes the sentinel back for the next launch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cutlass
import cutlass.cute as cute
from cutlass._mlir import ir
from cutlass._mlir.dialects import llvm

from .portable import DSL_ASCENDING_ID_OPS, DSL_OPS, LUT_E4M3, LUT_SIZE
from .quant import (TABLE_CODES, TABLE_WORDS, _asm, _dec_pair, _f2i, _i2f, _mul_rn, _scale2, _sel, block_amax,
                    block_amax_words, build_threshold_table, global_scale, max_of_magnitudes, quant_block,
                    quant_block_f16, quant_half_block, safe_scales)
from .topk import EMPTY_ID, KEY_FLOOR, sorted_insert

THREADS = 256
WARPS = THREADS // 32
LUT_WORDS = -(-LUT_SIZE // THREADS)  # decode-table words a GEMV thread copies to shared memory


def _lut_index(tidx, u: int):
    """Word ``u`` of thread ``tidx``'s share of the decode table."""
    return cutlass.min(tidx + u * THREADS, LUT_SIZE - 1)


def _redux(op: str, v):
    """``redux.sync.{op}.s32`` over the full warp (SM80+): one instruction for a warp's max / min."""
    return _asm(cutlass.Int32, f"redux.sync.{op}.s32 $0, $1, 0xffffffff;", "=r,r", cutlass.Int32(v))


def _stamp(dep):
    """``%clock`` read once ``dep`` is ready (the read is predicated on it), for the probe's
    timestamps: ptxas cannot issue it before the work that makes ``dep``."""
    ptx = ("{ .reg .pred p; setp.ne.s32 p, $1, 1234567; @p mov.u32 $0, %clock; @!p mov.u32 $0, 0; }")
    return _asm(cutlass.Int32, ptx, "=r,r", cutlass.Int32(dep))


def await_inputs(pdl: bool):
    """``pdl``: the kernel was launched as a programmatic dependent (``use_pdl``) and may have
    started before the kernel ahead of it in the stream finished; ``griddepcontrol.wait`` holds it
    until that kernel's writes are visible.  Everything before it may read only what no kernel
    of the stream writes (the weights, the decode table) and write nothing."""
    if pdl:
        cute.arch.griddepcontrol_wait()


def _order_key(v):
    """A float as an int32 whose signed order is the float order (NaN: the smallest int, so a NaN
    never wins, as in ``DSL_OPS.better``)."""
    b = _f2i(v)
    return _sel(v == v, b ^ ((b >> 31) & 0x7FFFFFFF), cutlass.Int32(KEY_FLOOR))


def _key_value(key):
    """The float of an order key (exact inverse of :func:`_order_key` for non-NaN floats)."""
    return _i2f(key ^ ((key >> 31) & 0x7FFFFFFF))


def _pop_head(keys, ids, mine):
    """The sorted key list with its head popped where ``mine`` (the rest move up, the floor key and
    the empty id enter at the end), else as it was: independent selects."""
    k = len(keys)
    nk = [_sel(mine, keys[i + 1] if i + 1 < k else cutlass.Int32(KEY_FLOOR), keys[i]) for i in range(k)]
    ni = [_sel(mine, ids[i + 1] if i + 1 < k else cutlass.Int32(EMPTY_ID), ids[i]) for i in range(k)]
    return nk, ni


#: bits of an unwritten logit in a polled workspace: a negative NaN with every payload bit set, which
#: no arithmetic makes (NVIDIA's canonical NaN is 0x7FFFFFFF); a result with these bits is stored as
#: that canonical NaN instead
SENTINEL = -1


@cute.jit
def _publish(mX: cute.Tensor, off, v):
    """Store logit ``v`` at flat offset ``off`` of the float32 workspace ``mX`` for a polling
    reader (relaxed, gpu scope: it goes to L2, no fence: the reader checks each word itself)."""
    b = _f2i(v)
    b = _sel(b == SENTINEL, cutlass.Int32(0x7FFFFFFF), b)
    ptr = cute.recast_ptr(mX.iterator, dtype=cutlass.Int32) + off
    cute.arch.store(ptr.llvm_ptr, b, sem="relaxed", scope="gpu")


# dot product of the 8 E2M1 codes of word $1 (weights) and word $2 (activations), plus $3:
# twice each magnitude from the byte table {0,1,2,3,4,6,8,12} (prmt, selectors = the codes' 3 low
# bits), byte masks of the product signs (prmt in sign-replicate mode over the xor of the words:
# code j's sign bit 4j+3 is the top bit of a byte of the word or of the word << 4), then
# sum((m_w ^ mask) * m_a) + sum((mask & 1) * m_a): one's complement plus the correction is the
# negation, with no carry between bytes.  The sum is 4x the code-value dot product.
_DOT8 = """{
.reg .b32 tl, th, mw0, mw1, ma0, ma1, s, x, m0, m1, t, acc;
mov.b32 tl, 0x03020100;
mov.b32 th, 0x0C080604;
and.b32 t, $1, 0x7777; prmt.b32 mw0, tl, th, t;
shr.b32 t, $1, 16; and.b32 t, t, 0x7777; prmt.b32 mw1, tl, th, t;
and.b32 t, $2, 0x7777; prmt.b32 ma0, tl, th, t;
shr.b32 t, $2, 16; and.b32 t, t, 0x7777; prmt.b32 ma1, tl, th, t;
xor.b32 s, $1, $2;
shl.b32 x, s, 4;
prmt.b32 m0, x, s, 0xD9C8;
prmt.b32 m1, x, s, 0xFBEA;
xor.b32 t, mw0, m0; dp4a.s32.s32 acc, t, ma0, $3;
and.b32 t, m0, 0x01010101; dp4a.s32.s32 acc, t, ma0, acc;
xor.b32 t, mw1, m1; dp4a.s32.s32 acc, t, ma1, acc;
and.b32 t, m1, 0x01010101; dp4a.s32.s32 $0, t, ma1, acc;
}"""


def _dot8(w, a, acc):
    return _asm(cutlass.Int32, _DOT8, "=r,r,r,r", cutlass.Int32(w), cutlass.Int32(a), cutlass.Int32(acc))


#: the fp16 decode of the tensor-core kernels (swap-AB here, the tile kernel): both operands carry
#: 2^-14, undone once in fp32
UNDO_2M28 = float(2 ** 28)

def _block_operands(rB, n, b, ops):
    """Token n's B operand registers of its unit block b from the block's 8 fp16x2 operands (``ops[4 h
    + a]``: pair a of code word h, :func:`kernels.router.quant.quant_block_f16`'s order): operand
    (v1, n, j) is pair 2 (j % 2) + v1 of code word j // 2.  Unrolled at trace time."""
    for h in range(2):
        for j2 in range(2):
            for v1 in range(2):
                rB[v1, n, 4 * b + 2 * h + j2] = ops[4 * h + 2 * j2 + v1]


def _smem_addr(ptr):
    """The 32-bit shared-window address of a shared-memory pointer."""
    return cutlass.Int32(llvm.ptrtoint(ir.IntegerType.get_signless(32), ptr.llvm_ptr))


def _cluster_store_f32(addr, rank, v):
    """One float to shared-memory address ``addr`` of cluster CTA ``rank`` (``st.shared::cluster``)."""
    ptx = "{ .reg .b32 ra; mapa.shared::cluster.u32 ra, $0, $1; st.shared::cluster.b32 [ra], $2; }"
    llvm.inline_asm(None, [cutlass.Int32(addr).ir_value(), cutlass.Int32(rank).ir_value(), _f2i(v).ir_value()],
                    ptx, "r,r,r", has_side_effects=True)


class _WarpRouter:
    """The routing step shared by the decode kernels and the tile kernel's route kernel: one warp
    routes one token.

    ``self.poll`` (compile-time): the logits come from other CTAs of the same launch through a
    workspace that holds :data:`SENTINEL` where nothing was written yet; the warp reloads until
    none is left (relaxed gpu-scope loads, a warp vote), routes, and writes the sentinel back for
    the next launch.  No counter, no fence, no atomic: the designated CTA starts reading while the
    others finish.  Otherwise the logits are read once (already complete)."""

    poll = False

    def _col(self, lane, j: int):
        """Expert id of a lane's j-th logit: with E a multiple of 128, lanes own runs of 4 (one
        16-byte load per 128 experts), else every 32nd expert."""
        if self.experts % 128 == 0:
            return 128 * (j // 4) + 4 * lane + j % 4
        return lane + 32 * j

    @cute.jit
    def _gather(self, mSrc: cute.Tensor, splits: cutlass.Constexpr, tok, lane, got: cute.Tensor):
        """``got[j] = sum(mSrc[y, tok, col(j)] for y in range(splits))``, the splits added in
        split order (every load independent; 16-byte loads where E allows)."""
        per_lane = self.experts // 32
        if cutlass.const_expr(self.experts % 128 == 0):
            T = mSrc.shape[1]
            E = self.experts
            part = cute.make_rmem_tensor(cute.make_layout((4, splits, per_lane // 4), stride=(1, 4, 4 * splits)),
                                         cutlass.Float32)
            for q in cutlass.range_constexpr(per_lane // 4):
                for y in cutlass.range_constexpr(splits):
                    off = cute.assume((y * T + tok) * E + 128 * q + 4 * lane, divby=4)
                    cute.autovec_copy(cute.make_tensor(mSrc.iterator + off, cute.make_layout(4)), part[None, y, q])
            for j in cutlass.range_constexpr(per_lane):
                v = part[j % 4, 0, j // 4]
                for y in cutlass.range_constexpr(1, splits):
                    v = v + part[j % 4, y, j // 4]
                got[j] = v
        else:
            for j in cutlass.range_constexpr(per_lane):
                col = self._col(lane, j)
                v = mSrc[0, tok, col]
                for y in cutlass.range_constexpr(1, splits):
                    v = v + mSrc[y, tok, col]
                got[j] = v

    @cute.jit
    def _gather_poll(self, mSrc: cute.Tensor, splits: cutlass.Constexpr, tok, lane, got: cute.Tensor):
        per_lane = self.experts // 32
        T = mSrc.shape[1]
        E = self.experts
        p32 = cute.recast_ptr(mSrc.iterator, dtype=cutlass.Int32)
        raw = cute.make_rmem_tensor(cute.make_layout(per_lane * splits), cutlass.Int32)
        # 16-byte loads where E allows (a lane's 4 experts of each 128), else (or probe variant
        # "narrow") one word per load
        vec = cutlass.const_expr(self.experts % 128 == 0 and "narrow" not in getattr(self, "variant", ""))
        pending = cutlass.Int32(1)
        while pending != 0:
            miss = cutlass.Int32(0)
            if cutlass.const_expr(vec):
                for q in cutlass.range_constexpr(per_lane // 4):
                    for y in cutlass.range_constexpr(splits):
                        off = cute.assume((y * T + tok) * E + 128 * q + 4 * lane, divby=4)
                        v = cute.arch.load((p32 + off).llvm_ptr, ir.VectorType.get([4], cutlass.Int32.mlir_type),
                                           sem="relaxed", scope="gpu")
                        four = cute.TensorSSA(v, (4,), cutlass.Int32)
                        for r in cutlass.range_constexpr(4):
                            b = four[r]
                            raw[(4 * q + r) * splits + y] = b
                            miss = miss | _sel(b == SENTINEL, cutlass.Int32(1), cutlass.Int32(0))
            else:
                for j in cutlass.range_constexpr(per_lane):
                    for y in cutlass.range_constexpr(splits):
                        b = cute.arch.load((p32 + ((y * T + tok) * E + self._col(lane, j))).llvm_ptr, cutlass.Int32,
                                           sem="relaxed", scope="gpu")
                        raw[j * splits + y] = b
                        miss = miss | _sel(b == SENTINEL, cutlass.Int32(1), cutlass.Int32(0))
            pending = _sel(cute.arch.vote_any_sync(miss != 0), cutlass.Int32(1), cutlass.Int32(0))
        for j in cutlass.range_constexpr(per_lane):
            v = _i2f(raw[j * splits])
            for y in cutlass.range_constexpr(1, splits):
                v = v + _i2f(raw[j * splits + y])
            got[j] = v
            for y in cutlass.range_constexpr(splits):
                # read by this warp alone; the next launch starts after this one ends
                cute.arch.store((p32 + ((y * T + tok) * E + self._col(lane, j))).llvm_ptr, cutlass.Int32(SENTINEL))

    @staticmethod
    def _recip(x, approx: bool):
        return cute.arch.rcp_approx(x) if approx else cutlass.Float32(1.0) / x

    @cute.jit
    def _route_warp(self, mSrc: cute.Tensor, splits: cutlass.Constexpr, alpha, mIds: cute.Tensor,
                    mW: cute.Tensor, tok, lane):
        """Route token ``tok``: the logit of expert ``col`` is ``alpha * sum(mSrc[y, tok, col] for
        y in range(splits))``.  Each lane keeps a sorted top-k of its E/32 logits
        (:func:`kernels.router.topk.sorted_insert`); the k picks are then serial over the warp
        (:meth:`_picks`).  The softmax denominator is summed after the picks (its max is the first
        pick), every exp independent, then a butterfly (the same bits in every lane and on every
        run)."""
        k = self.top_k
        per_lane = self.experts // 32
        clock = cutlass.const_expr("clock" in getattr(self, "variant", ""))
        st = [cutlass.Int32(0)] * 6
        if cutlass.const_expr(clock):
            st[0] = _stamp(cutlass.Int32(lane))
            st[1] = cute.arch.globaltimer_lo()
        got = cute.make_rmem_tensor(cute.make_layout(per_lane), cutlass.Float32)
        if cutlass.const_expr(self.poll):
            self._gather_poll(mSrc, splits, tok, lane, got)
        else:
            self._gather(mSrc, splits, tok, lane, got)
        if cutlass.const_expr(clock):
            st[2] = _stamp(_f2i(got[0]) ^ _f2i(got[per_lane - 1]))
        top_v, top_i = self._picks(got, alpha, lane, mIds, tok, st)
        ws = []
        fm = cutlass.const_expr(self.fast_exp and "exactexp" not in getattr(self, "variant", ""))
        if cutlass.const_expr(self.scoring == "softmax"):
            gm = top_v[0]
            if cutlass.const_expr(self.renormalize):
                ws = [cute.math.exp(v - gm, fastmath=fm) for v in top_v]
            else:
                tot = cute.math.exp(got[0] - gm, fastmath=fm)
                for j in cutlass.range_constexpr(1, per_lane):
                    tot = tot + cute.math.exp(got[j] - gm, fastmath=fm)
                for sh in cutlass.range_constexpr(5):
                    tot = tot + cute.arch.shuffle_sync_bfly(tot, offset=16 >> sh)
                inv = self._recip(tot, fm)
                ws = [cute.math.exp(v - gm, fastmath=fm) * inv for v in top_v]
        else:
            ws = [self._recip(cutlass.Float32(1.0) + cute.math.exp(-v, fastmath=fm), fm) for v in top_v]
        if cutlass.const_expr(self.renormalize):
            tot = ws[0]
            for j in cutlass.range_constexpr(1, k):
                tot = tot + ws[j]
            inv = self._recip(tot, fm)
            ws = [w * inv for w in ws]
        if cutlass.const_expr(clock):
            # probe variant "clock": timestamps instead of the routing (see kernels.router.probe)
            st[5] = _stamp(_f2i(ws[k - 1]))
            if lane == 0:
                for j in cutlass.range_constexpr(5):
                    mIds[tok, j] = st[j]
                mIds[tok, 5] = cute.arch.globaltimer_lo()
                mW[tok, 0] = _i2f(st[5])
        else:
            if cutlass.const_expr(not self.key_picks):
                if lane == 0:
                    for j in cutlass.range_constexpr(k):
                        mIds[tok, j] = top_i[j]
            if lane == 0:
                for j in cutlass.range_constexpr(k):
                    mW[tok, j] = ws[j]

    @cute.jit
    def _picks(self, got: cute.Tensor, alpha, lane, mIds: cute.Tensor, tok, st):
        """The warp's top-k of ``alpha * got`` (``got`` scaled in place): ``(values, ids)``,
        larger value first, then lower expert id (``DSL_OPS.better``).  Each lane keeps a sorted
        top-k of its logits; each pick is the max of the lanes' heads (``redux.sync`` over order
        keys) and the lane holding it pops its head.  (Picking from unsorted keys with max / min
        trees instead measured 0.1-0.2 us slower on the H200 at T=1: the picks are the serial
        part.)

        Three forms (``self.key_picks``, ``self.fast_picks``): float lists and a second
        ``redux.sync`` (the lowest id among the lanes holding the max) in every pick; the order
        keys (:func:`_order_key`) sorted as integers once, a ballot in each pick, and the second
        ``redux`` only when several lanes hold the max (exact ties across lanes); or (shipped) the
        key picks with the ballot off the chain (:meth:`_fast_picks`).  The key forms store the
        ids here."""
        k = self.top_k
        per_lane = self.experts // 32
        clock = cutlass.const_expr("clock" in getattr(self, "variant", ""))
        top_v = []
        top_i = []
        if cutlass.const_expr(self.key_picks):
            # a lane's ids grow with j: a strict > keeps the order (topk.ASCENDING_ID_OPS); empty
            # slots hold a NaN's key, so -inf still enters and NaN never does
            keys = [cutlass.Int32(KEY_FLOOR)] * k
            ids = [cutlass.Int32(EMPTY_ID)] * k
            for j in cutlass.range_constexpr(per_lane):
                got[j] = got[j] * alpha
                keys, ids = sorted_insert(keys, ids, _order_key(got[j]), cutlass.Int32(self._col(lane, j)),
                                          DSL_ASCENDING_ID_OPS)
            if cutlass.const_expr(clock):
                st[3] = _stamp(keys[k - 1] ^ ids[k - 1])
            if cutlass.const_expr(self.fast_picks):
                top_v = self._fast_picks(keys, ids, mIds, tok, st)
            for p in cutlass.range_constexpr(0 if self.fast_picks else k):
                best = _redux("max", keys[0])
                mine = keys[0] == best
                if cute.arch.popc(cute.arch.vote_ballot_sync(mine)) > 1:
                    mine = ids[0] == _redux("min", _sel(mine, ids[0], cutlass.Int32(2147483647)))
                if cutlass.const_expr(not clock):
                    if mine:
                        mIds[tok, p] = ids[0]
                top_v.append(_key_value(best))
                keys, ids = _pop_head(keys, ids, mine)
            if cutlass.const_expr(clock):
                st[4] = _stamp(_f2i(top_v[k - 1]))
        else:
            vals = [cutlass.Float32(-math.inf)] * k
            ids = [cutlass.Int32(EMPTY_ID)] * k
            for j in cutlass.range_constexpr(per_lane):
                got[j] = got[j] * alpha
                vals, ids = sorted_insert(vals, ids, got[j], self._col(lane, j), DSL_OPS)
            if cutlass.const_expr(clock):
                st[3] = _stamp(_f2i(vals[k - 1]) ^ ids[k - 1])
            for _ in cutlass.range_constexpr(k):
                key = _order_key(vals[0])
                best = _redux("max", key)
                bi = _redux("min", _sel(key == best, ids[0], cutlass.Int32(2147483647)))
                top_v.append(_key_value(best))
                top_i.append(bi)
                mine = ids[0] == bi  # expert ids are unique: one lane pops its head
                nv = []
                ni = []
                for j in cutlass.range_constexpr(k):
                    nxt_v = vals[j + 1] if j + 1 < k else cutlass.Float32(-math.inf)
                    nxt_i = ids[j + 1] if j + 1 < k else cutlass.Int32(EMPTY_ID)
                    nv.append(DSL_OPS.select(mine, nxt_v, vals[j]))
                    ni.append(DSL_OPS.select(mine, nxt_i, ids[j]))
                vals = nv
                ids = ni
            if cutlass.const_expr(clock):
                st[4] = _stamp(top_i[k - 1])
        return top_v, top_i

    #: the picks' form, see _picks (the key form stores the ids in _picks); H200: T=7, E=384
    #: 5.97 us against 6.21 with float picks, T=1 the same within 0.1 us
    key_picks = True
    #: the key form without the tie check in the picks' chain (:meth:`_fast_picks`); probe variant
    #: "slowpicks": the check in every pick
    fast_picks = True
    #: the route's exp and reciprocals from ``ex2.approx`` / ``rcp.approx`` (a few ulp; the
    #: validation's weights stay within 1e-4 of the reference, 1.3e-8 measured); probe variant
    #: "exactexp": the accurate ones (H200, T=1: 448 -> 297 cycles after the picks)
    fast_exp = True

    @cute.jit
    def _fast_picks(self, keys, ids, mIds: cute.Tensor, tok, st):
        """The key picks with nothing but ``redux.sync``, a compare and the pop in each pick's
        dependent chain: every lane holding the max pops its head.  The ballot that says whether
        more than one lane held it (an exact tie across lanes: two lanes popped, the picks after it
        are wrong) is off the chain; only after such a tie are the k picks redone from the lists
        as they were, the tie broken by the lowest id (:meth:`_pick_rounds`).  The ids are stored
        once the picks stand.  Returns the k values.  (H200, T=1: the picks' 712 cycles become
        382; 4.47 -> 4.07 us at E=384.)"""
        k = self.top_k
        clock = cutlass.const_expr("clock" in getattr(self, "variant", ""))
        tv = cute.make_rmem_tensor(cute.make_layout(k), cutlass.Int32)
        own = cute.make_rmem_tensor(cute.make_layout(k), cutlass.Int32)  # the id this lane picked, or -1
        if self._pick_rounds(keys, ids, tv, own, False) != 0:
            self._pick_rounds(keys, ids, tv, own, True)
        top_v = [_key_value(tv[p]) for p in range(k)]
        if cutlass.const_expr(clock):
            st[4] = _stamp(_f2i(top_v[k - 1]))
        else:
            for p in cutlass.range_constexpr(k):
                if own[p] >= 0:
                    mIds[tok, p] = own[p]
        return top_v

    @cute.jit
    def _pick_rounds(self, keys, ids, tv: cute.Tensor, own: cute.Tensor, exact: cutlass.Constexpr):
        """The k picks of :meth:`_fast_picks` from the lane lists ``keys``, ``ids`` into ``tv`` (the
        keys) and ``own`` (the id this lane picked, or -1).  Not ``exact``: every lane holding the
        max pops; returns nonzero when some pick was held by several lanes (a ballot, off the
        chain).  ``exact``: the lowest id among them (a second ``redux.sync``) pops alone."""
        tie = cutlass.Int32(0)
        for p in cutlass.range_constexpr(self.top_k):
            best = _redux("max", keys[0])
            mine = keys[0] == best
            if cutlass.const_expr(exact):
                mine = mine & (ids[0] == _redux("min", _sel(mine, ids[0], cutlass.Int32(2147483647))))
            else:
                tie = tie | _sel(cute.arch.popc(cute.arch.vote_ballot_sync(mine)) > 1, cutlass.Int32(1),
                                 cutlass.Int32(0))
            tv[p] = best
            own[p] = _sel(mine, ids[0], cutlass.Int32(-1))
            keys, ids = _pop_head(keys, ids, mine)
        return tie

    @cute.jit
    def _cta_stamp(self, mIds: cute.Tensor, T, cid, start, tidx):
        """Probe variant "clock": row ``T + cid`` of the (enlarged) ids tensor gets this CTA's
        start and end (after its partials are stored) as global-timer ns and SM clocks, and its SM."""
        if tidx == 0:
            r = T + cid
            mIds[r, 0] = start[1]
            mIds[r, 1] = cute.arch.globaltimer_lo()
            mIds[r, 2] = start[0]
            mIds[r, 3] = cute.arch.clock()
            mIds[r, 4] = _asm(cutlass.Int32, "mov.u32 $0, %smid;", "=r")


class GemvRouterKernel(_WarpRouter):
    """``experts`` (E, compile-time: the top-k scan is unrolled over E/32 columns per lane),
    ``tm`` tokens and ``rb`` experts per CTA; top_k / scoring / renormalize are compile-time."""

    def __init__(self, top_k: int, scoring: str, renormalize: bool, experts: int, tm: int = 1, rb: int = 2,
                 variant: str = "", quant: str = "", pdl: bool = False):
        if experts % 32 or experts // 32 > 64:
            raise ValueError(f"E={experts}: the GEMV router needs a multiple of 32 up to 2048")
        if experts % rb or tm > WARPS or rb * tm > THREADS:
            raise ValueError(f"bad GEMV config tm={tm} rb={rb} for E={experts}")
        if quant not in ("", "dynamic", "static"):
            raise ValueError(f"quant={quant!r}: '', 'dynamic' or 'static'")
        # quant: the CTA quantizes its tokens' bf16 activations itself (see kernel); "dynamic":
        # global scale amax / 2688 of the token group, "static": the layer's calibrated one
        self.quant = quant
        # probe variant "table" (calibrated scale): the blocks' thresholds from a per-CTA table of the
        # 127 scale codes, built while the loads are in flight (quant.build_threshold_table)
        self.quant_table = quant == "static" and "table" in variant
        # probe variant "search" (SM90+): the codes by bf16x2 compares (quant.ENCODE_PAIR_SEARCH) and
        # the block max by max.u16x2: the same bits in fewer instructions
        self.quant_search = bool(quant) and "search" in variant
        # probe variants "halves" / "quarters" (calibrated scale): two / four threads per 32-element
        # chunk, each quantizing one 16-block / half of one, the codes handed to the chunk's owner
        # through shared memory (_quant_dot_parts)
        self.parts = 4 if "quarters" in variant else 2 if "halves" in variant else 1
        if self.parts > 1 and quant != "static":
            raise ValueError("variants halves / quarters: the calibrated scale's in-kernel quantization only")
        self.threads = self.parts * THREADS
        self.top_k = top_k
        self.scoring = scoring
        self.renormalize = renormalize
        self.experts = experts
        self.tm = tm
        self.rb = rb
        # probe variants "noroute": logits only (what the route costs); "floatpicks": the float
        # picks (_WarpRouter._picks); "slowpicks": the tie check in every pick; "exactexp": the
        # accurate exp and division in the route; "narrow": polling one word per load; "clock":
        # timestamps instead of routing
        self.variant = variant
        self.key_picks = "floatpicks" not in variant
        self.fast_picks = self.key_picks and "slowpicks" not in variant
        self.poll = True
        # launched as a programmatic dependent of the kernel before it (the activation quantizer):
        # the weight loads go out, then griddepcontrol.wait (see await_inputs); SM90 and later
        self.pdl = pdl and not quant
        self.smem_bytes = (4 * LUT_SIZE + 4 * WARPS * rb * tm + 4 * WARPS + 96
                           + (4 * TABLE_CODES * TABLE_WORDS + 16 if self.quant_table else 0)
                           + (4 * 3 * 2 * THREADS * tm + 16 if self.parts > 1 else 0))

    @cute.jit
    def __call__(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
                 mAlpha: cute.Tensor, mLut: cute.Tensor, mLog: cute.Tensor, mIds: cute.Tensor,
                 mW: cute.Tensor, stream):
        groups = (mA.shape[0] + self.tm - 1) // self.tm
        self.kernel(mA, mSFA, mB, mSFB, mAlpha, mLut, mLog, mIds, mW).launch(
            grid=[self.experts // self.rb, groups, 1], block=[self.threads, 1, 1], smem=self.smem_bytes, stream=stream,
            use_pdl=self.pdl)

    @cute.jit
    def _load16(self, mX: cute.Tensor, row, kw, c, dst: cute.Tensor):
        """Four int32 words (32 FP4 codes) of row ``row`` at chunk ``c``: one 16-byte load."""
        off = cute.assume(row * kw + c * 4, divby=4)
        src = cute.make_tensor(mX.iterator + off, cute.make_layout(4))
        cute.autovec_copy(src, dst)

    @cute.jit
    def _load_chunk(self, mA, mSFA, mB, mSFB, c, n0, t0, T, kw, k_tiles,
                    rawB: cute.Tensor, sfB: cute.Tensor, rawA: cute.Tensor, sfA: cute.Tensor):
        """Every global load of chunk ``c`` (words and scale bytes of the rb rows and tm tokens)."""
        self._load_weights(mB, mSFB, c, n0, kw, k_tiles, rawB, sfB)
        self._load_activation(mA, mSFA, c, t0, T, kw, rawA, sfA)

    @cute.jit
    def _load_activation(self, mA, mSFA, c, t0, T, kw, rawA: cute.Tensor, sfA: cute.Tensor):
        """Chunk ``c`` of the tm tokens: code words and scale bytes."""
        for t in cutlass.range_constexpr(self.tm):
            tok = cutlass.min(t0 + t, T - 1)  # rows past T re-read row T-1, never stored
            self._load16(mA, tok, kw, c, rawA[None, t])
            sfA[0, t] = cutlass.Int32(mSFA[tok, 2 * c])
            sfA[1, t] = cutlass.Int32(mSFA[tok, 2 * c + 1])

    @cute.jit
    def _load_weights(self, mB, mSFB, c, n0, kw, k_tiles, rawB: cute.Tensor, sfB: cute.Tensor):
        """Chunk ``c`` of the rb weight rows: code words and scale bytes."""
        for r in cutlass.range_constexpr(self.rb):
            row = n0 + r
            self._load16(mB, row, kw, c, rawB[None, r])
            # the scales row-major (launch.row_major_scales, made once per layer): a warp's lanes
            # read 64 consecutive bytes of the row (chunk c: blocks 2c, 2c+1), where the 128x4
            # atoms put every lane's two bytes in its own sector (H200, T=1: 3.72 / 4.12 -> 3.53 /
            # 3.95 us at E=256 / 384)
            off = row * (k_tiles * 4) + 2 * c
            sfB[0, r] = cutlass.Int32(mSFB[off])
            sfB[1, r] = cutlass.Int32(mSFB[off + 1])

    @cute.kernel
    def kernel(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
               mAlpha: cute.Tensor, mLut: cute.Tensor, mLog: cute.Tensor, mIds: cute.Tensor,
               mW: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        bx, by, _ = cute.arch.block_idx()
        start = [cutlass.Int32(0), cutlass.Int32(0)]
        if cutlass.const_expr("clock" in self.variant):
            start = [cute.arch.clock(), cute.arch.globaltimer_lo()]
        tm, rb = self.tm, self.rb
        warp = tidx // 32
        lane = tidx % 32
        T = mA.shape[0]
        # int32 words of codes per row (K / 8); with in-kernel quantization mA is the bf16 rows (K / 2)
        kw = mA.shape[1] // 4 if cutlass.const_expr(self.quant) else mA.shape[1]
        nchunk = kw // 4  # 16-byte chunks per row (K / 32)
        k_tiles = kw // 8  # 64-element scale atoms per row (K / 64)
        n0 = bx * rb
        t0 = by * tm

        smem = cutlass.utils.SmemAllocator()
        sLut = smem.allocate_tensor(cutlass.Float32, cute.make_layout(LUT_SIZE), 16)
        sRed = smem.allocate_tensor(cutlass.Float32, cute.make_layout((WARPS, rb * tm), stride=(rb * tm, 1)), 16)
        sAmax = smem.allocate_tensor(cutlass.Int32, cute.make_layout(WARPS), 16)
        sThr = sAmax
        if cutlass.const_expr(self.quant_table):
            sThr = smem.allocate_tensor(cutlass.Int32, cute.make_layout(TABLE_CODES * TABLE_WORDS), 16)
        sQ = sAmax
        if cutlass.const_expr(self.parts > 1):
            # per token and 16-block: its two code words and its scale code
            sQ = smem.allocate_tensor(cutlass.Int32, cute.make_layout((tm, 2 * THREADS, 3), stride=(6 * THREADS, 3, 1)),
                                      16)
        acc = cute.make_rmem_tensor(cute.make_layout(rb * tm), cutlass.Float32)
        acc.fill(0.0)
        rawB = cute.make_rmem_tensor(cute.make_layout((4, rb), stride=(1, 4)), cutlass.Int32)
        rawA = cute.make_rmem_tensor(cute.make_layout((4, tm), stride=(1, 4)), cutlass.Int32)
        sfB = cute.make_rmem_tensor(cute.make_layout((2, rb), stride=(1, 2)), cutlass.Int32)
        sfA = cute.make_rmem_tensor(cute.make_layout((2, tm), stride=(1, 2)), cutlass.Int32)

        alpha = cutlass.Float32(1.0)
        if cutlass.const_expr(self.parts > 1):
            alpha = self._quant_dot_parts(mA, mSFA, mB, mSFB, mAlpha, mLut, sLut, sThr, sQ, tidx, n0, t0, T, kw,
                                           nchunk, k_tiles, rawB, sfB, rawA, sfA, acc)
        elif cutlass.const_expr(self.quant):
            alpha = self._quant_dot(mA, mSFA, mB, mSFB, mAlpha, mLut, sLut, sAmax, sThr, tidx, warp, lane, n0, t0, T,
                                    kw, nchunk, k_tiles, rawB, sfB, rawA, sfA, acc)
        else:
            # the first chunk's loads go out before the table load and its barrier; the weights
            # (never written by a kernel) before the wait for the kernel that writes the activation
            if tidx < nchunk:
                self._load_weights(mB, mSFB, tidx, n0, kw, k_tiles, rawB, sfB)
            await_inputs(self.pdl)
            if tidx < nchunk:
                self._load_activation(mA, mSFA, tidx, t0, T, kw, rawA, sfA)
            self._load_lut(mLut, sLut, tidx)
            cute.arch.sync_threads()
            for c in range(tidx, nchunk, THREADS):
                if c != tidx:
                    self._load_chunk(mA, mSFA, mB, mSFB, c, n0, t0, T, kw, k_tiles, rawB, sfB, rawA, sfA)
                self._dot_chunk(sLut, rawB, sfB, rawA, sfA, acc)
            alpha = mAlpha[0]

        # CTA sum: butterflies inside each warp, then the warps in a fixed order
        for i in cutlass.range_constexpr(rb * tm):
            v = acc[i]
            for sh in cutlass.range_constexpr(5):
                v = v + cute.arch.shuffle_sync_bfly(v, offset=16 >> sh)
            if lane == 0 and warp < WARPS:  # (the extra warps of halves / quarters hold no sums)
                sRed[warp, i] = v
        cute.arch.sync_threads()
        if tidx < rb * tm:
            s = sRed[0, tidx]
            for w in cutlass.range_constexpr(1, WARPS):
                s = s + sRed[w, tidx]
            r = tidx // tm
            t = tidx % tm
            if t0 + t < T:
                _publish(mLog, (t0 + t) * self.experts + n0 + r, s * alpha)
        if cutlass.const_expr("clock" in self.variant):
            self._cta_stamp(mIds, T, bx + by * (self.experts // rb), start, tidx)
        # CTA 0 of the token group routes it, reading the other CTAs' logits as they land.  It is
        # the first CTA dispatched and the others never wait for it, so the wait always ends.
        if cutlass.const_expr("noroute" not in self.variant):
            if bx == 0:
                if warp < tm:
                    if t0 + warp < T:
                        self._route_warp(mLog, 1, cutlass.Float32(1.0), mIds, mW, t0 + warp, lane)

    @cute.jit
    def _load_lut(self, mLut: cute.Tensor, sLut: cute.Tensor, tidx):
        for u in cutlass.range_constexpr(LUT_WORDS):
            li = _lut_index(tidx, u)
            sLut[li] = mLut[li]

    @cute.jit
    def _quant_dot(self, mX, mG, mB, mSFB, mGb, mLut, sLut, sAmax, sThr, tidx, warp, lane, n0, t0, T, kw, nchunk,
                   k_tiles, rawB, sfB, rawA, sfA, acc):
        """In-kernel quantization (one chunk per thread, K <= 32 x THREADS): thread c loads the
        bf16 activations of chunk c (32 per token, 64 bytes) after its weight loads, the CTA takes
        the max |x| of the token group (warp ``redux.sync`` + the table load's barrier: no barrier
        of its own), and each thread quantizes its two 16-blocks per token exactly as the
        activation quantizer does (``kernels.router.quant.quant_block``: the same bits, so the
        same logits as quantizer + kernel) into the registers the dot product reads.  Every CTA
        of a group computes the same global scale from the same values.  Returns ``alpha``."""
        tm = self.tm
        xw = [[cute.make_rmem_tensor(cute.make_layout(8), cutlass.Int32) for _ in range(2)] for _ in range(tm)]
        for t in cutlass.range_constexpr(tm):
            for b in cutlass.range_constexpr(2):
                xw[t][b].fill(0)
        if tidx < nchunk:
            self._load_weights(mB, mSFB, tidx, n0, kw, k_tiles, rawB, sfB)
            for t in cutlass.range_constexpr(tm):
                tok = cutlass.min(t0 + t, T - 1)  # rows past T re-read row T-1: the same max
                for b in cutlass.range_constexpr(2):
                    off = cute.assume(tok * (4 * kw) + tidx * 16 + b * 8, divby=8)
                    cute.autovec_copy(cute.make_tensor(mX.iterator + off, cute.make_layout(8)), xw[t][b])
        # the scalars before the barrier: a load after it would be one more L2 round trip on the
        # path from the activations to the first code
        gb = mGb[0]
        g = cutlass.Float32(0.0)
        if cutlass.const_expr(self.quant != "dynamic"):
            g = mG[0]
        # the decode table's loads go out before the threshold table's build, their stores after it
        # (a store waits for its load: in between, the build would wait behind it)
        lut = [mLut[_lut_index(tidx, u)] for u in range(LUT_WORDS)]
        if cutlass.const_expr(self.quant_table):
            g_early, _ = safe_scales(g)
            build_threshold_table(sThr, g_early, tidx)  # read after the barrier below
        for u in cutlass.range_constexpr(LUT_WORDS):
            sLut[_lut_index(tidx, u)] = lut[u]
        if cutlass.const_expr(self.quant_search):
            bam = [[max_of_magnitudes([xw[t][b][i] & 0x7FFF7FFF for i in range(8)]) for b in range(2)]
                   for t in range(tm)]
        else:
            bam = [[block_amax(xw[t][b]) for b in range(2)] for t in range(tm)]
        amax = cutlass.Int32(0)
        for t in cutlass.range_constexpr(tm):
            amax = cutlass.max(amax, cutlass.max(bam[t][0], bam[t][1]))
        amax = _redux("max", amax)  # non-negative float bits: the integer order is the float order
        if lane == 0:
            sAmax[warp] = amax
        cute.arch.sync_threads()
        if cutlass.const_expr(self.quant == "dynamic"):
            m = sAmax[0]
            for w in cutlass.range_constexpr(1, WARPS):
                m = cutlass.max(m, sAmax[w])
            g = global_scale(m)
        g_safe, d6 = safe_scales(g)
        out = cute.make_rmem_tensor(cute.make_layout(2), cutlass.Int32)
        for t in cutlass.range_constexpr(tm):
            for b in cutlass.range_constexpr(2):
                sfA[b, t] = quant_block(xw[t][b], bam[t][b], g_safe, d6, sThr if self.quant_table else None, out,
                                        self.quant_search)
                rawA[2 * b, t] = out[0]
                rawA[2 * b + 1, t] = out[1]
        if tidx < nchunk:
            self._dot_chunk(sLut, rawB, sfB, rawA, sfA, acc)
        return _mul_rn(g, gb)

    @cute.jit
    def _quant_dot_parts(self, mX, mG, mB, mSFB, mGb, mLut, sLut, sThr, sQ, tidx, n0, t0, T, kw, nchunk, k_tiles,
                         rawB, sfB, rawA, sfA, acc):
        """Variants "halves" / "quarters" of :meth:`_quant_dot` (calibrated scale): 2 / 4 times the
        threads.  Halves: thread q quantizes 16-block q of each token (half q % 2 of chunk q / 2);
        quarters: thread q the half q % 2 of block q / 2, the block's max taken with its partner
        lane by one shuffle; each as soon as its bf16 words arrive, into shared memory.  After the
        CTA barrier the chunk's owner (thread c < K / 32, as in the plain kernel) reads its two
        blocks' codes and scale codes and takes the dot products.  Each thread's chain is one
        block (half a block) instead of two, on 16 (32) warps instead of 8, so the quantization
        can finish while the weights are still in flight.  The same bits.  Returns ``alpha``."""
        tm = self.tm
        nw = 8 // (self.parts // 2)  # bf16x2 words per thread and token
        xw = [cute.make_rmem_tensor(cute.make_layout(nw), cutlass.Int32) for _ in range(tm)]
        for t in cutlass.range_constexpr(tm):
            xw[t].fill(0)
        if tidx < nchunk:
            self._load_weights(mB, mSFB, tidx, n0, kw, k_tiles, rawB, sfB)
        nblk = self.parts * nchunk  # threads with a share of the token
        if tidx < nblk:
            for t in cutlass.range_constexpr(tm):
                tok = cutlass.min(t0 + t, T - 1)  # rows past T re-read row T-1, never stored
                off = cute.assume(tok * (4 * kw) + tidx * nw, divby=nw)
                cute.autovec_copy(cute.make_tensor(mX.iterator + off, cute.make_layout(nw)), xw[t])
        gb = mGb[0]
        g = mG[0]
        g_safe, d6 = safe_scales(g)
        lut = [mLut[_lut_index(tidx, u)] for u in range(LUT_WORDS)]
        if cutlass.const_expr(self.quant_table):
            if tidx < THREADS:  # two threads per scale code
                build_threshold_table(sThr, g_safe, tidx)
        if tidx < THREADS:
            for u in cutlass.range_constexpr(LUT_WORDS):
                sLut[_lut_index(tidx, u)] = lut[u]
        if cutlass.const_expr(self.quant_table):
            cute.arch.sync_threads()  # the thresholds before the blocks that read them
        out = cute.make_rmem_tensor(cute.make_layout(2), cutlass.Int32)
        # quarters: every thread takes part in the partners' shuffle (one past the token holds zeros)
        active = tidx < nblk
        if cutlass.const_expr(self.parts == 4):
            active = tidx >= 0
        if active:
            for t in cutlass.range_constexpr(tm):
                if cutlass.const_expr(self.quant_search):
                    bam = max_of_magnitudes([xw[t][i] & 0x7FFF7FFF for i in range(nw)])
                else:
                    bam = block_amax_words(xw[t], nw)
                if cutlass.const_expr(self.parts == 4):
                    bam = cutlass.max(bam, cute.arch.shuffle_sync_bfly(bam, offset=1))
                sf = cutlass.Int32(0)
                if cutlass.const_expr(self.parts == 4):
                    sf = quant_half_block(xw[t], bam, g_safe, d6, sThr if self.quant_table else None, out,
                                          self.quant_search)
                    if tidx < nblk:
                        sQ[t, tidx // 2, tidx % 2] = out[0]
                        if tidx % 2 == 0:
                            sQ[t, tidx // 2, 2] = sf
                else:
                    sf = quant_block(xw[t], bam, g_safe, d6, sThr if self.quant_table else None, out,
                                     self.quant_search)
                    sQ[t, tidx, 0] = out[0]
                    sQ[t, tidx, 1] = out[1]
                    sQ[t, tidx, 2] = sf
        cute.arch.sync_threads()
        if tidx < nchunk:
            for t in cutlass.range_constexpr(tm):
                for b in cutlass.range_constexpr(2):
                    rawA[2 * b, t] = sQ[t, 2 * tidx + b, 0]
                    rawA[2 * b + 1, t] = sQ[t, 2 * tidx + b, 1]
                    sfA[b, t] = sQ[t, 2 * tidx + b, 2]
            self._dot_chunk(sLut, rawB, sfB, rawA, sfA, acc)
        return _mul_rn(g, gb)

    @cute.jit
    def _dot_chunk(self, sLut, rawB, sfB, rawA, sfA, acc):
        """One chunk's dot products in integers: each 8-code word pair is two ``prmt`` table
        lookups per operand (twice the E2M1 magnitudes: 0..12 as bytes), the product signs as byte
        masks, and four ``dp4a`` (:data:`_DOT8`); a 16-block's integer sum is 4x its code-value sum,
        exact (as the float sums of decoded code values were before: the same bits), and is scaled
        once.  No shared-memory load per code."""
        tm, rb = self.tm, self.rb
        for t in cutlass.range_constexpr(tm):
            sa0 = sLut[LUT_E4M3 + sfA[0, t]]
            sa1 = sLut[LUT_E4M3 + sfA[1, t]]
            for r in cutlass.range_constexpr(rb):
                i0 = _dot8(rawB[1, r], rawA[1, t], _dot8(rawB[0, r], rawA[0, t], cutlass.Int32(0)))
                i1 = _dot8(rawB[3, r], rawA[3, t], _dot8(rawB[2, r], rawA[2, t], cutlass.Int32(0)))
                b0 = cutlass.Float32(i0) * cutlass.Float32(0.25)
                b1 = cutlass.Float32(i1) * cutlass.Float32(0.25)
                sw0 = sLut[LUT_E4M3 + sfB[0, r]]
                sw1 = sLut[LUT_E4M3 + sfB[1, r]]
                acc[r * tm + t] = acc[r * tm + t] + b0 * (sw0 * sa0) + b1 * (sw1 * sa1)


def pick_gemv(num_tokens: int, experts: int):
    """(tm, rb): tokens per CTA (1, 2, 4 or 8) and experts per CTA.  One token: one expert per
    CTA (E CTAs of 256 threads; on the H200 3.96 / 4.46 us at E=256 / 384 against 4.07 / 4.67 with
    two); with more token groups each CTA takes more experts so the activation decode is shared by
    more rows."""
    tm = 1
    while tm < min(num_tokens, WARPS):
        tm *= 2
    groups = -(-num_tokens // tm)
    rb = 1 if num_tokens == 1 else 2 if groups <= 2 else 4
    while experts % rb:
        rb //= 2
    return tm, rb


#: the GEMV's forms of quantizing its own tokens (``GemvRouterKernel(quant=...)``): "" one thread per
#: 32-element chunk quantizing its two 16-blocks; "halves" / "quarters" (calibrated scale only) two /
#: four threads per chunk, each quantizing one block / half a block, the codes handed to the chunk's
#: owner through shared memory
GEMV_QUANT_FORMS = ("", "halves", "quarters")


def pick_gemv_quant(num_tokens: int, experts: int, form: str, static: bool, sm_major: int, sms: int):
    """``((tm, rb), variant)`` of the GEMV quantizing its own tokens in ``form``.

    "": :func:`pick_gemv`'s configuration, no variant (the form measured on the H200: 4.85-4.93 us at
    T=1, E=256).  "halves" / "quarters" with the calibrated scale (``static``): 512 / 1024 threads per
    CTA, so the fewest experts per CTA that keep the grid in one wave of ``sms`` CTAs (E=256: 2, 128
    CTAs; E=384: 3; a 1024-thread CTA fills an SM's registers at 43-64 a thread; where no count
    does, the most a CTA takes), the thresholds from the per-CTA table and, SM90+, the codes by
    bf16x2 compares (variants "table", "search").  With the dynamic scale the parts forms do not
    exist: "" is used."""
    if form not in GEMV_QUANT_FORMS:
        raise ValueError(f"GEMV quantizing form {form!r}: one of {GEMV_QUANT_FORMS}")
    tm, rb = pick_gemv(num_tokens, experts)
    if not form or not static:
        return (tm, rb), ""
    fits = [r for r in range(1, THREADS // tm + 1) if experts % r == 0]
    rb = next((r for r in fits if experts // r <= sms), fits[-1])
    return (tm, rb), form + "+table" + ("+search" if sm_major >= 9 else "")


_compiled = {}


def compile_gemv(top_k: int, scoring: str, renormalize: bool, experts: int, tm: int, rb: int, args,
                 variant: str = "", quant: str = "", pdl: bool = False):
    """Compile (cached by configuration; tensor shapes and strides are dynamic, E is not)."""
    key = (top_k, scoring, renormalize, experts, tm, rb, variant, quant, pdl)
    fn = _compiled.get(key)
    if fn is None:
        fn = cute.compile(GemvRouterKernel(top_k, scoring, renormalize, experts, tm, rb, variant, quant, pdl), *args)
        _compiled[key] = fn
    return fn


class MmaGemvRouterKernel(_WarpRouter):
    """Decode-sized router on the tensor cores, "swap AB": experts are the M side of
    ``mma.sync.m16n8k16`` (``mw`` blocks of 16 experts per CTA), tokens the N side (8 per n-tile,
    ``nt`` n-tiles per CTA).  The 16 K-slots of an MMA are a permutation of K shared by both
    operands (the dot product does not care about the order): lane ``q = lane % 4`` owns slots
    {2q, 2q+1, 2q+8, 2q+9}, and over the 8 MMAs of a 128-wide K step those are the 32 codes of one
    16-byte chunk.  So every operand register comes from one 16-byte load per row or token, decoded
    in registers with no shared-memory tile and no table: :func:`_dec_pair` turns the codes a and
    a+4 of a word into one fp16x2 register ``value * scale * 2^-14`` (exact, see :func:`_dec_pair`)
    in five integer/fp16x2 instructions, and both operands' 2^-14 are undone once (``* 2^28``).

    Grid ``[E/(16 mw), ksplit, ceil(T / (8 nt))]``; warp w of CTA y takes the K units ``y*8 + w``,
    ``+ 8*ksplit``, ...: a unit is ``uw`` words per lane (4: the 128-wide step above, one 16-byte
    load; 2 or 1: 64- or 32-wide, so that the units split evenly over the warps where the steps
    do not, :func:`swapab_unit_words`); the 8 warps' accumulators are summed in a fixed order,
    each CTA writes its K-split's partial logits to ``ws [ksplit, T, E]``, and the token group is
    routed one warp per token (:class:`_WarpRouter`), each logit the sum of its splits in split
    order times ``alpha`` (:func:`swapab_route`): polled by CTA (0, 0) of the group, by a
    designated CTA waiting on an atomic counter per 8 tokens, or by the last CTA to arrive (the
    same counter, reset by it).  Deterministic.

    ``warps`` per CTA (8, 12, 16; 8 above), ``spread``: CTAs that share an n-tile's route (8 /
    spread tokens each), ``pair``: the 2 K-split CTAs of a tile as a thread block cluster whose
    split 1 hands its partials to split 0 through distributed shared memory, split 0 publishing
    their sum for the polled route (:class:`SwapabConfig`, :func:`pick_mma_gemv`).

    ``quant`` (SM90+, the layer's calibrated activation scale): the kernel reads the bf16 tokens
    and quantizes them itself, each lane the 16-element blocks whose codes it would have loaded,
    straight into its fp16 operands (:func:`kernels.router.quant.quant_block_f16`: the fused
    quantizer's codes and scales, so the same bits as quantizer + kernel), the thresholds from a
    per-CTA table of the 127 scale codes built while the first loads are in flight: quantize-and-
    route in one launch, each token block quantized by the E / (16 mw) CTAs that share its K range
    instead of once.  ``mA`` is then the bf16 tokens as int32 words ``[T, K / 2]``, ``mSFA`` the
    global scale ``g`` and ``mAlpha`` ``g_b`` (``alpha = g * g_b``).

    ``operands``: ``mA`` is the activation as the fused quantizer's operand form (``[T, K / 2]``
    int32: each block's 8 fp16x2 operands, ``Nvfp4ActQuantKernel(operands=True)``), loaded where
    the codes were and used as they are: no decode of the tokens (``mSFA`` unused).
    """

    def __init__(self, top_k: int, scoring: str, renormalize: bool, experts: int, nt: int = 1, ksplit: int = 1,
                 poll: bool = False, variant: str = "", mw: int = 1, uw: int = 4, pdl: bool = False,
                 warps: int = WARPS, spread: int = 1, pair: bool = False, quant: bool = False,
                 operands: bool = False):
        if experts % 32 or experts // 32 > 64:
            raise ValueError(f"E={experts}: the decode router needs a multiple of 32 up to 2048")
        if quant and (uw == 1 or pdl or operands):
            raise ValueError("quant: whole 16-element blocks per lane (uw 2 or 4), no kernel before it")
        if operands and uw == 1:
            raise ValueError("operands: whole 16-element blocks per lane (uw 2 or 4)")
        self.quant = quant
        self.operands = operands
        # the tokens' B operands come whole from 4 uw words per token and unit (quantized from bf16
        # or loaded as the quantizer's operands), not decoded from codes
        self.words_b = quant or operands
        if experts % (16 * mw):
            raise ValueError(f"E={experts} is not a multiple of {16 * mw} experts per CTA (mw={mw})")
        if uw not in (1, 2, 4):
            raise ValueError(f"uw={uw}: a K unit is 1, 2 or 4 words per lane")
        # K unit: uw words (8 uw codes) per lane, 32 uw of K per quad, 2 uw MMAs; finer units let
        # the K range split evenly over the warps (see unit_words)
        self.uw = uw
        # poll: CTA (0, 0) of a token group routes it from a polled workspace (see _WarpRouter),
        # else the last CTA to arrive (a counter); probe variant "noroute": logits only
        self.poll = poll
        self.variant = variant
        # the route: polled workspace, a designated CTA waiting on the counter, or the last CTA to
        # arrive (counter): swapab_route, whose "poll" the launcher passes as ``poll`` (a sentinel
        # workspace); without one the waiting route takes its place
        route = swapab_route(ksplit, variant)
        self.route = "poll" if poll else "wait" if route == "poll" else route
        self.key_picks = "floatpicks" not in variant
        self.fast_picks = self.key_picks and "slowpicks" not in variant
        # a programmatic dependent launch: the first unit's weights load before await_inputs
        self.pdl = pdl
        self.ksplit = ksplit
        self.top_k = top_k
        self.scoring = scoring
        self.renormalize = renormalize
        self.experts = experts
        self.nt = nt
        self.mw = mw
        self.rows = 16 * mw  # experts per CTA
        # spread: CTAs sharing the route of an n-tile (8 / spread tokens each, one warp per token, so
        # fewer routing warps share a scheduler); probe variants "spreadN" force N
        for sp in (2, 4, 8):
            if f"spread{sp}" in variant:
                spread = sp
        if 8 % spread or spread > 1 and nt * spread > (experts // self.rows) * (1 if poll else ksplit):
            raise ValueError(f"spread {spread}: {nt} n-tiles need {nt * spread} CTAs per token row")
        self.route_spread = spread
        self.tn = 8 * nt  # tokens per CTA
        # warps per CTA (8, 12 or 16): more warps hide more of the loads' latency where the grid
        # is one CTA per SM (SwapabConfig); the route stays one warp per token
        if warps not in (8, 12, 16):
            raise ValueError(f"warps={warps}: 8, 12 or 16")
        self.warps = warps
        self.threads = 32 * warps
        # pair (2 K splits, polled route, SM90+): the two split CTAs of a tile form a thread block
        # cluster; split 1 stores its partials into split 0's shared memory (DSMEM), split 0 adds
        # them in split order and publishes the logits as one split: no counter, one polled split
        self.pair = pair
        if pair and (ksplit != 2 or not poll):
            raise ValueError("pair: 2 K splits and the polled route")
        # the hand-off: split 1's st.async stores complete split 0's mbarrier (transaction bytes),
        # no second cluster barrier; probe variant "pairbar": st.shared::cluster stores, then a
        # cluster barrier (release / acquire)
        self.pair_async = pair and "pairbar" not in variant
        # two CTAs per SM (<= 128 registers) where that costs no spills (checked with ptxas for
        # sm_90a: 16 x 16 tiles with 16-byte units, 48 x 16 with 4-byte units); larger take 158-255
        # registers and one CTA per SM
        self.ctas_per_sm = 2 if swapab_register_words(nt, mw, uw, self.words_b) <= 56 and warps == WARPS else 1
        self.smem_bytes = (2 * self.rows * 128 + 2 * self.tn * 128 + 4 * self.rows * self.tn * (2 if self.pair else 1)
                           + 4 * self.warps * self.rows * self.tn + 16 + 128
                           + (4 * TABLE_CODES * TABLE_WORDS + 16 if quant else 0))

    @cute.jit
    def __call__(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
                 mAlpha: cute.Tensor, mWs: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, mCnt: cute.Tensor,
                 stream):
        op = cute.nvgpu.warp.MmaF16BF16Op(cutlass.Float16, cutlass.Float32, (16, 8, 16))
        tiled_mma = cute.make_tiled_mma(op, cute.make_layout((1, 1, 1)))
        groups = (mA.shape[0] + self.tn - 1) // self.tn
        if cutlass.const_expr(self.pair):
            self.kernel(mA, mSFA, mB, mSFB, mAlpha, mWs, mIds, mW, mCnt, tiled_mma).launch(
                grid=[self.experts // self.rows, self.ksplit, groups], block=[self.threads, 1, 1],
                cluster=[1, 2, 1], smem=self.smem_bytes, stream=stream, min_blocks_per_mp=self.ctas_per_sm,
                use_pdl=self.pdl, preferred_smem_carveout=100)
        else:
            self.kernel(mA, mSFA, mB, mSFB, mAlpha, mWs, mIds, mW, mCnt, tiled_mma).launch(
                grid=[self.experts // self.rows, self.ksplit, groups], block=[self.threads, 1, 1],
                smem=self.smem_bytes, stream=stream, min_blocks_per_mp=self.ctas_per_sm, use_pdl=self.pdl,
                preferred_smem_carveout=50 if self.ctas_per_sm * self.smem_bytes <= 100 * 1024 else 100)

    @cute.jit
    def _load_words(self, mX: cute.Tensor, row, kw, wo, dst: cute.Tensor):
        off = cute.assume(row * kw + wo, divby=self.uw)
        src = cute.make_tensor(mX.iterator + off, cute.make_layout(self.uw))
        cute.autovec_copy(src, dst)

    @cute.jit
    def _load_step(self, mA, mSFA, mB, mSFB, s, rowsf, t0, g, q, T, kw, k_tiles,
                   rawW: cute.Tensor, sfW: cute.Tensor, rawX: cute.Tensor, sfX: cute.Tensor):
        """Raw words and scale bytes of K unit ``s`` for this lane: weight rows g, g+8 of every
        16-expert block (``rowsf``: each row and its scale-atom base offset) and the tokens g of
        every n-tile, words ``wo .. wo + uw`` of each (16-code blocks ``wo / 2 ..``)."""
        self._load_step_weights(mB, mSFB, s, rowsf, q, kw, rawW, sfW)
        self._load_step_tokens(mA, mSFA, s, t0, g, q, T, kw, rawX, sfX)

    @cute.jit
    def _load_step_weights(self, mB, mSFB, s, rowsf, q, kw, rawW: cute.Tensor, sfW: cute.Tensor):
        uw = self.uw
        wo = s * (4 * uw) + q * uw
        for r in cutlass.range_constexpr(2 * self.mw):
            self._load_words(mB, rowsf[0, r], kw, wo, rawW[None, r])
            for b in cutlass.range_constexpr(max(1, uw // 2)):
                bi = (wo >> 1) + b
                # 128x4 scale atoms (kernels.nvfp4.swizzle), K-tile inner
                sfW[b, r] = cutlass.Int32(mSFB[rowsf[1, r] + (bi >> 2) * 512 + (bi & 3)])

    @cute.jit
    def _load_step_tokens(self, mA, mSFA, s, t0, g, q, T, kw, rawX: cute.Tensor, sfX: cute.Tensor):
        uw = self.uw
        wo = s * (4 * uw) + q * uw
        for n in cutlass.range_constexpr(self.nt):
            tok = cutlass.min(t0 + n * 8 + g, T - 1)  # tokens past T re-read token T-1, never stored
            self._load_words(mA, tok, kw, wo, rawX[None, n])
            for b in cutlass.range_constexpr(max(1, uw // 2)):
                sfX[b, n] = cutlass.Int32(mSFA[tok, (wo >> 1) + b])

    @cute.jit
    def _load_step_words(self, mA, s, t0, g, q, T, kw, xw: cute.Tensor):
        """``quant`` / ``operands``: the words of K unit ``s`` for this lane's tokens (where its code
        words were: 4 uw int32 words per token, two bf16 elements or one fp16x2 operand each)."""
        uw = self.uw
        wo = s * (4 * uw) + q * uw
        for n in cutlass.range_constexpr(self.nt):
            tok = cutlass.min(t0 + n * 8 + g, T - 1)  # tokens past T re-read token T-1, never stored
            off = cute.assume(tok * (4 * kw) + 4 * wo, divby=4 * uw)
            cute.autovec_copy(cute.make_tensor(mA.iterator + off, cute.make_layout(4 * uw)), xw[None, n])

    @cute.jit
    def _quant_tokens(self, xw: cute.Tensor, g_safe, d6, sThr: cute.Tensor, rB: cute.Tensor):
        """``quant``: this unit's tokens quantized into the B operand registers: block b of token n
        is words 2b, 2b+1 of its codes, operand (v1, n, j) pair 2 (j % 2) + v1 of code word j // 2."""
        ops = cute.make_rmem_tensor(cute.make_layout(8), cutlass.Int32)
        for n in cutlass.range_constexpr(self.nt):
            for b in cutlass.range_constexpr(self.uw // 2):
                quant_block_f16([xw[8 * b + i, n] for i in range(8)], g_safe, d6, sThr, ops)
                _block_operands(rB, n, b, [ops[i] for i in range(8)])

    @cute.jit
    def _operand_tokens(self, xw: cute.Tensor, rB: cute.Tensor):
        """``operands``: this unit's B operand registers straight from the loaded words (block b of
        token n: words 8b..8b+7, in the order of ``_quant_tokens``' ``ops``)."""
        for n in cutlass.range_constexpr(self.nt):
            for b in cutlass.range_constexpr(self.uw // 2):
                _block_operands(rB, n, b, [xw[8 * b + i, n] for i in range(8)])

    @cute.jit
    def _alpha(self, mSFA: cute.Tensor, mAlpha: cute.Tensor):
        """The logits' fp32 factor: ``alpha``, or with ``quant`` ``g * g_b`` (mul.rn, as the quantizer)."""
        a = mAlpha[0]
        if cutlass.const_expr(self.quant):
            a = _mul_rn(mSFA[0], a)
        return a

    @cute.kernel
    def kernel(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
               mAlpha: cute.Tensor, mWs: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, mCnt: cute.Tensor,
               tiled_mma: cute.TiledMma):
        tidx, _, _ = cute.arch.thread_idx()
        bx, by, bz = cute.arch.block_idx()
        start = [cutlass.Int32(0), cutlass.Int32(0)]
        if cutlass.const_expr("clock" in self.variant):
            start = [cute.arch.clock(), cute.arch.globaltimer_lo()]
        nt, tn, mw, rows, uw = self.nt, self.tn, self.mw, self.rows, self.uw
        # shifts and masks, not // and %: the indices are non-negative, and signed division by a
        # constant costs several instructions each, ahead of the first loads
        warp = tidx >> 5
        lane = tidx & 31
        g = lane >> 2
        q = lane & 3
        T = mA.shape[0]
        E = self.experts
        # int32 words of codes per row (K / 8); with quant mA is the bf16 rows (K / 2 words)
        kw = mA.shape[1] // 4 if cutlass.const_expr(self.words_b) else mA.shape[1]
        steps = kw // (4 * uw)  # K units
        k_tiles = kw >> 3
        ksplit = self.ksplit
        n0 = bx * rows
        t0 = bz * tn
        # each weight row of the lane and the base offset of its 128x4 scale atoms
        rowsf = cute.make_rmem_tensor(cute.make_layout((2, 2 * mw), stride=(1, 2)), cutlass.Int32)
        for r in cutlass.range_constexpr(2 * mw):
            row = n0 + 16 * (r // 2) + g + 8 * (r % 2)
            rowsf[0, r] = row
            rowsf[1, r] = (row >> 7) * k_tiles * 512 + (row & 31) * 16 + ((row >> 5) & 3) * 4

        smem = cutlass.utils.SmemAllocator()
        # shapes only: the MMA fragments are partitioned from these, nothing is stored in them
        sA = smem.allocate_tensor(cutlass.Float16, cute.make_layout((rows, 128), stride=(128, 1)), 16)
        sB = smem.allocate_tensor(cutlass.Float16, cute.make_layout((tn, 128), stride=(128, 1)), 16)
        sC = smem.allocate_tensor(cutlass.Float32, cute.make_layout((rows, tn), stride=(tn, 1)), 16)
        sRed = smem.allocate_tensor(cutlass.Float32,
                                    cute.make_layout((self.warps, rows, tn), stride=(rows * tn, tn, 1)), 16)
        sFlag = smem.allocate_tensor(cutlass.Int32, cute.make_layout(8), 16)
        sThr = None
        if cutlass.const_expr(self.quant):
            sThr = smem.allocate_tensor(cutlass.Int32, cute.make_layout(TABLE_CODES * TABLE_WORDS), 16)
        sPeer = None
        sBar = None
        if cutlass.const_expr(self.pair):
            sPeer = smem.allocate_tensor(cutlass.Float32, cute.make_layout((rows, tn), stride=(tn, 1)), 16)
            if cutlass.const_expr(self.pair_async):
                # split 0's mbarrier: one arrival (its own, expecting the partials' bytes), then
                # complete when split 1's rows x tn words have landed
                sBar = smem.allocate_tensor(cutlass.Int64, cute.make_layout(1), 8)
                if tidx == 0:
                    if by == 0:
                        cute.arch.mbarrier_init(sBar.iterator, 1)
                        cute.arch.mbarrier_init_fence()
                        cute.arch.mbarrier_arrive_and_expect_tx(sBar.iterator, 4 * rows * tn)
            # phase 1 of the cluster barrier: waited on before the peer's shared memory is written
            # (it has started, its mbarrier is initialized), long done by then
            cute.arch.cluster_arrive_relaxed(aligned=True)

        thr_mma = tiled_mma.get_slice(lane)
        tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sA))  # ((2,2,2), mw, 8)
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))  # ((2,2), nt, 8)
        # the same registers as fp16x2 words: A word v1 + 2 v2 is (row g + 8 v1, K-slots 2q + 8 v2
        # and one more), B word v1 is (token g, K-slots 2q + 8 v1 and one more)
        rA = cute.recast_tensor(tCrA, cutlass.Int32)  # ((1,2,2), mw, 8)
        rB = cute.recast_tensor(tCrB, cutlass.Int32)  # ((1,2), nt, 8)
        tCsC = thr_mma.partition_C(sC)
        tCrC = tiled_mma.make_fragment_C(tCsC)  # ((2,2), mw, nt)
        tCrC.fill(0.0)

        nsb = max(1, uw // 2)  # scale bytes per row and unit
        rawW = cute.make_rmem_tensor(cute.make_layout((uw, 2 * mw), stride=(1, uw)), cutlass.Int32)
        sfW = cute.make_rmem_tensor(cute.make_layout((nsb, 2 * mw), stride=(1, nsb)), cutlass.Int32)
        rawX = cute.make_rmem_tensor(cute.make_layout((uw, nt), stride=(1, uw)), cutlass.Int32)
        sfX = cute.make_rmem_tensor(cute.make_layout((nsb, nt), stride=(1, nsb)), cutlass.Int32)
        # the next unit's raw registers: its loads are in flight while this unit decodes
        nW = cute.make_rmem_tensor(cute.make_layout((uw, 2 * mw), stride=(1, uw)), cutlass.Int32)
        nsW = cute.make_rmem_tensor(cute.make_layout((nsb, 2 * mw), stride=(1, nsb)), cutlass.Int32)
        nX = cute.make_rmem_tensor(cute.make_layout((uw, nt), stride=(1, uw)), cutlass.Int32)
        nsX = cute.make_rmem_tensor(cute.make_layout((nsb, nt), stride=(1, nsb)), cutlass.Int32)
        xw = None  # quant / operands: the words of this unit's tokens
        g_safe = cutlass.Float32(1.0)
        d6 = cutlass.Float32(6.0)
        if cutlass.const_expr(self.words_b):
            xw = cute.make_rmem_tensor(cute.make_layout((4 * uw, nt), stride=(1, 4 * uw)), cutlass.Int32)

        s0 = by * self.warps + warp
        stride = self.warps * ksplit
        if cutlass.const_expr(self.quant):
            # the global scale first (the table waits for it), then the first unit's weights and
            # tokens; the table of the 127 scale codes' thresholds is built while they load
            g_safe, d6 = safe_scales(mSFA[0])
            if s0 < steps:
                self._load_step_weights(mB, mSFB, s0, rowsf, q, kw, rawW, sfW)
                self._load_step_words(mA, s0, t0, g, q, T, kw, xw)
            if tidx < 2 * TABLE_CODES:
                build_threshold_table(sThr, g_safe, tidx)
            cute.arch.sync_threads()
        else:
            # the first unit: weights, then (a programmatic dependent launch) the wait for the kernel
            # that writes the activation, then the tokens
            if s0 < steps:
                self._load_step_weights(mB, mSFB, s0, rowsf, q, kw, rawW, sfW)
            await_inputs(self.pdl)
            if s0 < steps:
                if cutlass.const_expr(self.operands):
                    self._load_step_words(mA, s0, t0, g, q, T, kw, xw)
                else:
                    self._load_step_tokens(mA, mSFA, s0, t0, g, q, T, kw, rawX, sfX)

        for s in range(s0, steps, stride):
            if cutlass.const_expr(self.words_b):
                # all of this unit's B operands first (quantized, or the words as they are): the
                # words are then free for the next unit's, whose loads fly during this unit's MMAs
                if cutlass.const_expr(self.quant):
                    self._quant_tokens(xw, g_safe, d6, sThr, rB)
                else:
                    self._operand_tokens(xw, rB)
                if s + stride < steps:
                    self._load_step_weights(mB, mSFB, s + stride, rowsf, q, kw, nW, nsW)
                    self._load_step_words(mA, s + stride, t0, g, q, T, kw, xw)
            elif s + stride < steps:
                self._load_step(mA, mSFA, mB, mSFB, s + stride, rowsf, t0, g, q, T, kw, k_tiles, nW, nsW, nX, nsX)
            # MMA j takes pairs 2j (K-slots 2q, 2q+1) and 2j+1 (2q+8, 2q+9) of the lane's words;
            # pair p is codes (a, a+4) of word p // 4 with a = p % 4; words 0-1 are scale block 0
            # (2-3: block 1).  Decoded per MMA, so the decode of j+1 overlaps MMA j and few fp16
            # words are live
            for j in cutlass.range_constexpr(2 * uw):
                b = j // 4
                for r in cutlass.range_constexpr(2 * mw):
                    sc = _scale2(sfW[b, r])
                    for v2 in cutlass.range_constexpr(2):
                        rA[r % 2 + 2 * v2, r // 2, j] = _dec_pair(rawW[j // 2, r], sc, 2 * (j % 2) + v2)
                if cutlass.const_expr(not self.words_b):
                    for n in cutlass.range_constexpr(nt):
                        sx = _scale2(sfX[b, n])
                        for v1 in cutlass.range_constexpr(2):
                            rB[v1, n, j] = _dec_pair(rawX[j // 2, n], sx, 2 * (j % 2) + v1)
                cute.gemm(tiled_mma, tCrC, tCrA[None, None, j], tCrB[None, None, j], tCrC)
            if s + stride < steps:
                rawW.store(nW.load())
                sfW.store(nsW.load())
                if cutlass.const_expr(not self.words_b):
                    rawX.store(nX.load())
                    sfX.store(nsX.load())

        # the warps' accumulators, summed in warp order; 2^28 undoes both operands' 2^-14 (exact)
        sW = sRed[warp, None, None]
        tCsW = thr_mma.partition_C(sW)
        for i in cutlass.range_constexpr(cute.size(tCrC)):
            tCsW[i] = tCrC[i]
        cute.arch.sync_threads()
        nu = -(-(rows * tn) // self.threads)
        mine = None  # pair: this thread's own sums until split 1's arrive
        if cutlass.const_expr(self.pair):
            mine = cute.make_rmem_tensor(cute.make_layout(nu), cutlass.Float32)
            cute.arch.cluster_wait()
        for u in cutlass.range_constexpr(nu):
            idx = tidx + u * self.threads
            if idx < rows * tn:
                r = idx // tn
                t = idx % tn
                acc = sRed[0, r, t]
                for w in cutlass.range_constexpr(1, self.warps):
                    acc = acc + sRed[w, r, t]
                acc = acc * cutlass.Float32(UNDO_2M28)
                if cutlass.const_expr(self.pair):
                    mine[u] = acc
                    if by == 1:
                        if cutlass.const_expr(self.pair_async):
                            cute.arch.store_async_dsmem(sPeer.iterator + idx, _f2i(acc), sBar.iterator, 0)
                        else:
                            _cluster_store_f32(_smem_addr(sPeer.iterator + idx), 0, acc)
                elif t0 + t < T:
                    if cutlass.const_expr(self.poll):
                        _publish(mWs, (by * T + t0 + t) * E + n0 + r, acc)
                    else:
                        mWs[by, t0 + t, n0 + r] = acc
        if cutlass.const_expr(self.pair):
            # split 1's partials are in split 0's sPeer once its mbarrier completes (or, "pairbar",
            # after the second cluster barrier); split 0 adds them in split order and publishes
            # the logits as one split
            if cutlass.const_expr(self.pair_async):
                if by == 0:
                    cute.arch.mbarrier_wait(sBar.iterator, 0)
            else:
                cute.arch.cluster_arrive(aligned=True)
                cute.arch.cluster_wait()
            if by == 0:
                for u in cutlass.range_constexpr(nu):
                    idx = tidx + u * self.threads
                    if idx < rows * tn:
                        t = idx % tn
                        if t0 + t < T:
                            _publish(mWs, (t0 + t) * E + n0 + idx // tn, mine[u] + sPeer[idx // tn, t])
        if cutlass.const_expr("clock" in self.variant):
            self._cta_stamp(mIds, T, bx + (E // rows) * (by + ksplit * bz), start, tidx)

        if cutlass.const_expr("noroute" in self.variant):
            pass
        elif cutlass.const_expr(self.route == "wait"):
            self._route_waiting(mWs, mSFA, mAlpha, mIds, mW, mCnt, tidx, warp, lane, bx, by, bz, t0, T)
        elif cutlass.const_expr(self.poll):
            # CTA (n, 0) of the token group routes its n-tile n, one warp per token, reading the
            # other CTAs' partials as they land (n-tiles on different CTAs: routed in parallel);
            # with a spread s, CTA (n s + j, 0) routes part j of n-tile n (8 / s tokens), so fewer
            # routing warps share a scheduler
            sp = self.route_spread
            splits = 1 if self.pair else ksplit
            if by == 0:
                alpha = self._alpha(mSFA, mAlpha)
                if cutlass.const_expr(nt * sp > E // rows):
                    for n in cutlass.range_constexpr(nt):
                        if bx == n % (E // rows):
                            tok = t0 + 8 * n + warp
                            if warp < 8:
                                if tok < T:
                                    self._route_warp(mWs, splits, alpha, mIds, mW, tok, lane)
                elif bx < nt * sp:
                    # CTA bx routes part bx % sp of n-tile bx // sp: one inlined route
                    tok = t0 + 8 * (bx // sp) + (8 // sp) * (bx % sp) + warp
                    if warp < 8 // sp:
                        if tok < T:
                            self._route_warp(mWs, splits, alpha, mIds, mW, tok, lane)
        else:
            # one counter per 8 tokens: the last CTA to finish a routing group routes its 8 tokens,
            # one per warp, so the routing of a CTA's n-tiles can fall to different CTAs.
            # Publication as in the GEMV kernel: barrier, then thread 0's atom.acq_rel.gpu; barrier
            # after it.
            self._route_groups(mWs, mSFA, mAlpha, mIds, mW, mCnt, sFlag, tidx, warp, lane, bz, t0, T)

    @cute.jit
    def _route_waiting(self, mWs, mSFA, mAlpha, mIds, mW, mCnt, tidx, warp, lane, bx, by, bz, t0, T):
        """Waiting route: every CTA counts itself in on each 8-token group it covers (one counter
        per group, after a barrier: its partials are stored); the group's designated CTAs wait on
        the counter (thread 0 spins with acquire loads) and route it, one warp per token, so a
        CTA's groups are routed by different CTAs in parallel.  ``route_spread`` CTAs share an
        n-tile (8 / spread tokens each: fewer routing warps per SM); each adds 1 to the counter
        once it has seen it complete and the last of them resets it for the next launch.  The
        designated CTAs are the lowest-numbered of their token rows, dispatched first, and at most
        spread * T/8 of them wait, far fewer than the CTAs a GPU holds at once for the spreads
        shipped (1; 2-8 are probe variants), so the CTAs they wait for always get an SM."""
        nt = self.nt
        sp = self.route_spread
        per = 8 // sp
        gx = self.experts // self.rows
        total = gx * self.ksplit
        cid = bx + gx * by
        cute.arch.sync_threads()
        if tidx < nt:
            if t0 + 8 * tidx < T:
                cute.arch.atomic_add((mCnt.iterator + bz * nt + tidx).llvm_ptr, cutlass.Int32(1), sem="acq_rel",
                                     scope="gpu")
        alpha = self._alpha(mSFA, mAlpha)
        if cutlass.const_expr(sp == 1):
            if by == 0:
                for n in cutlass.range_constexpr(nt):
                    if bx == n % gx:
                        if t0 + 8 * n < T:
                            self._wait_count((mCnt.iterator + bz * nt + n).llvm_ptr, total, tidx)
                            tok = t0 + 8 * n + warp
                            if warp < 8:
                                if tok < T:
                                    self._route_warp(mWs, self.ksplit, alpha, mIds, mW, tok, lane)
                            if tidx == 0:
                                mCnt[bz * nt + n] = cutlass.Int32(0)  # every CTA counted in: ready for the next launch
        else:
            # CTA cid < nt * spread routes part cid % spread of n-tile cid // spread (the launcher
            # keeps nt * spread <= the CTAs of a token row): one inlined route
            if cid < nt * sp:
                n = cid // sp
                tok = t0 + 8 * n + (cid % sp) * per + warp
                if t0 + 8 * n < T:
                    ptr = (mCnt.iterator + bz * nt + n).llvm_ptr
                    self._wait_count(ptr, total, tidx)
                    if warp < per:
                        if tok < T:
                            self._route_warp(mWs, self.ksplit, alpha, mIds, mW, tok, lane)
                    if tidx == 0:
                        # the last designated CTA to finish resets it (all have passed their wait)
                        seen = cute.arch.atomic_add(ptr, cutlass.Int32(1), sem="relaxed", scope="gpu")
                        if seen == total + sp - 1:
                            mCnt[bz * nt + n] = cutlass.Int32(0)

    @cute.jit
    def _wait_count(self, ptr, total, tidx):
        """Thread 0 spins (acquire loads) until the counter reaches ``total``; then a barrier."""
        if tidx == 0:
            got = cute.arch.load(ptr, cutlass.Int32, sem="acquire", scope="gpu")
            while got < total:
                got = cute.arch.load(ptr, cutlass.Int32, sem="acquire", scope="gpu")
        cute.arch.sync_threads()

    @cute.jit
    def _route_groups(self, mWs, mSFA, mAlpha, mIds, mW, mCnt, sFlag, tidx, warp, lane, bz, t0, T):
        nt = self.nt
        E = self.experts
        ksplit = self.ksplit
        cute.arch.sync_threads()
        if tidx < nt:
            if t0 + 8 * tidx < T:
                old = cute.arch.atomic_add((mCnt.iterator + bz * nt + tidx).llvm_ptr, cutlass.Int32(1),
                                           sem="acq_rel", scope="gpu")
                sFlag[tidx] = old
        cute.arch.sync_threads()
        alpha = self._alpha(mSFA, mAlpha)
        for n in cutlass.range_constexpr(nt):
            if t0 + 8 * n < T:
                if sFlag[n] == (E // self.rows) * ksplit - 1:
                    tok = t0 + 8 * n + warp
                    if warp < 8:
                        if tok < T:
                            self._route_warp(mWs, ksplit, alpha, mIds, mW, tok, lane)
                    if tidx == 0:
                        mCnt[bz * nt + n] = cutlass.Int32(0)  # ready for the next launch


def swapab_register_words(nt: int, mw: int, uw: int, quant: bool = False) -> int:
    """A lane's raw operand words (this unit's and the next's: 2 mw weight rows and nt tokens, uw
    words and the scale bytes each; with ``quant`` one set of 4 uw bf16 words per token, reloaded
    once quantized) plus its accumulators: the register estimate behind ``ctas_per_sm``."""
    sb = max(1, uw // 2)
    return 2 * 2 * mw * (uw + sb) + nt * (4 * uw if quant else 2 * (uw + sb)) + 4 * mw * nt


class SwapabConfig(NamedTuple):
    """A swap-AB launch: 8-token n-tiles per CTA, K splits, 16-expert blocks per CTA, words per
    lane of a K unit, warps per CTA, CTAs sharing each n-tile's route, split pairs as clusters
    (see :class:`MmaGemvRouterKernel`)."""
    nt: int
    ksplit: int
    mw: int
    uw: int
    warps: int = WARPS
    spread: int = 1
    pair: bool = False

    @classmethod
    def of(cls, config, hidden: int = 0) -> "SwapabConfig":
        """``(nt, ksplit[, mw[, uw[, warps, spread, pair]]])``: mw 1 and the K unit
        :func:`swapab_unit_words` picks for ``hidden`` (4 without one) unless given."""
        nt, ksplit, *rest = config
        mw = rest[0] if rest else 1
        uw = rest[1] if len(rest) > 1 else swapab_unit_words(hidden, ksplit) if hidden else 4
        return cls(nt, ksplit, mw, uw, *rest[2:4], *(bool(p) for p in rest[4:5]))


def pick_mma_gemv(num_tokens: int, experts: int, hidden: int, target_ctas: int = 264, sm: int = 90,
                  sms: int = 132) -> SwapabConfig:
    """The grid (:func:`_swapab_grid`: about ``target_ctas`` CTAs, two per H200 SM, or one CTA per
    SM), the K unit (:func:`swapab_unit_words`), and for a grid of one CTA per SM its form (H200,
    T=128, in one call each): 16 warps and the polled route spread over 4 CTAs per n-tile for
    16 x 16 tiles (E=256: 8.6 -> 7.9-8.0 us), 12 warps (the most 48 x 16 tiles' 154-158 registers
    allow), the K-split pair as a cluster and the polled route over 4 CTAs for 48 x 16 tiles
    (E=384: 11.0-11.2 -> 9.8 us).  ``sm``: the device's SM version (clusters from SM90), ``sms``
    its SM count: the grid is one wave only if every CTA gets its own SM (then no polling CTA can
    hold an SM another CTA of its token group waits for).  The same forms after the quantizer
    (as its programmatic dependent: :func:`kernels.router.launch.pdl_helps`)."""
    nt, ksplit, mw = _swapab_grid(num_tokens, experts, hidden, target_ctas)
    uw = swapab_unit_words(hidden, ksplit)
    gx = experts // (16 * mw)
    one_wave = gx * ksplit * -(-num_tokens // (8 * nt)) <= min(target_ctas // 2, sms)
    if not one_wave or swapab_register_words(nt, mw, uw) <= 56 and ksplit > 1:
        return SwapabConfig(nt, ksplit, mw, uw)  # two CTAs of 8 warps per SM (T=7)
    spread = 4 if nt * 4 <= gx else 2 if nt * 2 <= gx else 1
    # the K unit stays the one picked for 8 warps (measured: 16 x 16 tiles with 16 warps 8.0 us
    # with 16-byte units, 8.4 with 8-byte ones)
    if mw == 1 and ksplit == 1:
        return SwapabConfig(nt, ksplit, mw, uw, 16, spread)
    if ksplit == 2 and sm >= 90:
        return SwapabConfig(nt, ksplit, mw, uw, 12, spread, True)
    return SwapabConfig(nt, ksplit, mw, uw, 12)


#: SASS instructions of a K unit's loop relative to a 128-wide step's (48 x 16 tile, sm_90a:
#: 851 for 16-byte units, 445 for 8-byte ones)
_UNIT_COST = {4: 1.0, 2: 0.52}


def swapab_unit_words(hidden: int, ksplit: int) -> int:
    """Words per lane of a K unit (4: 128-wide steps, 2: 64-wide), the one with the least decode
    for the slowest warp (ceil(units / warps) units): a CTA takes as long as its slowest warp.
    H200, T=128, E=384, 2 K splits: 56 steps over 16 warps are 4 for half of them (3.5 on
    average), 112 half-steps are 7 for all; without the route 8.86 us against 9.55."""
    warps = WARPS * ksplit
    best = None
    for uw in (4, 2):
        cost = -(-(hidden // (32 * uw)) // warps) * _UNIT_COST[uw]
        if best is None or cost < best[0]:
            best = (cost, uw)
    return best[1]


def _swapab_grid(num_tokens: int, experts: int, hidden: int, target_ctas: int):
    sms = target_ctas // 2
    nt = 1 if num_tokens <= 8 else 2
    groups = -(-num_tokens // (8 * nt))
    base = (experts // 16) * groups
    if base >= sms - 4:
        # the token groups and 16-expert blocks already fill the SMs: no K split.  Past one CTA
        # per SM, 48 experts per CTA with 2 K splits when that grid fits one CTA per SM (H200,
        # T=128, E=384: 12.4 us against 13.2 for 16 experts, whose 192 CTAs leave 60 SMs with
        # two); larger tiles decode less per MMA but measured slower (E=256: 32 experts 9.6 us,
        # 64 13.8, against 8.9 for 16; 32 tokens per CTA 12.4-19.1)
        if base > sms and experts % 48 == 0 and (experts // 48) * groups * 2 <= sms:
            return nt, 2, 3
        return nt, 1, 1
    steps = hidden // 128
    ksplit = max(1, min(-(-steps // WARPS), 8, -(-target_ctas // base)))
    return nt, ksplit, 1


#: the swap-AB kernel's route by K splits: polled (see _WarpRouter) up to POLL_MAX_KSPLIT, then the
#: waiting route up to WAIT_MAX_KSPLIT, else counted.  H200: the polled route was 0.4-1.0 us faster
#: than the counted one at T=128 and 512 (1-3 splits) and 0.15-0.4 us slower at T=7 with 7 splits
#: (the routing warp reloads 7 partials per logit until the last lands); at T=128, E=384 (2 splits)
#: the waiting route is 0.3 us faster than the polled one (11.25 against 11.55 us, both with key picks)
POLL_MAX_KSPLIT = 1
WAIT_MAX_KSPLIT = 3


def swapab_route(ksplit: int, variant: str = "") -> str:
    """"poll", "wait" or "count": by K splits, or the one a probe variant names."""
    for route in ("poll", "wait", "count"):
        if route in variant:
            return route
    return "poll" if ksplit <= POLL_MAX_KSPLIT else "wait" if ksplit <= WAIT_MAX_KSPLIT else "count"


def swapab_polls(ksplit: int, variant: str = "") -> bool:
    """Whether the swap-AB kernel polls (its launcher then gives it a sentinel-filled workspace)."""
    return swapab_route(ksplit, variant) == "poll"


def compile_mma_gemv(top_k: int, scoring: str, renormalize: bool, experts: int, nt: int, ksplit: int, args,
                     poll: bool = False, variant: str = "", mw: int = 1, uw: int = 4, pdl: bool = False,
                     warps: int = WARPS, spread: int = 1, pair: bool = False, quant: bool = False,
                     operands: bool = False):
    key = ("mma", top_k, scoring, renormalize, experts, nt, ksplit, poll, variant, mw, uw, pdl, warps, spread, pair,
           quant, operands)
    fn = _compiled.get(key)
    if fn is None:
        fn = cute.compile(MmaGemvRouterKernel(top_k, scoring, renormalize, experts, nt, ksplit, poll, variant, mw,
                                              uw, pdl, warps, spread, pair, quant, operands), *args)
        _compiled[key] = fn
    return fn
