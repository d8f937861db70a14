"""Staged-decode swap-AB router: the swap-AB kernel's register decode and ``mma.sync``, with each
operand decoded ONCE per CTA into shared memory instead of once per warp.

In the swap-AB kernel (``kernels.router.gemv.MmaGemvRouterKernel``) every warp decodes the weight
rows and the tokens of its own K steps: a 16 x 16 tile step is ~490 SASS instructions of which
~80 % decode, and each weight value is decoded once per 16 tokens, each token once per 16
experts.  Here a CTA of 8 warps owns ``em`` experts x ``tn`` tokens:

* per 128-wide K step the CTA's threads split the (row, 32-code chunk) units of its ``em`` weight
  rows and ``tn`` tokens (``parts`` pieces per unit, balanced over the 256 threads), decode them
  with the same bit trick (:func:`kernels.router.quant._dec_pair`: ``value * scale * 2^-14`` as
  fp16x2, exact) and store them in the order an MMA lane reads them: a unit's 16 fp16x2 words are
  4 x 16 bytes, ``ld.shared.v4`` of 16-byte chunk ``w`` gives lane (g, q) the pairs of MMAs 2w and
  2w+1 (chunks XOR-swizzled by the unit index so that neither the stores nor the loads conflict);
* a warp computes a ``16 wm`` x ``8 wn`` block of the tile from shared memory (``4 (2 wm + wn)``
  16-byte loads and ``8 wm wn`` MMAs per step); the decode buffer is double-buffered, one barrier per
  step; the raw words of the next step are loaded into registers while this one decodes;
* the warps own disjoint output blocks, so no cross-warp sum: each writes its fp32 partials
  (x 2^28, both operands' 2^-14 undone) to the K split's slot of ``[ksplit, T, E]``, and the last
  CTA of each 8-token group (a counter, as the swap-AB kernel's counted route) routes it, one warp
  per token, summing the splits in split order (deterministic).

With the 64 x 32 tile a warp-step is ~320 SASS instructions (ptxas, sm_90a) for two 16 x 16
blocks, against 489 per 16 x 16 block in the swap-AB kernel; on the H200 it is nevertheless slower
at T=128 (bench/results/h200/README.md), so the router only runs it when forced.  Portable: plain
loads, ``cp.async``, ``ld.shared``, ``mma.sync.m16n8k16`` fp16 (SM80, SM90, SM120).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute

from .gemv import THREADS, UNDO_2M28, WARPS, MmaGemvRouterKernel
from .quant import _dec_pair, _scale2
from .tile import _gptr

UNIT_WORDS = 16  # decoded fp16x2 words of one (row, 32-code chunk) unit


def chunk_offset(unit, w):
    """Word offset (in a decode buffer) of 16-byte chunk ``w`` of decode unit ``unit``: chunks
    XOR-swizzled by ``(unit >> 1) & 3`` so that 8 consecutive units (an 8-lane phase of the stores,
    or lanes (g, q) of a row pair in the loads) hit 8 different 16-byte bank groups."""
    return unit * UNIT_WORDS + (w ^ ((unit >> 1) & 3)) * 4


def staged_layout(em: int, tn: int):
    """``(wm, wn, parts)`` of an ``em`` x ``tn`` CTA tile: each warp computes 16 wm experts x 8 wn
    tokens (8 warps cover the tile), and each decode unit is cut in ``parts`` pieces so that every
    thread gets the same number and a piece index alone says weight or token (compile-time)."""
    if em % 16 or tn % 8:
        raise ValueError(f"tile {em} x {tn}: experts a multiple of 16, tokens of 8")
    minis = (em // 16) * (tn // 8)
    if minis % WARPS:
        raise ValueError(f"tile {em} x {tn}: {minis} 16 x 8 blocks do not split over {WARPS} warps")
    per_warp = minis // WARPS
    wn = min(tn // 8, per_warp)
    while per_warp % wn:
        wn -= 1
    wm = per_warp // wn
    if (em // 16) % wm:
        raise ValueError(f"tile {em} x {tn}: no warp layout")
    units = 4 * (em + tn)
    for parts in (1, 2, 4):
        if (units * parts) % THREADS == 0 and (4 * em * parts) % THREADS == 0:
            return wm, wn, parts
    raise ValueError(f"tile {em} x {tn}: the decode units do not split evenly over {THREADS} threads")


class StagedRouterKernel(MmaGemvRouterKernel):
    """``em`` experts x ``tn`` tokens per CTA, ``ksplit`` K splits, a ``stages``-deep cp.async ring
    of raw K steps; top_k / scoring / renormalize / E compile-time.  Grid ``[E/em, ksplit,
    ceil(T/tn)]``.

    Route (``route="wait"``): every CTA counts itself in on each 8-token group it covers (one
    counter per group); the group's designated CTA ``(n mod E/em, 0)`` waits on the counter (thread 0
    spins with acquire loads) and routes it, one warp per token, so a CTA's groups are routed by
    different CTAs in parallel.  The designated CTAs are the lowest-numbered of their token rows,
    dispatched first, and at most T/8 of them wait, far fewer than the CTAs an H200 holds at once,
    so the CTAs they wait for always get an SM.  ``route="count"``: the swap-AB kernel's last-to-arrive
    route (that CTA routes all its groups itself)."""

    def __init__(self, top_k: int, scoring: str, renormalize: bool, experts: int, em: int = 64, tn: int = 32,
                 ksplit: int = 1, variant: str = "", stages: int = 4, route: str = "wait"):
        super().__init__(top_k, scoring, renormalize, experts, nt=tn // 8, ksplit=ksplit, poll=False,
                         variant=variant, mw=em // 16)
        if stages < 2:
            raise ValueError(f"stages={stages}: the ring needs 2 or more")
        if route not in ("wait", "count"):
            raise ValueError(f"route={route!r}: 'wait' or 'count'")
        self.wm, self.wn, self.parts = staged_layout(em, tn)
        self.em = em
        self.stages = stages
        self.route = route
        self.units = 4 * (em + tn)
        self.per_thread = self.units * self.parts // THREADS
        self.weight_parts = 4 * em * self.parts // THREADS  # the first ones of a thread are weights
        self.words = 4 // self.parts  # code words per piece
        self.buf_words = self.units * UNIT_WORDS
        # raw stage: the units' code words (unit u at 4u), then two scale words per row and token
        # (the two 64-wide K tiles of the step: E4M3 blocks 0-3 and 4-7)
        self.scale_off = 4 * self.units
        self.raw_words = self.scale_off + 2 * (em + tn)
        self.ctas_per_sm = 2
        self.smem_bytes = 4 * (self.stages * self.raw_words + 2 * self.buf_words) + 64

    @cute.jit
    def _issue(self, mA, mSFA, mB, mSFB, sRaw: cute.Tensor, s, slot, n0, t0, T, kw, k_tiles, tidx, cpw, cp4):
        """cp.async of K step ``s`` into ring slot ``slot``: this thread's pieces (``words`` code
        words each) and at most one 4-byte scale word per thread and round."""
        base = slot * self.raw_words
        pA = _gptr(mA)
        pB = _gptr(mB)
        for i in cutlass.range_constexpr(self.per_thread):
            p = tidx + THREADS * i
            unit = p // self.parts
            w0 = (p % self.parts) * self.words
            r = unit // 4
            c = 4 * s + unit % 4  # 32-code chunk of the row
            if cutlass.const_expr(i < self.weight_parts):
                src = pB + cute.assume((n0 + r) * kw + c * 4 + w0, divby=self.words)
            else:
                tok = cutlass.min(t0 + r - self.em, T - 1)  # tokens past T re-read token T-1, never stored
                src = pA + cute.assume(tok * kw + c * 4 + w0, divby=self.words)
            dst = sRaw.iterator + cute.assume(base + unit * 4 + w0, divby=self.words)
            cute.copy(cpw, cute.make_tensor(src, cute.make_layout(self.words)),
                      cute.make_tensor(dst, cute.make_layout(self.words)))
        n_sc = 2 * (self.em + self.tn)
        pSB = _gptr(mSFB)
        pSA = _gptr(mSFA)
        for i in cutlass.range_constexpr(-(-n_sc // THREADS)):
            idx = tidx + THREADS * i
            if idx < n_sc:
                r = idx // 2
                kt = 2 * s + idx % 2
                sdst = cute.make_tensor(sRaw.iterator + (base + self.scale_off + idx), cute.make_layout(1))
                if r < self.em:
                    row = n0 + r
                    # the 128x4 scale atom of (row block, K tile): 128 words, row-interleaved (kernels.nvfp4.swizzle)
                    off = ((row // 128) * k_tiles + kt) * 128 + (row % 32) * 4 + (row % 128) // 32
                    cute.copy(cp4, cute.make_tensor(pSB + off, cute.make_layout(1)), sdst)
                else:
                    tok = cutlass.min(t0 + r - self.em, T - 1)
                    cute.copy(cp4, cute.make_tensor(pSA + (tok * k_tiles + kt), cute.make_layout(1)), sdst)

    @cute.jit
    def _decode_step(self, sRaw: cute.Tensor, sDec: cute.Tensor, slot, buf, tidx):
        """Decode this thread's pieces of ring slot ``slot`` into buffer ``buf``: code word w of a
        unit becomes the unit's 16-byte chunk w (its four fp16x2 pairs), at :func:`chunk_offset`."""
        base = slot * self.raw_words
        raw = cute.make_rmem_tensor(cute.make_layout(self.words), cutlass.Int32)
        out = cute.make_rmem_tensor(cute.make_layout(4), cutlass.Int32)
        for i in cutlass.range_constexpr(self.per_thread):
            p = tidx + THREADS * i
            unit = p // self.parts
            w0 = (p % self.parts) * self.words
            q = unit % 4
            cute.autovec_copy(cute.make_tensor(sRaw.iterator + cute.assume(base + unit * 4 + w0, divby=self.words),
                                               cute.make_layout(self.words)), raw)
            # chunk q's two E4M3 blocks are bytes 2 (q % 2) and +1 of the step's scale word q // 2
            sw = sRaw[base + self.scale_off + (unit // 4) * 2 + q // 2] >> (16 * (q % 2))
            for wl in cutlass.range_constexpr(self.words):
                w = w0 + wl
                s2 = _scale2(sw >> (8 * (w // 2)))
                for a in cutlass.range_constexpr(4):
                    out[a] = _dec_pair(raw[wl], s2, a)
                off = buf * self.buf_words + chunk_offset(unit, w)
                cute.autovec_copy(out, cute.make_tensor(sDec.iterator + cute.assume(off, divby=4), cute.make_layout(4)))

    @cute.jit
    def _mma_step(self, sDec: cute.Tensor, buf, row0, tok0, g, q, tiled_mma, tCrA, tCrB, rA, rB, tCrC):
        """The warp's 8 wm wn MMAs of one K step from buffer ``buf``: chunk w of each of its rows
        (g, g+8 of every 16-expert block) and tokens (g of every 8-token block) feeds MMAs 2w, 2w+1."""
        wm, wn = self.wm, self.wn
        fa = cute.make_rmem_tensor(cute.make_layout((4, 2, wm), stride=(1, 4, 8)), cutlass.Int32)
        fb = cute.make_rmem_tensor(cute.make_layout((4, wn), stride=(1, 4)), cutlass.Int32)
        for w in cutlass.range_constexpr(4):
            for blk in cutlass.range_constexpr(wm):
                for h in cutlass.range_constexpr(2):
                    unit = (row0 + 16 * blk + g + 8 * h) * 4 + q
                    off = buf * self.buf_words + chunk_offset(unit, w)
                    cute.autovec_copy(cute.make_tensor(sDec.iterator + cute.assume(off, divby=4), cute.make_layout(4)),
                                      fa[None, h, blk])
            for n in cutlass.range_constexpr(wn):
                unit = (self.em + tok0 + 8 * n + g) * 4 + q
                off = buf * self.buf_words + chunk_offset(unit, w)
                cute.autovec_copy(cute.make_tensor(sDec.iterator + cute.assume(off, divby=4), cute.make_layout(4)),
                                  fb[None, n])
            for jj in cutlass.range_constexpr(2):
                j = 2 * w + jj
                for blk in cutlass.range_constexpr(wm):
                    for h in cutlass.range_constexpr(2):
                        for v in cutlass.range_constexpr(2):
                            rA[h + 2 * v, blk, j] = fa[2 * jj + v, h, blk]
                for n in cutlass.range_constexpr(wn):
                    for v in cutlass.range_constexpr(2):
                        rB[v, n, j] = fb[2 * jj + v, n]
                cute.gemm(tiled_mma, tCrC, tCrA[None, None, j], tCrB[None, None, j], tCrC)

    @cute.kernel
    def kernel(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
               mAlpha: cute.Tensor, mWs: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, mCnt: cute.Tensor,
               tiled_mma: cute.TiledMma):
        tidx, _, _ = cute.arch.thread_idx()
        bx, by, bz = cute.arch.block_idx()
        wm, wn, em = self.wm, self.wn, self.em
        warp = tidx // 32
        lane = tidx % 32
        g = lane // 4
        q = lane % 4
        T = mA.shape[0]
        kw = mA.shape[1]
        steps = kw // 16  # K steps of 128
        k_tiles = kw // 8
        n0 = bx * em
        t0 = bz * self.tn
        per = (steps + self.ksplit - 1) // self.ksplit
        s_begin = by * per
        s_end = cutlass.min(steps, s_begin + per)
        # this warp's block of the tile: experts row0.., tokens tok0.. (local)
        warps_m = em // (16 * wm)
        row0 = (warp % warps_m) * 16 * wm
        tok0 = (warp // warps_m) * 8 * wn

        smem = cutlass.utils.SmemAllocator()
        sRaw = smem.allocate_tensor(cutlass.Int32, cute.make_layout(self.stages * self.raw_words), 16)
        sDec = smem.allocate_tensor(cutlass.Int32, cute.make_layout(2 * self.buf_words), 16)
        sFlag = smem.allocate_tensor(cutlass.Int32, cute.make_layout(8), 16)

        # fragment shapes only (nothing is read through these views)
        f16 = cute.recast_ptr(sDec.iterator, dtype=cutlass.Float16)
        vA = cute.make_tensor(f16, cute.make_layout((16 * wm, 128), stride=(128, 1)))
        vB = cute.make_tensor(f16, cute.make_layout((8 * wn, 128), stride=(128, 1)))
        thr_mma = tiled_mma.get_slice(lane)
        tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(vA))  # ((2,2,2), wm, 8)
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(vB))  # ((2,2), wn, 8)
        rA = cute.recast_tensor(tCrA, cutlass.Int32)  # ((1,2,2), wm, 8): (row g / g+8) + 2 (slot half)
        rB = cute.recast_tensor(tCrB, cutlass.Int32)  # ((1,2), wn, 8)
        vC = cute.make_tensor(cute.recast_ptr(sDec.iterator, dtype=cutlass.Float32),
                              cute.make_layout((16 * wm, 8 * wn), stride=(8 * wn, 1)))
        tCrC = tiled_mma.make_fragment_C(thr_mma.partition_C(vC))
        tCcC = thr_mma.partition_C(cute.make_identity_tensor((16 * wm, 8 * wn)))  # (expert, token) of each
        tCrC.fill(0.0)

        cpw = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.ALWAYS),
                                  cutlass.Int32, num_bits_per_copy=32 * self.words)
        cp4 = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.cpasync.LoadCacheMode.ALWAYS),
                                  cutlass.Int32, num_bits_per_copy=32)
        S = self.stages
        n = s_end - s_begin
        for st in cutlass.range_constexpr(S - 1):
            if st < n:
                self._issue(mA, mSFA, mB, mSFB, sRaw, s_begin + st, st, n0, t0, T, kw, k_tiles, tidx, cpw, cp4)
            cute.arch.cp_async_commit_group()
        cute.arch.cp_async_wait_group(S - 2)
        cute.arch.sync_threads()
        self._decode_step(sRaw, sDec, 0, 0, tidx)
        # one barrier per step: after it, step it+1's raw words have landed (every thread's copies),
        # step it's decode is visible, and every warp is done with step it-1's buffer and slot
        for it in range(n):
            nxt = it + S - 1
            if nxt < n:
                self._issue(mA, mSFA, mB, mSFB, sRaw, s_begin + nxt, nxt % S, n0, t0, T, kw, k_tiles, tidx, cpw, cp4)
            cute.arch.cp_async_commit_group()
            cute.arch.cp_async_wait_group(S - 2)
            cute.arch.sync_threads()
            # unconditional: the last round decodes a stale slot into the buffer nobody reads again
            self._decode_step(sRaw, sDec, (it + 1) % S, (it + 1) % 2, tidx)
            self._mma_step(sDec, it % 2, row0, tok0, g, q, tiled_mma, tCrA, tCrB, rA, rB, tCrC)
        cute.arch.cp_async_wait_group(0)

        # the warp's partials (both operands' 2^-14 undone, exact) to this split's slot
        for i in cutlass.range_constexpr(cute.size(tCrC)):
            m, nn = tCcC[i]
            tok = t0 + tok0 + nn
            if tok < T:
                mWs[by, tok, n0 + row0 + m] = tCrC[i] * cutlass.Float32(UNDO_2M28)
        if cutlass.const_expr("noroute" not in self.variant):
            # every thread's partials visible at gpu scope before its CTA counts itself in
            cute.arch.fence_acq_rel_gpu()
            if cutlass.const_expr(self.route == "count"):
                self._route_groups(mWs, mSFA, mAlpha, mIds, mW, mCnt, sFlag, tidx, warp, lane, bz, t0, T)
            else:
                self._route_waiting(mWs, mSFA, mAlpha, mIds, mW, mCnt, tidx, warp, lane, bx, by, bz, t0, T)

def pick_staged(num_tokens: int, experts: int, hidden: int, target_ctas: int = 264):
    """``(em, tn, ksplit)``: a 64 x 32 tile (E % 64 == 0) and enough K splits for about
    ``target_ctas`` CTAs (two per H200 SM), at least 4 K steps per split."""
    em = 64 if experts % 64 == 0 else 32
    tn = 32
    tiles = (experts // em) * -(-num_tokens // tn)
    steps = hidden // 128
    ksplit = max(1, min(-(-target_ctas // tiles), steps // 4))
    return em, tn, ksplit


_compiled = {}


def compile_staged(top_k: int, scoring: str, renormalize: bool, experts: int, em: int, tn: int, ksplit: int, args,
                   variant: str = "", stages: int = 4, route: str = "wait"):
    key = (top_k, scoring, renormalize, experts, em, tn, ksplit, variant, stages, route)
    fn = _compiled.get(key)
    if fn is None:
        fn = cute.compile(StagedRouterKernel(top_k, scoring, renormalize, experts, em, tn, ksplit, variant,
                                             stages, route), *args)
        _compiled[key] = fn
    return fn
