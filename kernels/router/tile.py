"""Pipelined tensor-core tile kernel of the fused NVFP4 router, for many tokens (prefill sizes).

One CTA of 4 warps computes a 128 x 128 tile of logits (tokens x experts) over a K range:

* **cp.async ring** (4 deep, 3 where a CTA gets less SMEM: :func:`pick_stages`) of the *packed* operands: per 64-wide k-tile the FP4 words
  of 128 token rows and 128 expert rows (4 KB each) and their E4M3 scale words; raw bytes are 4x
  smaller than bf16, so the ring stays small and the loads run 2-3 k-tiles ahead.
* **decode once per tile** from the raw ring into a double-buffered fp16 tile (swizzled for
  ``ldmatrix``): each thread turns 16-byte chunks (32 codes) into fp16 pairs with bit operations and
  one ``mul.rn.f16x2`` by the block scale, interleaved with the MMAs of the previous k-tile.
  fp16, not bf16: an E2M1 code placed in the fp16 exponent/mantissa field is its value times
  2^-14 (subnormal codes included), so decode needs no per-element table or fix-up, and
  ``value * 2^-14 * scale`` is exact in fp16 (<= 6 significant bits, >= 2^-24, <= 0.17); both
  operands carry 2^-14, undone once by the fp32 epilogue factor ``alpha * 2^28``.
  The 8 codes of a word are stored in the order 0,4,1,5,2,6,3,7 (pairs that share one shift), for
  tokens and experts alike: the dot product does not depend on the order of K.
* ``ldmatrix`` + ``mma.sync.m16n8k16`` fp16 -> fp32, warps 2 x 2, 64 x 64 per warp.
* split-K and N-tiles over CTAs (grid ``[T/128, splits, E/128]``); each CTA writes its fp32 partial
  tile (x alpha) to a workspace ``[splits, T padded to 128, E]`` and :class:`SplitRouteKernel`, a
  second launch, sums each logit's partials in split order (deterministic) and keeps the top-k, one
  warp per token.  ``route_in_kernel=True`` instead routes in this launch (the last CTA of each row
  tile, one atomic counter reset by that CTA, the top-k epilogue of
  :class:`kernels.router.portable.PortableRouterKernel`); slower on the H200 (see __init__).

Portable: cp.async, ldmatrix and mma.sync exist on SM80, SM90 and SM120; no TMA, wgmma or tcgen05.

``quant=True`` (SM90+, calibrated scale; the probe's, not a router path): the token rows arrive as
bf16 in a ring of their own and each k-tile is quantized into the decoded tile by
:func:`kernels.router.quant.quant_block_f16` (the bits of quantizer + this kernel); measured slower
on the H200 than the quantizer + this kernel (T=4096, E=256: 114.6 against 92.6 us).
``quant_warps=4`` (probe; built 2026-12-05 without a device, NOT measured): a warpgroup of its own
quantizes the token rows (units 0, 1) while the 4 MMA warps decode the expert rows and run the MMAs,
the two warpgroups meeting at the ring's barriers (a named barrier of the CTA's 256 threads, once
per k-tile); launched at 128 registers a thread (two CTAs per SM), ``setmaxnreg`` gives the MMA
warpgroup ``mma_regs`` (default 200) and the quantizing one the rest.  The shipped kernel ran its
issue slots 25 % busy with the register file full (ncu), so the quantization may fill idle issue
slots instead of stalling the MMA loop.  sm_90a SASS per k-tile: MMA loop 529 instructions (6
spills) at 200 registers, 504 (1) at 208; quantizing loop 929 (34 spills) at 56 registers, 976 (55)
at 48 (the in-range path; the division fallback left out of the count).
"""

from __future__ import annotations

import math

import cutlass
import cutlass.cute as cute

from .gemv import UNDO_2M28, _WarpRouter, await_inputs
from .quant import (TABLE_CODES, TABLE_WORDS, _dec_pair, _mul_rn, _scale2, build_threshold_table, quant_block_f16,
                    safe_scales)
from .portable import DSL_OPS, PortableRouterKernel
from .topk import EMPTY_ID, global_expert_index, sorted_insert

BM = 128  # token rows per CTA
BN = 128  # experts per CTA
BK = 64  # K elements per k-tile: 8 int32 words of codes, 4 scale blocks (one scale word) per row
THREADS = 128
STAGES = 4  # cp.async ring depth (raw k-tiles) where the SMEM allows it; 3 where it does not (SM120)
WORDS = BK // 8
# one raw stage, in int32 words: A codes, B codes, A scale words (one per row), B scale atom
OFF_BW = BM * WORDS
OFF_ASC = OFF_BW + BN * WORDS
OFF_BSC = OFF_ASC + BM
RAW_WORDS = OFF_BSC + BN
TILE_HALVES = 128 * BK  # one decoded 128 x 64 fp16 tile
# the quantizing form (``quant``): the token rows' bf16 words in a ring of their own (16-byte chunks
# swizzled by row, so that the cp.async writes and the quantizing reads are conflict-free), the
# expert rows' codes and scale atom in the other
Q_ROW_WORDS = BK // 2  # bf16 words of one token row per k-tile
Q_A_STAGE = BM * Q_ROW_WORDS
Q_B_STAGE = BN * WORDS + BN
Q_STAGES = 2  # two slots each, loads two k-tiles ahead (see TileRouterKernel.ahead): ~110 KB per CTA
# quantizing warps of their own (quant_warps=4): the MMA warpgroup's registers after setmaxnreg (the
# quantizing warpgroup keeps 256 - this: two 256-thread CTAs fill the SM's 65,536)
MMA_REGS = 200


# insertion in increasing id order: "better" is a plain ">" (the earlier, lower id wins a tie)
_STRICT_OPS = DSL_OPS._replace(better=lambda v, i, s, j: v > s)


@cute.jit
def _gptr(t: cute.Tensor):
    """``t``'s base as a global-memory pointer (cp.async wants one; a tensor made from host memory,
    as in the CPU compile check, is generic)."""
    return cute.make_ptr(t.element_type, t.iterator.toint(), cute.AddressSpace.gmem, assumed_align=16)


class TileRouterKernel(PortableRouterKernel):
    """top_k / scoring / renormalize / splits are compile-time (the last CTA's reduction is unrolled
    over the splits, so its loads are independent)."""

    def __init__(self, top_k: int, scoring: str, renormalize: bool, splits: int = 1, variant: str = "",
                 route_in_kernel: bool = False, stages: int = STAGES, stream_k_ctas: int = 0, pdl: bool = False,
                 quant: bool = False, ahead: int = 0, quant_warps: int = 0, mma_regs: int = MMA_REGS):
        super().__init__(top_k, scoring, renormalize, bm=BM, threads=THREADS, split_k=True)
        # a programmatic dependent launch (after the activation quantizer): every load of the
        # mainloop's ring waits for it, so the wait is the kernel's first step (gemv.await_inputs)
        self.pdl = pdl
        # quant (SM90+, the layer's calibrated activation scale): mA holds the bf16 token rows
        # ([T, K/2] words), mSFA the scale g and mAlpha g_b; each k-tile's token rows are quantized
        # from their own ring straight into the decoded fp16 tile (quant.quant_block_f16: the
        # fused quantizer's codes and scales, so the bits of quantizer + tile kernel), where the
        # codes were decoded: quantize-and-route without the quantizer's launch and its pass over
        # HBM between the two kernels
        self.quant = quant
        # quant_warps=4 (probe; quant only): a warpgroup of its own quantizes the token rows while the
        # 4 MMA warps decode the expert rows and run the MMAs, the two meeting at the ring's barriers
        # (one named barrier of all 256 threads per k-tile, where the 128-thread CTA syncs); the two
        # CTAs per SM stay, by setmaxnreg: launched at 128 registers a thread, the MMA warpgroup takes
        # mma_regs and the quantizing one 256 - mma_regs (sm_90a-class: setmaxnreg)
        if quant_warps not in (0, 4) or (quant_warps and not quant):
            raise ValueError(f"quant_warps={quant_warps}: 0, or 4 with quant")
        if mma_regs % 8 or not 128 <= mma_regs <= 232:
            raise ValueError(f"mma_regs={mma_regs}: a multiple of 8 in 128..232")
        self.quant_warps = quant_warps
        self.mma_regs = mma_regs
        self.threads = THREADS + 32 * quant_warps
        if quant and (pdl or route_in_kernel):
            raise ValueError("quant: no kernel before it (pdl), the route kernel after it (no in-kernel route)")
        min_stages = Q_STAGES if quant else 3
        if stages < min_stages:
            raise ValueError(f"stages={stages}: the ring needs {min_stages} or more")
        # k-tiles in flight ahead of the one decoded: stages - 1 (the shipped form), or up to stages
        # (a slot is free once its k-tile is decoded, one barrier before the issue that reuses it)
        self.ahead = ahead or (stages if quant else stages - 1)
        if not 2 <= self.ahead <= stages:
            raise ValueError(f"ahead={ahead}: 2 to stages ({stages})")
        if quant:
            self.raw_words, self.off_bw, self.off_bsc = Q_B_STAGE, 0, BN * WORDS
        else:
            self.raw_words, self.off_bw, self.off_bsc = RAW_WORDS, OFF_BW, OFF_BSC
        if stream_k_ctas and route_in_kernel:
            raise ValueError("stream-K writes partial slots for the route kernel; it has no in-kernel route")
        self.stages = stages
        # > 0: a stream-K grid of this many CTAs (``splits`` partial slots per tile at most, see
        # stream_k_slots); 0: the split grid [T/128, splits, E/128]
        self.stream_k_ctas = stream_k_ctas
        self.splits = splits
        # False (default): the kernel only writes the partial logits, SplitRouteKernel routes them.
        # True: the last CTA of each row tile sums and routes in this launch; measured slower on the
        # H200 (T=4096, E=256: 83 against 68 us): 32 CTAs route while 100 SMs idle (ncu: SMs active
        # 71% of the kernel's time)
        self.route_in_kernel = route_in_kernel
        # probe only: words "nodecode" / "nomma" / "noepi" leave a stage out (wrong results)
        self.variant = variant.split("+")
        # raw ring (the last CTA's top-k lists reuse it) + decoded tiles (2 x A, 2 x B; the last
        # CTA's fp32 logits tile reuses them): ~101 KB, two CTAs per SM
        if route_in_kernel and 4 * BM * top_k + 4 * BM > RAW_WORDS * stages:
            raise ValueError(f"top_k={top_k}: the in-kernel route's lists do not fit a {stages}-stage ring")
        self.smem_bytes = tile_smem_bytes(stages, quant)

    @cute.jit
    def __call__(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
                 mAlpha: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, mWs: cute.Tensor,
                 mCnt: cute.Tensor, k_per_split: cutlass.Int32, stream):
        op = cute.nvgpu.warp.MmaF16BF16Op(cutlass.Float16, cutlass.Float32, (16, 8, 16))
        tiled_mma = cute.make_tiled_mma(op, cute.make_layout((2, 2, 1)), permutation_mnk=(32, 32, 16))
        grid = [(mA.shape[0] + BM - 1) // BM, self.splits, mB.shape[0] // BN]
        if cutlass.const_expr(self.stream_k_ctas > 0):
            grid = [self.stream_k_ctas, 1, 1]
        self.kernel(mA, mSFA, mB, mSFB, mAlpha, mIds, mW, mWs, mCnt, k_per_split, tiled_mma).launch(
            grid=grid, block=[self.threads, 1, 1], smem=self.smem_bytes,
            stream=stream, min_blocks_per_mp=2, preferred_smem_carveout=100,  # two CTAs per SM
            use_pdl=self.pdl)

    # the epilogue's column scan: one thread per token row walks the 128 columns of the tile as a
    # loop (straight-line code of that length runs from instruction-cache misses), in two
    # interleaved lists (even / odd columns: two independent dependency chains), merged at the end
    @cute.jit
    def _scan_row(self, sC: cute.Tensor, erow, q, n0):
        k = self.top_k
        tv = cute.make_rmem_tensor(cute.make_layout((k, 2), stride=(1, k)), cutlass.Float32)
        ti = cute.make_rmem_tensor(cute.make_layout((k, 2), stride=(1, k)), cutlass.Int32)
        for j in cutlass.range_constexpr(k):
            for h in cutlass.range_constexpr(2):
                tv[j, h] = cutlass.Float32(-math.inf)
                ti[j, h] = cutlass.Int32(EMPTY_ID)
        for c in cutlass.range(0, BN, 2, unroll=2):
            for h in cutlass.range_constexpr(2):
                # columns come in increasing expert id, so a strict ">" keeps the lower id on a tie
                vals, ids = sorted_insert([tv[j, h] for j in range(k)], [ti[j, h] for j in range(k)],
                                          sC[erow, c + h], global_expert_index(c + h, n0), _STRICT_OPS)
                for j in cutlass.range_constexpr(k):
                    tv[j, h] = vals[j]
                    ti[j, h] = ids[j]
        vals = [tv[j, 0] for j in range(k)]
        ids = [ti[j, 0] for j in range(k)]
        for j in cutlass.range_constexpr(k):
            vals, ids = sorted_insert(vals, ids, tv[j, 1], ti[j, 1], DSL_OPS)
        return vals, ids

    @cute.jit
    def _store_partial(self, sC: cute.Tensor, sMs: cute.Tensor, sMi: cute.Tensor, sSt: cute.Tensor, erow, q, n0):
        vals, ids = self._scan_row(sC, erow, q, n0)
        for j in cutlass.range_constexpr(self.top_k):
            sMs[erow, q, j] = vals[j]
            sMi[erow, q, j] = ids[j]
        if cutlass.const_expr(self.need_stats):
            m = vals[0]
            acc = cute.make_rmem_tensor(cute.make_layout(1), cutlass.Float32)
            acc[0] = cutlass.Float32(0.0)
            for c in cutlass.range(BN, unroll=8):
                acc[0] = acc[0] + cute.math.exp(sC[erow, c] - m)
            sSt[erow, q, 0] = m
            sSt[erow, q, 1] = acc[0]

    # ---------------------------------------------------------------- device
    @cute.jit
    def _issue(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
               sRaw: cute.Tensor, sAq: cute.Tensor, kt, slot, row0, n0, T, kw, k_tiles, tidx, cp16, cp4,
               role: cutlass.Constexpr = "all"):
        """cp.async of raw k-tile ``kt`` into ring slot ``slot`` (about 5 copies per thread; 8 more of
        the token rows' bf16 words in the quantizing form).  ``role`` (quantizing warps of their
        own): "quant" issues only the token rows' copies, "mma" only the expert rows'; ``tidx`` is
        the thread's index within its role."""
        base = slot * self.raw_words
        pA = _gptr(mA)
        pB = _gptr(mB)
        if cutlass.const_expr(self.quant and role != "mma"):
            # 128 rows x 8 chunks of 16 bytes; chunk c of row r at c ^ (r % 8)
            for j in cutlass.range_constexpr(BM * Q_ROW_WORDS // 4 // THREADS):
                u = tidx + j * THREADS
                r = u // 8
                c = u % 8
                grow = cutlass.min(row0 + r, T - 1)  # rows past T re-read row T-1, never stored
                src = cute.make_tensor(pA + cute.assume(grow * (4 * kw) + kt * Q_ROW_WORDS + c * 4, divby=4),
                                       cute.make_layout(4))
                dst = cute.make_tensor(sAq.iterator + cute.assume(slot * Q_A_STAGE + r * Q_ROW_WORDS
                                                                  + (c ^ (r % 8)) * 4, divby=4), cute.make_layout(4))
                cute.copy(cp16, src, dst)
        for i in cutlass.range_constexpr(0 if role == "quant" else 2):
            u = tidx + i * THREADS
            r = u // 2
            h = u % 2
            if cutlass.const_expr(not self.quant):
                grow = cutlass.min(row0 + r, T - 1)  # rows past T re-read row T-1, never stored
                src = cute.make_tensor(pA + cute.assume(grow * kw + kt * WORDS + h * 4, divby=4), cute.make_layout(4))
                dst = cute.make_tensor(sRaw.iterator + cute.assume(base + r * WORDS + h * 4, divby=4),
                                       cute.make_layout(4))
                cute.copy(cp16, src, dst)
            srcb = cute.make_tensor(pB + cute.assume((n0 + r) * kw + kt * WORDS + h * 4, divby=4),
                                    cute.make_layout(4))
            dstb = cute.make_tensor(sRaw.iterator + cute.assume(base + self.off_bw + r * WORDS + h * 4, divby=4),
                                    cute.make_layout(4))
            cute.copy(cp16, srcb, dstb)
        if cutlass.const_expr(not self.quant):
            grow = cutlass.min(row0 + tidx, T - 1)
            cute.copy(cp4, cute.make_tensor(_gptr(mSFA) + (grow * k_tiles + kt), cute.make_layout(1)),
                      cute.make_tensor(sRaw.iterator + (base + OFF_ASC + tidx), cute.make_layout(1)))
        if cutlass.const_expr(role != "quant"):
            if tidx < 32:
                # the 128 x 4 scale atom of (expert block, k-tile) is 512 contiguous bytes
                # (names of their own: a variable first bound inside this dynamic branch)
                src_sc = cute.make_tensor(
                    _gptr(mSFB) + cute.assume(((n0 // 128) * k_tiles + kt) * 128 + tidx * 4, divby=4),
                    cute.make_layout(4))
                dst_sc = cute.make_tensor(sRaw.iterator + cute.assume(base + self.off_bsc + tidx * 4, divby=4),
                                          cute.make_layout(4))
                cute.copy(cp16, src_sc, dst_sc)

    @cute.jit
    def _decode(self, sRaw: cute.Tensor, sAB32: cute.Tensor, slot, dbuf, i: cutlass.Constexpr, tidx, q=None):
        """Unit i (0, 1: token rows; 2, 3: expert rows) of this thread: 16 raw bytes (32 codes, two
        scale blocks) of one row -> four 16-byte chunks of the decoded fp16 tile ``dbuf``.  ``q``:
        the quantizing form's ``(sAq, g_safe, d6, sThr)``: units 0, 1 quantize 32 bf16 of a token
        row instead (:meth:`_quant_unit`)."""
        if cutlass.const_expr(q is not None and i < 2):
            self._quant_unit(sAB32, slot, dbuf, i, tidx, *q)
        else:
            self._decode_codes(sRaw, sAB32, slot, dbuf, i, tidx)

    @cute.jit
    def _decode_codes(self, sRaw: cute.Tensor, sAB32: cute.Tensor, slot, dbuf, i: cutlass.Constexpr, tidx):
        base = slot * self.raw_words
        u = tidx + (i % 2) * THREADS
        r = u // 2
        h = u % 2
        data = base + r * WORDS + h * 4
        tile = dbuf
        sw = cutlass.Int32(0)
        if cutlass.const_expr(i < 2):
            sw = sRaw[base + OFF_ASC + r]
        else:
            data = data + self.off_bw
            tile = dbuf + 2
            sw = sRaw[base + self.off_bsc + (r % 32) * 4 + r // 32]
        raw = cute.make_rmem_tensor(cute.make_layout(4), cutlass.Int32)
        cute.autovec_copy(cute.make_tensor(sRaw.iterator + cute.assume(data, divby=4), cute.make_layout(4)), raw)
        out = cute.make_rmem_tensor(cute.make_layout(4), cutlass.Int32)
        for b in cutlass.range_constexpr(2):
            s2 = _scale2(sw >> (16 * h + 8 * b))
            for wi in cutlass.range_constexpr(2):
                w = raw[2 * b + wi]
                for a in cutlass.range_constexpr(4):
                    out[a] = _dec_pair(w, s2, a)
                self._store_chunk(sAB32, out, tile, r, 4 * h + 2 * b + wi)

    @cute.jit
    def _store_chunk(self, sAB32: cute.Tensor, out: cute.Tensor, tile, r, chunk):
        # Swizzle<3,3,3> of a 64-wide fp16 row: 16-byte chunk index ^= row % 8
        phys = tile * TILE_HALVES + r * BK + (chunk ^ (r % 8)) * 8
        dst = cute.make_tensor(sAB32.iterator + cute.assume(phys // 2, divby=4), cute.make_layout(4))
        cute.autovec_copy(out, dst)

    @cute.jit
    def _quant_unit(self, sAB32: cute.Tensor, slot, dbuf, i: cutlass.Constexpr, tidx, sAq: cute.Tensor, g_safe, d6,
                    sThr: cute.Tensor):
        """Token unit i of this thread in the quantizing form: 32 bf16 (two 16-element blocks) of one
        row from the bf16 ring, quantized into the same four chunks the codes would have decoded to
        (block b's code word wi is chunk 4 h + 2 b + wi, its pairs in ``_dec_pair``'s order)."""
        u = tidx + i * THREADS
        r = u // 2
        h = u % 2
        raw = cute.make_rmem_tensor(cute.make_layout((4, 4), stride=(1, 4)), cutlass.Int32)
        for j in cutlass.range_constexpr(4):
            src = sAq.iterator + cute.assume(slot * Q_A_STAGE + r * Q_ROW_WORDS + ((4 * h + j) ^ (r % 8)) * 4,
                                             divby=4)
            cute.autovec_copy(cute.make_tensor(src, cute.make_layout(4)), raw[None, j])
        ops = cute.make_rmem_tensor(cute.make_layout(8), cutlass.Int32)
        out = cute.make_rmem_tensor(cute.make_layout(4), cutlass.Int32)
        for b in cutlass.range_constexpr(2):
            quant_block_f16([raw[w % 4, 2 * b + w // 4] for w in range(8)], g_safe, d6, sThr, ops)
            for wi in cutlass.range_constexpr(2):
                for a in cutlass.range_constexpr(4):
                    out[a] = ops[4 * wi + a]
                self._store_chunk(sAB32, out, dbuf, r, 4 * h + 2 * b + wi)

    @cute.jit
    def _sync(self):
        """The ring's barrier: the CTA's, or with quantizing warps of their own a named barrier of all
        its threads (the two warpgroups reach it from their own branches)."""
        if cutlass.const_expr(self.quant_warps > 0):
            cute.arch.barrier(barrier_id=1, number_of_threads=self.threads)
        else:
            cute.arch.sync_threads()

    @cute.jit
    def _segment(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor, mAlpha: cute.Tensor,
                 mWs: cute.Tensor, sRaw: cute.Tensor, sAB32: cute.Tensor, sA: cute.Tensor, sB: cute.Tensor, cp16, cp4,
                 tiled_mma: cute.TiledMma, m_idx, n_idx, kt_begin, n_k, slot, T, kw, k_tiles, tidx, q=None,
                 role: cutlass.Constexpr = "all"):
        """One 128 x 128 tile over k-tiles [kt_begin, kt_begin + n_k): the ring, the decode, the MMAs,
        and its fp32 partial (x alpha) to workspace slot ``slot``; ``q`` as in :meth:`_decode`.
        ``role`` (quantizing warps of their own): "quant" loads and quantizes the token rows (units
        0, 1), "mma" loads and decodes the expert rows (units 2, 3) and runs the MMAs and the
        epilogue; both pass the same barriers."""
        row0 = m_idx * BM
        n0 = n_idx * BN
        sAq = None if q is None else q[0]
        units = (0, 1) if role == "quant" else (2, 3) if role == "mma" else (0, 1, 2, 3)
        # prologue: self.ahead raw k-tiles in flight, the first decoded
        for s in cutlass.range_constexpr(self.ahead):
            if s < n_k:
                self._issue(mA, mSFA, mB, mSFB, sRaw, sAq, kt_begin + s, s, row0, n0, T, kw, k_tiles, tidx, cp16, cp4,
                            role)
            cute.arch.cp_async_commit_group()
        mma = None
        if cutlass.const_expr(role != "quant"):
            mma = self._mma_setup(sA, sB, mWs, tiled_mma, m_idx, n_idx, slot, tidx)

        cute.arch.cp_async_wait_group(self.ahead - 1)
        self._sync()
        for i in cutlass.range_constexpr(4):
            if cutlass.const_expr(i in units):
                self._decode(sRaw, sAB32, 0, 0, i, tidx, q)
        cute.arch.cp_async_wait_group(self.ahead - 2)
        self._sync()

        for it in range(n_k):
            nxt = it + self.ahead
            if nxt < n_k:
                # its slot held raw k-tile nxt - stages (it - 1 in the shipped form, it where
                # ahead = stages), decoded in an earlier iteration (a barrier since)
                self._issue(mA, mSFA, mB, mSFB, sRaw, sAq, kt_begin + nxt, nxt % self.stages, row0, n0, T, kw,
                            k_tiles, tidx, cp16, cp4, role)
            cute.arch.cp_async_commit_group()
            if cutlass.const_expr(role == "quant"):
                # the next k-tile's token rows into the other buffer while the MMA warps read this
                # one (the last round quantizes a stale slot into the unused buffer, as the decode does)
                for i in cutlass.range_constexpr(2):
                    self._decode(sRaw, sAB32, (it + 1) % self.stages, 1 - it % 2, i, tidx, q)
            else:
                self._mma_k_tile(mma, tiled_mma, sRaw, sAB32, it, units, tidx, q)
            cute.arch.cp_async_wait_group(self.ahead - 2)
            self._sync()
        cute.arch.cp_async_wait_group(0)

        if cutlass.const_expr(role != "quant"):
            # this CTA's partial logits (x alpha) to the workspace [split, T padded to 128, E]
            tCrC, tCgW = mma[0], mma[1]
            alpha = mAlpha[0]
            if cutlass.const_expr(self.quant):
                alpha = _mul_rn(mSFA[0], alpha)  # g * g_b, as the quantizer writes alpha
            alpha2 = alpha * cutlass.Float32(UNDO_2M28)
            for i in cutlass.range_constexpr(cute.size(tCrC)):
                tCgW[i] = tCrC[i] * alpha2

    @cute.jit
    def _mma_setup(self, sA: cute.Tensor, sB: cute.Tensor, mWs: cute.Tensor, tiled_mma: cute.TiledMma, m_idx, n_idx,
                   slot, tidx):
        """The MMA threads' accumulators (zeroed), their workspace partition and ldmatrix views:
        ``(tCrC, tCgW, tCrA, tCrB, ldA, ldB, tAs, tAr, tBs, tBr)``."""
        thr_mma = tiled_mma.get_slice(tidx)
        tCsA = thr_mma.partition_A(sA)
        tCsB = thr_mma.partition_B(sB)
        tCrA = tiled_mma.make_fragment_A(tCsA[None, None, None, 0])
        tCrB = tiled_mma.make_fragment_B(tCsB[None, None, None, 0])
        gW = cute.local_tile(mWs[slot, None, None], (BM, BN), (m_idx, n_idx))
        tCgW = thr_mma.partition_C(gW)
        tCrC = tiled_mma.make_fragment_C(tCgW)
        tCrC.fill(0.0)
        ldA = cute.make_tiled_copy_A(cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(False, 4), cutlass.Float16),
                                     tiled_mma)
        ldB = cute.make_tiled_copy_B(cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(False, 4), cutlass.Float16),
                                     tiled_mma)
        thrA = ldA.get_slice(tidx)
        thrB = ldB.get_slice(tidx)
        return (tCrC, tCgW, tCrA, tCrB, ldA, ldB, thrA.partition_S(sA), thrA.retile(tCrA), thrB.partition_S(sB),
                thrB.retile(tCrB))

    @cute.jit
    def _mma_k_tile(self, mma, tiled_mma: cute.TiledMma, sRaw: cute.Tensor, sAB32: cute.Tensor, it, units, tidx, q):
        """The MMAs of k-tile ``it`` from decoded buffer ``it % 2``, the decode of the next k-tile's
        ``units`` into the other buffer interleaved with them."""
        tCrC, _, tCrA, tCrB, ldA, ldB, tAs, tAr, tBs, tBr = mma
        dbuf = it % 2
        tAs_p = tAs[None, None, None, dbuf]
        tBs_p = tBs[None, None, None, dbuf]
        for kb in cutlass.range_constexpr(cute.size(tCrA, mode=[2])):
            # fragments of one k-block at a time (the 64 x 64 accumulator leaves no registers
            # for a second set); the decode of the next tile covers the ldmatrix latency
            cute.copy(ldA, tAs_p[None, None, kb], tAr[None, None, kb])
            cute.copy(ldB, tBs_p[None, None, kb], tBr[None, None, kb])
            if cutlass.const_expr(kb in units and "nodecode" not in self.variant):
                # unconditional (the last round decodes a stale slot into the unused buffer): a
                # branch here would split the block and keep ptxas from interleaving decode and MMAs
                self._decode(sRaw, sAB32, (it + 1) % self.stages, 1 - dbuf, kb, tidx, q)
            if cutlass.const_expr("nomma" not in self.variant):
                cute.gemm(tiled_mma, tCrC, tCrA[None, None, kb], tCrB[None, None, kb], tCrC)

    @cute.jit
    def _segments(self, seg, T, kw, k_tiles, n_tiles, kt_begin, n_k, tidx, q, role: cutlass.Constexpr):
        """This CTA's tile segments (``seg``: the tensors and atoms :meth:`_segment` takes first): the
        split grid's one, or the stream-K range's."""
        bidx, bidy, bidz = cute.arch.block_idx()
        if cutlass.const_expr(self.stream_k_ctas > 0):
            # stream-K: the m_tiles x n_tiles x k_tiles units (tile-major, K inner) are cut into
            # grid-size equal ranges, one per CTA; a range crossing a tile boundary is two segments,
            # each written to the tile's partial slot (= CTA index - the tile's first CTA), so every
            # CTA does the same work and the grid is one full wave
            m_tiles = (T + BM - 1) // BM
            units = m_tiles * n_tiles * k_tiles
            nct = self.stream_k_ctas
            u = (bidx * units) // nct
            u_end = ((bidx + 1) * units) // nct
            while u < u_end:
                tile = u // k_tiles
                seg_end = cutlass.min(u_end, (tile + 1) * k_tiles)
                first = stream_k_first(tile, k_tiles, units, nct)
                self._segment(*seg, tile % m_tiles, tile // m_tiles, u - tile * k_tiles, seg_end - u, bidx - first,
                              T, kw, k_tiles, tidx, q, role)
                u = seg_end
        else:
            self._segment(*seg, bidx, bidz, kt_begin, n_k, bidy, T, kw, k_tiles, tidx, q, role)

    @cute.kernel
    def kernel(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
               mAlpha: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, mWs: cute.Tensor,
               mCnt: cute.Tensor, k_per_split: cutlass.Int32, tiled_mma: cute.TiledMma):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, bidy, bidz = cute.arch.block_idx()
        k = self.top_k
        T = mA.shape[0]
        E = mB.shape[0]
        kw = mA.shape[1]
        if cutlass.const_expr(self.quant):
            kw = kw // 4  # mA: the bf16 rows, K / 2 words
        k_tiles = kw // WORDS
        n_tiles = E // BN
        row0 = bidx * BM
        n0 = bidz * BN
        kt_begin = bidy * k_per_split
        n_k = cutlass.min(kt_begin + k_per_split, k_tiles) - kt_begin
        await_inputs(self.pdl)

        smem = cutlass.utils.SmemAllocator()
        sRaw = smem.allocate_tensor(cutlass.Int32, cute.make_layout(self.raw_words * self.stages), 16)
        sAB32 = smem.allocate_tensor(cutlass.Int32, cute.make_layout(2 * TILE_HALVES), 1024)
        sFlag = smem.allocate_tensor(cutlass.Int32, cute.make_layout(4), 16)
        q = None
        if cutlass.const_expr(self.quant):
            sAq = smem.allocate_tensor(cutlass.Int32, cute.make_layout(Q_A_STAGE * self.stages), 16)
            sThr = smem.allocate_tensor(cutlass.Int32, cute.make_layout(TABLE_CODES * TABLE_WORDS), 16)
            g_safe, d6 = safe_scales(mSFA[0])
            if cutlass.const_expr(self.quant_warps == 0):
                # two threads per scale code; read after the barrier before the first decode
                for half in cutlass.range_constexpr(2 * TABLE_CODES // THREADS):
                    build_threshold_table(sThr, g_safe, tidx + half * THREADS)
            q = (sAq, g_safe, d6, sThr)
        # the last CTA's merge lists, in the raw ring (free once the mainloop is over)
        f32p = cute.recast_ptr(sRaw.iterator, dtype=cutlass.Float32)
        sMs = cute.make_tensor(f32p, cute.make_layout((BM, 1, k), stride=(k, k, 1)))
        sMi = cute.make_tensor(sRaw.iterator + BM * k, cute.make_layout((BM, 1, k), stride=(k, k, 1)))
        sRs = cute.make_tensor(f32p + 2 * BM * k, cute.make_layout((BM, k), stride=(k, 1)))
        sRi = cute.make_tensor(sRaw.iterator + 3 * BM * k, cute.make_layout((BM, k), stride=(k, 1)))
        sSt = cute.make_tensor(f32p + 4 * BM * k, cute.make_layout((BM, 1, 2), stride=(2, 2, 1)))
        sRst = cute.make_tensor(f32p + 4 * BM * k + 2 * BM, cute.make_layout((BM, 2), stride=(2, 1)))

        # decoded tiles: [A buf 0, A buf 1, B buf 0, B buf 1], 128 x 64 fp16 each, K-major, swizzled
        atom = cute.make_composed_layout(cute.make_swizzle(3, 3, 3), 0,
                                         cute.make_layout((8, BK), stride=(BK, 1)))
        s_layout = cute.tile_to_shape(atom, (128, BK, 2), (0, 1, 2))
        f16p = cute.recast_ptr(sAB32.iterator, dtype=cutlass.Float16)
        sA = cute.make_tensor(f16p, s_layout)
        sB = cute.make_tensor(f16p + 2 * TILE_HALVES, s_layout)

        cp16 = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.GLOBAL),
                                   cutlass.Int32, num_bits_per_copy=128)
        cp4 = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.ALWAYS),
                                  cutlass.Int32, num_bits_per_copy=32)

        seg = (mA, mSFA, mB, mSFB, mAlpha, mWs, sRaw, sAB32, sA, sB, cp16, cp4, tiled_mma)
        if cutlass.const_expr(self.quant_warps > 0):
            # warp-uniform: warps 0-3 the MMA warpgroup, 4-7 the quantizing one; the registers
            # change hands before either touches its work (setmaxnreg, per warpgroup)
            if tidx < THREADS:
                cute.arch.setmaxregister_increase(self.mma_regs)
                self._segments(seg, T, kw, k_tiles, n_tiles, kt_begin, n_k, tidx, q, "mma")
            else:
                cute.arch.setmaxregister_decrease(256 - self.mma_regs)
                tq = tidx - THREADS
                for half in cutlass.range_constexpr(2 * TABLE_CODES // THREADS):
                    build_threshold_table(q[3], q[1], tq + half * THREADS)
                self._segments(seg, T, kw, k_tiles, n_tiles, kt_begin, n_k, tq, q, "quant")
        else:
            self._segments(seg, T, kw, k_tiles, n_tiles, kt_begin, n_k, tidx, q, "all")
        if cutlass.const_expr(self.route_in_kernel):
            self._route_last(mWs, mCnt, mIds, mW, sAB32, sFlag, sMs, sMi, sSt, sRs, sRi, sRst, row0, T, E,
                             n_tiles, bidx, tidx)

    @cute.jit
    def _route_last(self, mWs: cute.Tensor, mCnt: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor,
                    sAB32: cute.Tensor, sFlag: cute.Tensor, sMs: cute.Tensor, sMi: cute.Tensor, sSt: cute.Tensor,
                    sRs: cute.Tensor, sRi: cute.Tensor, sRst: cute.Tensor, row0, T, E, n_tiles, bidx, tidx):
        k = self.top_k
        # publication: every thread's stores, a gpu-scope fence, barrier, thread 0's acq_rel atomic
        cute.arch.fence_acq_rel_gpu()
        cute.arch.sync_threads()
        if tidx == 0:
            sFlag[0] = cute.arch.atomic_add((mCnt.iterator + bidx).llvm_ptr, cutlass.Int32(1), sem="acq_rel",
                                            scope="gpu")
        cute.arch.sync_threads()
        if sFlag[0] == self.splits * n_tiles - 1 and cutlass.const_expr("noepi" in self.variant):
            if tidx == 0:
                mCnt[bidx] = cutlass.Int32(0)
        if sFlag[0] == self.splits * n_tiles - 1 and cutlass.const_expr("noepi" not in self.variant):
            cute.arch.fence_acq_rel_gpu()
            erow = tidx
            for j in cutlass.range_constexpr(k):
                sRs[erow, j] = cutlass.Float32(-math.inf)
                sRi[erow, j] = cutlass.Int32(EMPTY_ID)
            sRst[erow, 0] = cutlass.Float32(-math.inf)
            sRst[erow, 1] = cutlass.Float32(0.0)
            # fp32 logits of one N-tile, rows swizzled (column ^= row % 32) so that one thread per row
            # scans without bank conflicts; it reuses the decoded tiles' 64 KB
            c_layout = cute.make_composed_layout(cute.make_swizzle(5, 0, 7), 0,
                                                 cute.make_layout((BM, BN), stride=(BN, 1)))
            sC = cute.make_tensor(cute.recast_ptr(sAB32.iterator, dtype=cutlass.Float32), c_layout)
            for nt in range(n_tiles):
                nb = nt * BN
                # 8 chunks x all splits of loads in flight per thread, summed in split order
                for rr0 in cutlass.range(0, BM * BN // 4 // THREADS, 8):
                    acc = cute.make_rmem_tensor(cute.make_layout((4, 8, self.splits), stride=(1, 4, 32)),
                                                cutlass.Float32)
                    for rr in cutlass.range_constexpr(8):
                        lin = (rr0 + rr) * THREADS + tidx
                        r = lin // (BN // 4)
                        c4 = (lin % (BN // 4)) * 4
                        for sp in cutlass.range_constexpr(self.splits):
                            off = (sp * mWs.shape[1] + row0 + r) * E + nb + c4
                            cute.autovec_copy(cute.make_tensor(mWs.iterator + cute.assume(off, divby=4),
                                                               cute.make_layout(4)), acc[None, rr, sp])
                    for rr in cutlass.range_constexpr(8):
                        lin = (rr0 + rr) * THREADS + tidx
                        r = lin // (BN // 4)
                        c4 = (lin % (BN // 4)) * 4
                        for e in cutlass.range_constexpr(4):
                            v = acc[e, rr, 0]
                            for sp in cutlass.range_constexpr(1, self.splits):
                                v = v + acc[e, rr, sp]
                            sC[r, c4 + e] = v
                cute.arch.sync_threads()
                self._topk_tile(sC, sMs, sMi, sSt, sRs, sRi, sRst, erow, 0, nb)
            if tidx == 0:
                mCnt[bidx] = cutlass.Int32(0)  # ready for the next launch
            self._write_out(sRs, sRi, sRst, mIds, mW, erow, 0, row0 + erow, T)


class SplitRouteKernel(_WarpRouter):
    """The route step of the tile kernel, a second launch: one warp per token (8 per CTA) sums the
    ``splits`` partial logits of each expert in split order (all loads independent) and keeps the
    top-k (:meth:`kernels.router.gemv._WarpRouter._route_warp`, the decode kernels' routing).
    Every SM takes part, where the in-kernel last-CTA route ran on one CTA per 128 tokens."""

    def __init__(self, top_k: int, scoring: str, renormalize: bool, experts: int, splits: int,
                 stream_k=None):
        self.top_k = top_k
        self.scoring = scoring
        self.renormalize = renormalize
        self.experts = experts
        self.splits = splits
        # (k_tiles, ctas) of a stream-K tile grid: tile (m, n) has stream_k_count(...) <= splits
        # partial slots, the rest of its slots are stale and read as 0
        self.stream_k = stream_k

    @cute.jit
    def __call__(self, mWs: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, stream):
        self.kernel(mWs, mIds, mW).launch(grid=[(mIds.shape[0] + 7) // 8, 1, 1], block=[256, 1, 1], stream=stream)

    @cute.jit
    def _gather(self, mSrc: cute.Tensor, splits: cutlass.Constexpr, tok, lane, got: cute.Tensor):
        if cutlass.const_expr(self.stream_k is None):
            _WarpRouter._gather(self, mSrc, splits, tok, lane, got)
        else:
            # slot y of tile (m, n) holds its y-th K segment while y < its count, else stale data
            # (selected away, not added: the sum is the same bits as a plain split sum)
            k_tiles, nct = self.stream_k
            E = self.experts
            m_tiles = mSrc.shape[1] // BM
            units = m_tiles * (E // BN) * k_tiles
            m = tok // BM
            part = cute.make_rmem_tensor(cute.make_layout((4, splits)), cutlass.Float32)
            for q in cutlass.range_constexpr(E // BN):
                cnt = stream_k_count(q * m_tiles + m, k_tiles, units, nct)
                for y in cutlass.range_constexpr(splits):
                    off = cute.assume((y * mSrc.shape[1] + tok) * E + BN * q + 4 * lane, divby=4)
                    cute.autovec_copy(cute.make_tensor(mSrc.iterator + off, cute.make_layout(4)), part[None, y])
                for i in cutlass.range_constexpr(4):
                    v = part[i, 0]
                    for y in cutlass.range_constexpr(1, splits):
                        v = v + DSL_OPS.select(y < cnt, part[i, y], cutlass.Float32(0.0))
                    got[4 * q + i] = v

    @cute.kernel
    def kernel(self, mWs: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        tok = bidx * 8 + tidx // 32
        if tok < mIds.shape[0]:
            # the partials already carry alpha
            self._route_warp(mWs, self.splits, cutlass.Float32(1.0), mIds, mW, tok, tidx % 32)


def tile_smem_bytes(stages: int = STAGES, quant: bool = False) -> int:
    """Dynamic SMEM of a tile-kernel CTA: the raw ring, the decoded A/B double buffers, slack; the
    quantizing form: the token rows' bf16 ring, the expert rows' ring and the threshold table."""
    if quant:
        return 4 * (Q_A_STAGE + Q_B_STAGE) * stages + 2 * 4 * TILE_HALVES + 4 * TABLE_CODES * TABLE_WORDS + 1024 + 64
    return 4 * RAW_WORDS * stages + 2 * 4 * TILE_HALVES + 1024 + 64


def pick_stages(smem_per_block: int) -> int:
    """The deepest ring (4, else 3) whose CTA fits ``smem_per_block`` bytes (the device's opt-in
    maximum): 4 on SM80/SM90 (~101 KB), 3 on SM120/SM121 (~92 KB of their 99 KB)."""
    for stages in (STAGES, 3):
        if tile_smem_bytes(stages) <= smem_per_block:
            return stages
    raise ValueError(f"the tile kernel needs {tile_smem_bytes(3)} bytes of SMEM per CTA, the device allows "
                     f"{smem_per_block}")


def device_stages(device) -> int:
    import torch

    props = torch.cuda.get_device_properties(device)
    return pick_stages(getattr(props, "shared_memory_per_block_optin", 0) or tile_smem_bytes(STAGES))


def device_ctas_per_wave(device, stages: int, quant: bool = False) -> int:
    """Tile-kernel CTAs resident at once: SMs x CTAs whose SMEM fits an SM (two on SM80/SM90, at
    most two by the kernel's launch bound; one where a CTA takes most of the SM, as on SM120)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    need = tile_smem_bytes(stages, quant) + 1024
    per_sm = getattr(props, "shared_memory_per_multiprocessor", 0) or 2 * need
    return props.multi_processor_count * max(1, min(2, per_sm // need))


def stream_k_first(tile, k_tiles, units, ctas):
    """The stream-K CTA holding the first k-tile of ``tile`` (CTA c covers units
    [c * units // ctas, (c + 1) * units // ctas)); plain integer arithmetic, device or host."""
    return ((tile * k_tiles + 1) * ctas - 1) // units


def stream_k_count(tile, k_tiles, units, ctas):
    """How many CTAs (partial slots) a tile's K range spans in the stream-K grid."""
    last = ((tile + 1) * k_tiles * ctas - 1) // units
    return last - stream_k_first(tile, k_tiles, units, ctas) + 1


def stream_k_slots(tiles: int, k_tiles: int, ctas: int) -> int:
    """The most partial slots any tile needs (the route kernel sums that many, stale ones as 0)."""
    units = tiles * k_tiles
    return max(stream_k_count(t, k_tiles, units, ctas) for t in range(tiles))


#: at most this many partial slots per tile: the split grid's workspace (4 splits) and route cost
STREAM_K_MAX_SLOTS = 4


def pick_tile_grid(num_tokens: int, experts: int, hidden: int, ctas_per_wave: int):
    """("split", splits, k_tiles_per_split) or ("stream_k", ctas, slots).  Stream-K when the split
    grid would spill past one wave of ``ctas_per_wave`` CTAs (SMs x CTAs per SM) and a wave's worth
    of equal K ranges gives every tile at most STREAM_K_MAX_SLOTS segments: T=4096, E=384 on the
    H200 (96 tiles x 4 splits = 384 CTAs on 264 slots: a second wave 45 % full; stream-K 102.5
    against 110.8 us in one call)."""
    splits, per = pick_tile_splits(num_tokens, experts, hidden)
    tiles = -(-num_tokens // BM) * (experts // BN)
    k_tiles = hidden // BK
    if tiles * splits > ctas_per_wave and ctas_per_wave * 2 <= tiles * k_tiles:
        slots = stream_k_slots(tiles, k_tiles, ctas_per_wave)
        if slots <= STREAM_K_MAX_SLOTS:
            return "stream_k", ctas_per_wave, slots
    return "split", splits, per


def device_tile_grid(num_tokens: int, experts: int, hidden: int, device, stages=None, quant: bool = False):
    """:func:`pick_tile_grid` for one wave of ``device`` (the ring depth it gets unless ``stages``;
    ``quant``: the quantizing form's rings)."""
    return pick_tile_grid(num_tokens, experts, hidden,
                          device_ctas_per_wave(device, stages or device_stages(device), quant))


def pick_tile_splits(num_tokens: int, experts: int, hidden: int):
    """(splits, k_tiles_per_split).  Measured on the H200 at T=4096: 64 blocks of 128 x 128 (E=256)
    run best with 4 splits (256 CTAs, two per SM: 64 us with the route kernel; 5 splits 83, 8 splits
    82; with the route then in the kernel 2 splits 89-96, 3 splits 106 against 83) and 96 blocks
    (E=384) too (110 us; 5 splits 109.5-111, 6 and 8 splits 126-128; earlier 2 and 3 splits 144 and
    160 against 135: 288 CTAs leave a tail); more blocks need fewer splits to fill the SMs."""
    k_tiles = hidden // BK
    tiles = -(-num_tokens // BM) * (experts // BN)
    want = 4 if tiles <= 96 else 2 if tiles <= 192 else 1
    want = max(1, min(want, k_tiles))
    per = -(-k_tiles // want)
    return -(-k_tiles // per), per


_compiled = {}


def compile_tile(top_k: int, scoring: str, renormalize: bool, splits: int, args, variant: str = "",
                 route_in_kernel: bool = False, stages: int = STAGES, stream_k_ctas: int = 0, pdl: bool = False,
                 quant: bool = False, ahead: int = 0, quant_warps: int = 0, mma_regs: int = MMA_REGS):
    key = (top_k, scoring, renormalize, splits, variant, route_in_kernel, stages, stream_k_ctas, pdl, quant, ahead,
           quant_warps, mma_regs)
    fn = _compiled.get(key)
    if fn is None:
        fn = cute.compile(TileRouterKernel(top_k, scoring, renormalize, splits, variant, route_in_kernel, stages,
                                           stream_k_ctas, pdl, quant, ahead, quant_warps, mma_regs), *args)
        _compiled[key] = fn
    return fn


def compile_split_route(top_k: int, scoring: str, renormalize: bool, experts: int, splits: int, args,
                        stream_k=None):
    key = ("route", top_k, scoring, renormalize, experts, splits, stream_k)
    fn = _compiled.get(key)
    if fn is None:
        fn = cute.compile(SplitRouteKernel(top_k, scoring, renormalize, experts, splits, stream_k), *args)
        _compiled[key] = fn
    return fn
