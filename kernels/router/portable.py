"""Portable fused NVFP4 router in CuTe DSL: warp-level ``mma.sync`` (bf16 in, fp32 accumulate)
after in-register NVFP4 dequantization, with the top-k selection fused into the epilogue.

Runs on SM80 and later (SM90 H100, SM120/SM121): it uses no TMA, no wgmma, no tcgen05 and no
FP4 conversion instruction (``cvt.*.e2m1x2`` is SM100+ only); E2M1 codes and E4M3 scales are
decoded through two small lookup tables in shared memory.

One CTA owns ``bm`` token rows and all E experts, so the whole top-k of a row is decided inside
the CTA.  For every N-tile of 128 experts it loops over K in tiles of 64:

1. each thread loads its packed FP4 words and scale bytes of tile k+1 into registers
   (issued before the MMAs of tile k, so their latency overlaps them);
2. the warps multiply the bf16 tiles of tile k from shared memory (``mma.sync.m16n8k16``);
3. the registers of tile k+1 are decoded (``value(code) * scale``, exact in bf16: <= 6
   significant bits) and stored to shared memory.

The per-tensor global scales are applied once to the fp32 accumulator (``alpha = g_a * g_b``),
which is then staged in shared memory.  Epilogue: each thread scans its columns of one row and
keeps a top-k in k scalar registers (:func:`kernels.router.topk.sorted_insert`, fully unrolled,
no dynamic indexing), the partial lists of a row are merged with the running top-k of earlier
N-tiles through shared-memory tensors, and the softmax denominator is kept online (max, sum).
"""

from __future__ import annotations

import math

import cutlass
import cutlass.cute as cute

from .topk import EMPTY_ID, SelectOps, global_expert_index, sorted_insert

BN = 128  # experts per N-tile
BK = 64  # K elements per k-tile = 4 scale blocks = 8 int32 words of packed FP4
LUT_E2M1 = 0  # sLut[0:16]: E2M1 code -> value
LUT_E4M3 = 16  # sLut[16:272]: E4M3 byte -> value
LUT_SIZE = 16 + 256


def _dsl_select(c, a, b):
    t = type(a) if isinstance(a, cutlass.Numeric) else type(b)
    return t(cutlass.select_(c, a, b))


def _dsl_better(v, i, s, j):
    return (v > s) | ((v == s) & (i < j))


DSL_OPS = SelectOps(select=_dsl_select, better=_dsl_better)
#: kernels.router.topk.ASCENDING_ID_OPS in the DSL
DSL_ASCENDING_ID_OPS = SelectOps(select=_dsl_select, better=lambda v, i, s, j: v > s)


class PortableRouterKernel:
    """``bm`` token rows per CTA, ``threads`` threads; top_k / scoring / renormalize are compile-time."""

    def __init__(self, top_k: int, scoring: str, renormalize: bool, bm: int = 16, threads: int = 128,
                 split_k: bool = False):
        if threads % 32 or threads % bm or bm % 16:
            raise ValueError(f"bad tile config bm={bm} threads={threads}")
        self.top_k = top_k
        self.scoring = scoring
        self.renormalize = renormalize
        self.bm = bm
        self.threads = threads
        self.tpr = threads // bm  # epilogue threads per row
        if BN % self.tpr:
            raise ValueError(f"{self.tpr} threads per row do not divide {BN} columns")
        self.cols_per_thread = BN // self.tpr
        warps = threads // 32
        self.atom_m = min(bm // 16, warps)
        self.atom_n = warps // self.atom_m
        self.need_stats = scoring == "softmax" and not renormalize
        self.split_k = split_k
        self.units_a = bm * 4  # (row, scale block) units of 16 elements per k-tile
        self.units_b = BN * 4
        self.ua = -(-self.units_a // threads)
        self.ub = -(-self.units_b // threads)
        # padded rows: bf16 tiles by 8 elements (16 B, keeps rows 16-B aligned and spreads banks),
        # the fp32 logits tile by tpr words so the tpr threads of a row hit distinct banks
        self.pitch_ab = BK + 8
        self.pitch_c = BN + self.tpr
        k, tpr = top_k, self.tpr
        self.smem_bytes = (
            2 * (bm + BN) * self.pitch_ab + 4 * bm * self.pitch_c + 4 * LUT_SIZE
            + 8 * bm * tpr * k + 8 * bm * k + 4 * bm * tpr * 2 + 4 * bm * 2 + 16 * 13
        )

    # ------------------------------------------------------------------ host
    @cute.jit
    def __call__(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
                 mAlpha: cute.Tensor, mLut: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor,
                 mWs: cute.Tensor, mCnt: cute.Tensor, k_per_split: cutlass.Int32, stream):
        op = cute.nvgpu.warp.MmaF16BF16Op(cutlass.BFloat16, cutlass.Float32, (16, 8, 16))
        tiled_mma = cute.make_tiled_mma(op, cute.make_layout((self.atom_m, self.atom_n, 1)))
        grid_m = (mA.shape[0] + self.bm - 1) // self.bm
        splits = 1
        n_split = 1
        if cutlass.const_expr(self.split_k):
            # split-K also splits N: one CTA per (row tile, K slice, N-tile)
            splits = mWs.shape[0]
            n_split = mB.shape[0] // BN
        self.kernel(mA, mSFA, mB, mSFB, mAlpha, mLut, mIds, mW, mWs, mCnt, k_per_split, tiled_mma).launch(
            grid=[grid_m, splits, n_split], block=[self.threads, 1, 1], smem=self.smem_bytes, stream=stream)

    # ---------------------------------------------------------------- device
    @cute.jit
    def _load_raw(self, mX: cute.Tensor, mSF: cute.Tensor, raw: cute.Tensor, sf: cute.Tensor,
                  row0, rows_valid, kt, tidx, units: cutlass.Constexpr, per_thread: cutlass.Constexpr,
                  swizzled: cutlass.Constexpr, k_tiles):
        """Packed words and scale bytes of this thread's units of k-tile ``kt`` into registers."""
        for u in cutlass.range_constexpr(per_thread):
            unit = cutlass.min(tidx + u * self.threads, units - 1)  # surplus threads redo the last unit
            r = unit // 4
            blk = unit % 4
            grow = cutlass.min(row0 + r, rows_valid - 1)  # rows past T read row T-1, never stored
            col = kt * 8 + blk * 2
            raw[u, 0] = mX[grow, col]
            raw[u, 1] = mX[grow, col + 1]
            if cutlass.const_expr(swizzled):
                # 128x4 scale atoms (kernels.nvfp4.swizzle), K-tile inner; K/64 atoms per 128 rows
                off = ((grow // 128) * k_tiles + kt) * 512 + (grow % 32) * 16 + ((grow % 128) // 32) * 4 + blk
                sf[u] = cutlass.Int32(mSF[off])
            else:
                sf[u] = cutlass.Int32(mSF[grow, kt * 4 + blk])

    @cute.jit
    def _dequant(self, raw: cute.Tensor, sf: cute.Tensor, sX: cute.Tensor, sLut: cute.Tensor, tidx,
                 units: cutlass.Constexpr, per_thread: cutlass.Constexpr):
        """Decode this thread's units from registers into the bf16 tile ``sX`` (rows, 64)."""
        for u in cutlass.range_constexpr(per_thread):
            unit = cutlass.min(tidx + u * self.threads, units - 1)
            r = unit // 4
            blk = unit % 4
            scale = sLut[LUT_E4M3 + sf[u]]
            for w in cutlass.range_constexpr(2):
                word = raw[u, w]
                for e in cutlass.range_constexpr(8):
                    code = (word >> (4 * e)) & 15
                    val = sLut[LUT_E2M1 + code] * scale
                    sX[r, blk * 16 + w * 8 + e] = val.to(cutlass.BFloat16)

    @cute.jit
    def _scan_row(self, sC: cute.Tensor, erow, q, n0):
        """Top-k of this thread's columns (q, q+tpr, ...) of one row of the logits tile."""
        k = self.top_k
        vals = [cutlass.Float32(-math.inf)] * k
        ids = [cutlass.Int32(EMPTY_ID)] * k
        for j in cutlass.range_constexpr(self.cols_per_thread):
            c = j * self.tpr + q
            vals, ids = sorted_insert(vals, ids, sC[erow, c], global_expert_index(c, n0), DSL_OPS)
        return vals, ids

    @cute.jit
    def _store_partial(self, sC: cute.Tensor, sMs: cute.Tensor, sMi: cute.Tensor, sSt: cute.Tensor, erow, q, n0):
        vals, ids = self._scan_row(sC, erow, q, n0)
        for j in cutlass.range_constexpr(self.top_k):
            sMs[erow, q, j] = vals[j]
            sMi[erow, q, j] = ids[j]
        if cutlass.const_expr(self.need_stats):
            m = vals[0]
            ssum = cutlass.Float32(0.0)
            for j in cutlass.range_constexpr(self.cols_per_thread):
                ssum = ssum + cute.math.exp(sC[erow, j * self.tpr + q] - m)
            sSt[erow, q, 0] = m
            sSt[erow, q, 1] = ssum

    @cute.jit
    def _merge_row(self, sMs: cute.Tensor, sMi: cute.Tensor, sRs: cute.Tensor, sRi: cute.Tensor,
                   sSt: cute.Tensor, sRst: cute.Tensor, erow):
        """Merge the row's tpr partial lists into its running top-k (earlier N-tiles) in SMEM."""
        k = self.top_k
        vals = [sRs[erow, j] for j in range(k)]
        ids = [sRi[erow, j] for j in range(k)]
        for qq in cutlass.range_constexpr(self.tpr):
            for j in cutlass.range_constexpr(k):
                vals, ids = sorted_insert(vals, ids, sMs[erow, qq, j], sMi[erow, qq, j], DSL_OPS)
        for j in cutlass.range_constexpr(k):
            sRs[erow, j] = vals[j]
            sRi[erow, j] = ids[j]
        if cutlass.const_expr(self.need_stats):
            m = sRst[erow, 0]
            s = sRst[erow, 1]
            for qq in cutlass.range_constexpr(self.tpr):
                m2 = sSt[erow, qq, 0]
                s2 = sSt[erow, qq, 1]
                mn = cute.arch.fmax(m, m2)
                s = s * cute.math.exp(m - mn) + s2 * cute.math.exp(m2 - mn)
                m = mn
            sRst[erow, 0] = m
            sRst[erow, 1] = s

    @cute.jit
    def _write_row(self, sRs: cute.Tensor, sRi: cute.Tensor, sRst: cute.Tensor, mIds: cute.Tensor,
                   mW: cute.Tensor, erow, grow):
        k = self.top_k
        vals = [sRs[erow, j] for j in range(k)]
        ws = []
        if cutlass.const_expr(self.scoring == "softmax"):
            if cutlass.const_expr(self.renormalize):
                ref = vals[0]
                ws = [cute.math.exp(v - ref) for v in vals]
            else:
                m = sRst[erow, 0]
                inv = cutlass.Float32(1.0) / sRst[erow, 1]
                ws = [cute.math.exp(v - m) * inv for v in vals]
        else:
            ws = [cutlass.Float32(1.0) / (cutlass.Float32(1.0) + cute.math.exp(-v)) for v in vals]
        if cutlass.const_expr(self.renormalize):
            tot = ws[0]
            for j in cutlass.range_constexpr(1, k):
                tot = tot + ws[j]
            inv = cutlass.Float32(1.0) / tot
            ws = [w * inv for w in ws]
        for j in cutlass.range_constexpr(k):
            mIds[grow, j] = sRi[erow, j]
            mW[grow, j] = ws[j]

    @cute.kernel
    def kernel(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
               mAlpha: cute.Tensor, mLut: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor,
               mWs: cute.Tensor, mCnt: cute.Tensor, k_per_split: cutlass.Int32, tiled_mma: cute.TiledMma):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, bidy, bidz = cute.arch.block_idx()
        bm, k, tpr = self.bm, self.top_k, self.tpr
        T = mA.shape[0]
        E = mB.shape[0]
        k_tiles = mA.shape[1] // 8
        n_tiles = E // BN
        row0 = bidx * bm

        smem = cutlass.utils.SmemAllocator()
        sA = smem.allocate_tensor(cutlass.BFloat16, cute.make_layout((bm, BK), stride=(self.pitch_ab, 1)), 16)
        sB = smem.allocate_tensor(cutlass.BFloat16, cute.make_layout((BN, BK), stride=(self.pitch_ab, 1)), 16)
        sC = smem.allocate_tensor(cutlass.Float32, cute.make_layout((bm, BN), stride=(self.pitch_c, 1)), 16)
        sLut = smem.allocate_tensor(cutlass.Float32, cute.make_layout(LUT_SIZE), 16)
        # merge buffers: per-thread partial top-k lists, the running top-k, softmax (max, sum)
        sMs = smem.allocate_tensor(cutlass.Float32, cute.make_layout((bm, tpr, k), stride=(tpr * k, k, 1)), 16)
        sMi = smem.allocate_tensor(cutlass.Int32, cute.make_layout((bm, tpr, k), stride=(tpr * k, k, 1)), 16)
        sRs = smem.allocate_tensor(cutlass.Float32, cute.make_layout((bm, k), stride=(k, 1)), 16)
        sRi = smem.allocate_tensor(cutlass.Int32, cute.make_layout((bm, k), stride=(k, 1)), 16)
        sSt = smem.allocate_tensor(cutlass.Float32, cute.make_layout((bm, tpr, 2), stride=(tpr * 2, 2, 1)), 16)
        sRst = smem.allocate_tensor(cutlass.Float32, cute.make_layout((bm, 2), stride=(2, 1)), 16)
        sFlag = smem.allocate_tensor(cutlass.Int32, cute.make_layout(4), 16)

        for u in cutlass.range_constexpr(-(-LUT_SIZE // self.threads)):
            li = cutlass.min(tidx + u * self.threads, LUT_SIZE - 1)
            sLut[li] = mLut[li]
        erow = tidx // tpr
        q = tidx % tpr
        if q == 0:
            for j in cutlass.range_constexpr(k):
                sRs[erow, j] = cutlass.Float32(-math.inf)
                sRi[erow, j] = cutlass.Int32(EMPTY_ID)
            sRst[erow, 0] = cutlass.Float32(-math.inf)
            sRst[erow, 1] = cutlass.Float32(0.0)
        cute.arch.sync_threads()
        alpha = mAlpha[0]

        thr_mma = tiled_mma.get_slice(tidx)
        tCsA = thr_mma.partition_A(sA)
        tCsB = thr_mma.partition_B(sB)
        tCsC = thr_mma.partition_C(sC)
        tCrA = tiled_mma.make_fragment_A(tCsA)
        tCrB = tiled_mma.make_fragment_B(tCsB)
        tCrC = tiled_mma.make_fragment_C(tCsC)
        num_kb = cute.size(tCsA, mode=[2])

        rawA = cute.make_rmem_tensor(cute.make_layout((self.ua, 2), stride=(2, 1)), cutlass.Int32)
        sfA = cute.make_rmem_tensor(cute.make_layout(self.ua), cutlass.Int32)
        rawB = cute.make_rmem_tensor(cute.make_layout((self.ub, 2), stride=(2, 1)), cutlass.Int32)
        sfB = cute.make_rmem_tensor(cute.make_layout(self.ub), cutlass.Int32)

        # K range of this CTA: all of K, or one split of it (split-K: grid.y CTAs per row tile)
        kt_begin = bidy * k_per_split
        kt_end = cutlass.min(kt_begin + k_per_split, k_tiles)
        nt_begin = bidz
        nt_end = bidz + 1
        if cutlass.const_expr(not self.split_k):
            kt_begin = 0
            kt_end = k_tiles
            nt_begin = 0
            nt_end = n_tiles
        for nt in range(nt_begin, nt_end):
            n0 = nt * BN
            tCrC.fill(0.0)
            self._load_raw(mA, mSFA, rawA, sfA, row0, T, kt_begin, tidx, self.units_a, self.ua, False, k_tiles)
            self._load_raw(mB, mSFB, rawB, sfB, n0, E, kt_begin, tidx, self.units_b, self.ub, True, k_tiles)
            self._dequant(rawA, sfA, sA, sLut, tidx, self.units_a, self.ua)
            self._dequant(rawB, sfB, sB, sLut, tidx, self.units_b, self.ub)
            cute.arch.sync_threads()
            for kt in range(kt_begin, kt_end):
                nk = cutlass.min(kt + 1, kt_end - 1)  # the last round reloads its own tile, unused
                self._load_raw(mA, mSFA, rawA, sfA, row0, T, nk, tidx, self.units_a, self.ua, False, k_tiles)
                self._load_raw(mB, mSFB, rawB, sfB, n0, E, nk, tidx, self.units_b, self.ub, True, k_tiles)
                for kb in cutlass.range_constexpr(num_kb):
                    cute.autovec_copy(tCsA[None, None, kb], tCrA[None, None, kb])
                    cute.autovec_copy(tCsB[None, None, kb], tCrB[None, None, kb])
                    cute.gemm(tiled_mma, tCrC, tCrA[None, None, kb], tCrB[None, None, kb], tCrC)
                cute.arch.sync_threads()
                self._dequant(rawA, sfA, sA, sLut, tidx, self.units_a, self.ua)
                self._dequant(rawB, sfB, sB, sLut, tidx, self.units_b, self.ub)
                cute.arch.sync_threads()
            # scaled logits of this N-tile (or of this K-split's share of them) to SMEM
            for i in cutlass.range_constexpr(cute.size(tCrC)):
                tCsC[i] = tCrC[i] * alpha
            cute.arch.sync_threads()
            if cutlass.const_expr(self.split_k):
                # partial sums to the workspace [split, T, E]; the last CTA of the row tile reduces
                grow_w = row0 + erow
                if grow_w < T:
                    for j in cutlass.range_constexpr(self.cols_per_thread):
                        c = j * tpr + q
                        mWs[bidy, grow_w, n0 + c] = sC[erow, c]
                cute.arch.sync_threads()
            else:
                self._topk_tile(sC, sMs, sMi, sSt, sRs, sRi, sRst, erow, q, n0)

        if cutlass.const_expr(self.split_k):
            # semaphore: publish the partials, count the finished splits of this row tile
            cute.arch.fence_acq_rel_gpu()
            cute.arch.sync_threads()
            if tidx == 0:
                old = cute.arch.atomic_add((mCnt.iterator + bidx).llvm_ptr, cutlass.Int32(1), sem="acq_rel", scope="gpu")
                sFlag[0] = old
            cute.arch.sync_threads()
            splits = mWs.shape[0]
            if sFlag[0] == splits * n_tiles - 1:  # every (K slice, N-tile) CTA of this row tile is done
                cute.arch.fence_acq_rel_gpu()
                for nt in range(n_tiles):
                    n0 = nt * BN
                    # reduction: thread -> column (coalesced over the workspace row), rows in turn;
                    # the split order is fixed, so every run gives the same sums
                    for rr in cutlass.range_constexpr(bm * BN // self.threads):
                        lin = rr * self.threads + tidx
                        r = lin // BN
                        c = lin % BN
                        acc = cutlass.Float32(0.0)
                        if row0 + r < T:
                            for ks in cutlass.range(splits, unroll=8):
                                acc = acc + mWs[ks, row0 + r, n0 + c]
                        sC[r, c] = acc
                    cute.arch.sync_threads()
                    self._topk_tile(sC, sMs, sMi, sSt, sRs, sRi, sRst, erow, q, n0)
                if tidx == 0:
                    mCnt[bidx] = cutlass.Int32(0)  # ready for the next launch
                self._write_out(sRs, sRi, sRst, mIds, mW, erow, q, row0 + erow, T)
        else:
            self._write_out(sRs, sRi, sRst, mIds, mW, erow, q, row0 + erow, T)

    @cute.jit
    def _topk_tile(self, sC: cute.Tensor, sMs: cute.Tensor, sMi: cute.Tensor, sSt: cute.Tensor, sRs: cute.Tensor,
                   sRi: cute.Tensor, sRst: cute.Tensor, erow, q, n0):
        """Epilogue of one N-tile of logits in SMEM: per-thread top-k, then merge into the running list."""
        self._store_partial(sC, sMs, sMi, sSt, erow, q, n0)
        cute.arch.sync_threads()
        if q == 0:
            self._merge_row(sMs, sMi, sRs, sRi, sSt, sRst, erow)
        cute.arch.sync_threads()

    @cute.jit
    def _write_out(self, sRs: cute.Tensor, sRi: cute.Tensor, sRst: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor,
                   erow, q, grow, T):
        if q == 0:
            if grow < T:
                self._write_row(sRs, sRi, sRst, mIds, mW, erow, grow)


def pick_config(num_tokens: int):
    """(bm, threads): small M tiles for decode-sized batches, larger ones to amortize the
    per-CTA dequantization of the whole weight when there are many tokens."""
    if num_tokens <= 256:
        return 16, 128
    return 64, 256


def pick_splits(num_tokens: int, k_tiles: int, bm: int, n_tiles: int = 1, target_ctas: int = 264,
                max_splits: int = 56):
    """(splits, k_tiles_per_split): split K so that about ``target_ctas`` CTAs run (2 per H100 SM;
    with split-K every N-tile is a CTA too), at most ``max_splits`` (the last CTA of a row tile
    sums that many partial tiles)."""
    m_tiles = -(-num_tokens // bm)
    want = max(1, min(k_tiles, max_splits, -(-target_ctas // (m_tiles * n_tiles))))
    per = -(-k_tiles // want)
    return -(-k_tiles // per), per


_compiled = {}


def compile_portable(top_k: int, scoring: str, renormalize: bool, bm: int, threads: int, args, split_k: bool = False):
    """Compile (cached by configuration; tensor shapes and strides are dynamic)."""
    key = (top_k, scoring, renormalize, bm, threads, split_k)
    fn = _compiled.get(key)
    if fn is None:
        kern = PortableRouterKernel(top_k, scoring, renormalize, bm, threads, split_k)
        fn = cute.compile(kern, *args)
        _compiled[key] = fn
    return fn
