"""SM100 (Blackwell datacenter) fused NVFP4 router in CuTe DSL: tcgen05 block-scaled MMA with the
top-k fused into the epilogue.

NOT VERIFIED: no SM100 GPU was available.  It compiles for ``sm_100a`` (CI checks that with
``CUTE_DSL_ARCH=sm_100a``, no GPU needed); its numeric tests are skipped with that reason, and the
wrapper selects it only with ``GPUREPRO_ROUTER_SM100=1``.

Layout of the work (one CTA per 128 tokens, all E experts, non-persistent):

* warp 5 (TMA): for every N-tile of 128 experts and every K-tile of 256 elements, loads A, B
  (packed E2M1), SFA and SFB (E4M3, the 128x4-atom layout of ``kernels.nvfp4.swizzle``, read
  through ``blockscaled_utils.tile_atom_to_shape_SF``) into an ``S``-stage SMEM ring.
* warp 4 (MMA): copies SFA/SFB SMEM->TMEM (``tcgen05.cp``), issues ``tcgen05.mma`` block-scaled
  (kind mxf4nvf4, scale vector 16) into one of two accumulator stages in TMEM.  SFB has its
  own tiled MMA (always ``CtaGroup.ONE``, N rounded up to 128) for its TMA atom and partition.
  TMEM columns: 2 x 128 accumulator + (128/32)*4 SFA + (128/32)*4 SFB = 288 of the 512 allocated.
* warps 0-3 (epilogue, one accumulator row = one token per thread): TMEM->registers in subtiles
  of ``epi_n`` columns; the accumulator stage is released as soon as the last subtile is in
  registers (before the top-k work on it), so the MMA warp starts the next N-tile; each value,
  times ``alpha = g_a * g_b``, is inserted into k scalar registers (fully unrolled sorted
  insertion) with expert id ``col + tile_n_offset + subtile_idx * epi_n``; the per-tile list is
  merged into the row's running top-k and softmax (max, sum) held in SMEM tensors.
"""

from __future__ import annotations

import math

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.blackwell_helpers as sm100_utils
import cutlass.utils.blockscaled_layout as blockscaled_utils
from cutlass.cute.nvgpu import cpasync, tcgen05

from .portable import DSL_OPS
from .topk import EMPTY_ID, global_expert_index, sorted_insert

SF_VEC = 16
TILE_M = 128
TILE_N = 128
ACC_STAGES = 2
EPI_WARPS = (0, 1, 2, 3)
MMA_WARP = 4
TMA_WARP = 5
THREADS = 32 * 6
TMEM_ALLOC_COLS = 512


class Sm100RouterKernel:
    def __init__(self, top_k: int, scoring: str, renormalize: bool, ab_stages: int = 4):
        self.top_k = top_k
        self.scoring = scoring
        self.renormalize = renormalize
        self.need_stats = scoring == "softmax" and not renormalize
        self.ab_stages = ab_stages
        self.mma_inst_shape_mn = (TILE_M, TILE_N)
        # SFB's MMA: one CTA, N rounded up to a whole 128-row scale atom
        self.mma_inst_shape_mn_sfb = (TILE_M, -(-TILE_N // 128) * 128)
        self.cta_group = tcgen05.CtaGroup.ONE
        self.ab_dtype = cutlass.Float4E2M1FN
        self.sf_dtype = cutlass.Float8E4M3FN

    def _setup(self):
        mode_k = tcgen05.OperandMajorMode.K
        self.tiled_mma = sm100_utils.make_blockscaled_trivial_tiled_mma(
            self.ab_dtype, self.ab_dtype, mode_k, mode_k, self.sf_dtype, SF_VEC, self.cta_group, self.mma_inst_shape_mn)
        self.tiled_mma_sfb = sm100_utils.make_blockscaled_trivial_tiled_mma(
            self.ab_dtype, self.ab_dtype, mode_k, mode_k, self.sf_dtype, SF_VEC, tcgen05.CtaGroup.ONE,
            self.mma_inst_shape_mn_sfb)
        mma_k = cute.size(self.tiled_mma.shape_mnk, mode=[2])
        self.kblocks = 4
        self.mma_tiler = (TILE_M, TILE_N, mma_k * self.kblocks)
        self.mma_tiler_sfb = (self.mma_inst_shape_mn_sfb[0], self.mma_inst_shape_mn_sfb[1], mma_k * self.kblocks)
        thr = cute.size(self.tiled_mma.thr_id.shape)
        self.cta_tile_shape_mnk = (self.mma_tiler[0] // thr, self.mma_tiler[1], self.mma_tiler[2])
        self.cta_tile_shape_mnk_sfb = (self.mma_tiler_sfb[0] // thr, self.mma_tiler_sfb[1], self.mma_tiler_sfb[2])
        self.cluster_layout_vmnk = cute.tiled_divide(cute.make_layout((1, 1, 1)), (self.tiled_mma.thr_id.shape,))
        self.cluster_layout_sfb_vmnk = cute.tiled_divide(cute.make_layout((1, 1, 1)), (self.tiled_mma_sfb.thr_id.shape,))
        self.epi_tile = sm100_utils.compute_epilogue_tile_shape(
            self.cta_tile_shape_mnk, False, utils.LayoutEnum.ROW_MAJOR, cutlass.Float32)
        self.epi_n = cute.size(self.epi_tile[1])
        self.a_smem = sm100_utils.make_smem_layout_a(self.tiled_mma, self.mma_tiler, self.ab_dtype, self.ab_stages)
        self.b_smem = sm100_utils.make_smem_layout_b(self.tiled_mma, self.mma_tiler, self.ab_dtype, self.ab_stages)
        self.sfa_smem = blockscaled_utils.make_smem_layout_sfa(self.tiled_mma, self.mma_tiler, SF_VEC, self.ab_stages)
        self.sfb_smem = blockscaled_utils.make_smem_layout_sfb(self.tiled_mma, self.mma_tiler, SF_VEC, self.ab_stages)
        # TMEM columns: accumulators first, then SFA, then SFB (32 rows of scales per column group)
        self.num_acc_cols = self.cta_tile_shape_mnk[1] * ACC_STAGES
        self.num_sfa_cols = (self.cta_tile_shape_mnk[0] // 32) * self.kblocks
        self.num_sfb_cols = (self.cta_tile_shape_mnk_sfb[1] // 32) * self.kblocks
        assert self.num_acc_cols + self.num_sfa_cols + self.num_sfb_cols <= TMEM_ALLOC_COLS

    @cute.jit
    def __call__(self, mA: cute.Tensor, mSFA: cute.Tensor, mB: cute.Tensor, mSFB: cute.Tensor,
                 mAlpha: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, stream):
        self._setup()
        m = mA.shape[0]
        k = mA.shape[1] * 2
        n = mB.shape[0]
        # packed bytes -> E2M1 / E4M3 views, K-major (M, K, L=1)
        a = cute.make_tensor(cute.recast_ptr(mA.iterator, dtype=self.ab_dtype),
                             cute.make_ordered_layout((m, cute.assume(k, 256), 1), order=(1, 0, 2)))
        b = cute.make_tensor(cute.recast_ptr(mB.iterator, dtype=self.ab_dtype),
                             cute.make_ordered_layout((n, cute.assume(k, 256), 1), order=(1, 0, 2)))
        sfa = cute.make_tensor(cute.recast_ptr(mSFA.iterator, dtype=self.sf_dtype),
                               blockscaled_utils.tile_atom_to_shape_SF(a.shape, SF_VEC))
        sfb = cute.make_tensor(cute.recast_ptr(mSFB.iterator, dtype=self.sf_dtype),
                               blockscaled_utils.tile_atom_to_shape_SF(b.shape, SF_VEC))

        one = (1, 1)
        a_op = sm100_utils.cluster_shape_to_tma_atom_A(one, self.tiled_mma.thr_id)
        b_op = sm100_utils.cluster_shape_to_tma_atom_B(one, self.tiled_mma.thr_id)
        sfb_op = sm100_utils.cluster_shape_to_tma_atom_SFB(one, self.tiled_mma.thr_id)
        a_one = cute.slice_(self.a_smem, (None, None, None, 0))
        b_one = cute.slice_(self.b_smem, (None, None, None, 0))
        sfa_one = cute.slice_(self.sfa_smem, (None, None, None, 0))
        sfb_one = cute.slice_(self.sfb_smem, (None, None, None, 0))
        tma_a, gA = cute.nvgpu.make_tiled_tma_atom_A(a_op, a, a_one, self.mma_tiler, self.tiled_mma,
                                                     self.cluster_layout_vmnk.shape)
        tma_b, gB = cute.nvgpu.make_tiled_tma_atom_B(b_op, b, b_one, self.mma_tiler, self.tiled_mma,
                                                     self.cluster_layout_vmnk.shape)
        tma_sfa, gSFA = cute.nvgpu.make_tiled_tma_atom_A(a_op, sfa, sfa_one, self.mma_tiler, self.tiled_mma,
                                                         self.cluster_layout_vmnk.shape, internal_type=cutlass.Int16)
        tma_sfb, gSFB = cute.nvgpu.make_tiled_tma_atom_B(sfb_op, sfb, sfb_one, self.mma_tiler_sfb, self.tiled_mma_sfb,
                                                         self.cluster_layout_sfb_vmnk.shape, internal_type=cutlass.Int16)
        self.tma_bytes = (cute.size_in_bytes(self.ab_dtype, a_one) + cute.size_in_bytes(self.ab_dtype, b_one)
                          + cute.size_in_bytes(self.sf_dtype, sfa_one) + cute.size_in_bytes(self.sf_dtype, sfb_one))
        kk = self.top_k

        @cute.struct
        class SharedStorage:
            ab_full: cute.struct.MemRange[cutlass.Int64, self.ab_stages]
            ab_empty: cute.struct.MemRange[cutlass.Int64, self.ab_stages]
            acc_full: cute.struct.MemRange[cutlass.Int64, ACC_STAGES]
            acc_empty: cute.struct.MemRange[cutlass.Int64, ACC_STAGES]
            tmem_holding: cutlass.Int32
            run_s: cute.struct.MemRange[cutlass.Float32, TILE_M * kk]
            run_i: cute.struct.MemRange[cutlass.Int32, TILE_M * kk]
            run_stat: cute.struct.MemRange[cutlass.Float32, TILE_M * 2]
            sA: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(self.a_smem.outer)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(self.b_smem.outer)], 1024]
            sSFA: cute.struct.Align[cute.struct.MemRange[self.sf_dtype, cute.cosize(self.sfa_smem)], 1024]
            sSFB: cute.struct.Align[cute.struct.MemRange[self.sf_dtype, cute.cosize(self.sfb_smem)], 1024]

        self.shared_storage = SharedStorage
        grid_m = (m + TILE_M - 1) // TILE_M
        self.kernel(self.tiled_mma, self.tiled_mma_sfb, tma_a, gA, tma_b, gB, tma_sfa, gSFA, tma_sfb, gSFB,
                    self.cluster_layout_vmnk, self.a_smem, self.b_smem, self.sfa_smem, self.sfb_smem,
                    self.epi_tile, mAlpha, mIds, mW, m, n).launch(
            grid=[grid_m, 1, 1], block=[THREADS, 1, 1], cluster=[1, 1, 1], stream=stream)

    # --------------------------------------------------------------- helpers
    def _s2t(self, sSF: cute.Tensor, tSF: cute.Tensor):
        """SMEM->TMEM copy of scale factors (tcgen05.cp 4x32x128b) and its partitions."""
        sSF_c = cute.filter_zeros(sSF)
        tSF_c = cute.filter_zeros(tSF)
        atom = cute.make_copy_atom(tcgen05.Cp4x32x128bOp(self.cta_group), self.sf_dtype)
        tiled = tcgen05.make_s2t_copy(atom, tSF_c)
        thr = tiled.get_slice(0)
        src = tcgen05.get_s2t_smem_desc_tensor(tiled, thr.partition_S(sSF_c))
        dst = thr.partition_D(tSF_c)
        return tiled, src, dst

    @cute.jit
    def _row_weights(self, vals, m, s):
        k = self.top_k
        ws = []
        if cutlass.const_expr(self.scoring == "softmax"):
            if cutlass.const_expr(self.renormalize):
                ws = [cute.math.exp(v - vals[0]) for v in vals]
            else:
                inv = cutlass.Float32(1.0) / s
                ws = [cute.math.exp(v - m) * inv for v in vals]
        else:
            ws = [cutlass.Float32(1.0) / (cutlass.Float32(1.0) + cute.math.exp(-v)) for v in vals]
        if cutlass.const_expr(self.renormalize):
            tot = ws[0]
            for j in cutlass.range_constexpr(1, k):
                tot = tot + ws[j]
            inv = cutlass.Float32(1.0) / tot
            ws = [w * inv for w in ws]
        return ws

    @cute.jit
    def _epilogue_tile(self, tiled_t2r, tTR_tAcc_stage, tTR_rAcc, tTR_cSub, acc_pipeline, acc_state,
                       sRs: cute.Tensor, sRi: cute.Tensor, sRst: cute.Tensor, erow, n0, alpha):
        k = self.top_k
        vals = [cutlass.Float32(-math.inf)] * k
        ids = [cutlass.Int32(EMPTY_ID)] * k
        subtiles = cute.size(tTR_tAcc_stage, mode=[3])
        for sub in cutlass.range_constexpr(subtiles):
            cute.copy(tiled_t2r, tTR_tAcc_stage[(None, None, None, sub)], tTR_rAcc)
            if cutlass.const_expr(sub == subtiles - 1):
                # early release: the whole tile is in registers, let the MMA warp reuse the stage
                cute.arch.fence_view_async_tmem_load()
                acc_pipeline.consumer_release(acc_state)
            for i in cutlass.range_constexpr(cute.size(tTR_rAcc)):
                col = tTR_cSub[i][1]
                vals, ids = sorted_insert(vals, ids, tTR_rAcc[i] * alpha,
                                          global_expert_index(col, n0, sub, self.epi_n), DSL_OPS)
        # merge with the running top-k of earlier N-tiles (SMEM, one row per thread)
        run_v = [sRs[erow, j] for j in range(k)]
        run_i = [sRi[erow, j] for j in range(k)]
        for j in cutlass.range_constexpr(k):
            run_v, run_i = sorted_insert(run_v, run_i, vals[j], ids[j], DSL_OPS)
        for j in cutlass.range_constexpr(k):
            sRs[erow, j] = run_v[j]
            sRi[erow, j] = run_i[j]
        if cutlass.const_expr(self.need_stats):
            m_t = vals[0]
            s_t = cutlass.Float32(0.0)
            for sub in cutlass.range_constexpr(subtiles):
                cute.copy(tiled_t2r, tTR_tAcc_stage[(None, None, None, sub)], tTR_rAcc)
                for i in cutlass.range_constexpr(cute.size(tTR_rAcc)):
                    s_t = s_t + cute.math.exp(tTR_rAcc[i] * alpha - m_t)
            m0 = sRst[erow, 0]
            mn = cute.arch.fmax(m0, m_t)
            sRst[erow, 1] = sRst[erow, 1] * cute.math.exp(m0 - mn) + s_t * cute.math.exp(m_t - mn)
            sRst[erow, 0] = mn

    @cute.kernel
    def kernel(self, tiled_mma: cute.TiledMma, tiled_mma_sfb: cute.TiledMma,
               tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
               tma_sfa: cute.CopyAtom, mSFA: cute.Tensor, tma_sfb: cute.CopyAtom, mSFB: cute.Tensor,
               cluster_layout_vmnk: cute.Layout, a_smem: cute.ComposedLayout, b_smem: cute.ComposedLayout,
               sfa_smem: cute.Layout, sfb_smem: cute.Layout, epi_tile: cute.Tile,
               mAlpha: cute.Tensor, mIds: cute.Tensor, mW: cute.Tensor, m_total, n_total):
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        k = self.top_k
        if warp_idx == TMA_WARP:
            cpasync.prefetch_descriptor(tma_a)
            cpasync.prefetch_descriptor(tma_b)
            cpasync.prefetch_descriptor(tma_sfa)
            cpasync.prefetch_descriptor(tma_sfb)

        smem = utils.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        ab_pipeline = pipeline.PipelineTmaUmma.create(
            barrier_storage=storage.ab_full.data_ptr(), num_stages=self.ab_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1),
            tx_count=self.tma_bytes, cta_layout_vmnk=cluster_layout_vmnk, defer_sync=True)
        acc_pipeline = pipeline.PipelineUmmaAsync.create(
            barrier_storage=storage.acc_full.data_ptr(), num_stages=ACC_STAGES,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32 * len(EPI_WARPS)),
            cta_layout_vmnk=cluster_layout_vmnk, defer_sync=True)
        tmem = utils.TmemAllocator(
            storage.tmem_holding,
            barrier_for_retrieve=pipeline.NamedBarrier(barrier_id=1, num_threads=32 * (len(EPI_WARPS) + 1)),
            allocator_warp_id=EPI_WARPS[0])
        epi_barrier = pipeline.NamedBarrier(barrier_id=2, num_threads=32 * len(EPI_WARPS))
        pipeline.pipeline_init_arrive(cluster_shape_mn=(1, 1), is_relaxed=True)

        sA = storage.sA.get_tensor(a_smem.outer, swizzle=a_smem.inner)
        sB = storage.sB.get_tensor(b_smem.outer, swizzle=b_smem.inner)
        sSFA = storage.sSFA.get_tensor(sfa_smem)
        sSFB = storage.sSFB.get_tensor(sfb_smem)
        sRs = storage.run_s.get_tensor(cute.make_layout((TILE_M, k), stride=(k, 1)))
        sRi = storage.run_i.get_tensor(cute.make_layout((TILE_M, k), stride=(k, 1)))
        sRst = storage.run_stat.get_tensor(cute.make_layout((TILE_M, 2), stride=(2, 1)))

        # (bM, bK, RestM, RestK, RestL) etc.
        gA = cute.local_tile(mA, cute.slice_(self.mma_tiler, (None, 0, None)), (None, None, None))
        gB = cute.local_tile(mB, cute.slice_(self.mma_tiler, (0, None, None)), (None, None, None))
        gSFA = cute.local_tile(mSFA, cute.slice_(self.mma_tiler, (None, 0, None)), (None, None, None))
        gSFB = cute.local_tile(mSFB, cute.slice_(self.mma_tiler_sfb, (0, None, None)), (None, None, None))
        k_tiles = cute.size(gA, mode=[3])
        n_tiles = n_total // TILE_N
        thr_mma = tiled_mma.get_slice(0)
        thr_mma_sfb = tiled_mma_sfb.get_slice(0)
        tCgA = thr_mma.partition_A(gA)
        tCgB = thr_mma.partition_B(gB)
        tCgSFA = thr_mma.partition_A(gSFA)
        tCgSFB = thr_mma_sfb.partition_B(gSFB)
        one_cta = cute.make_layout(1)
        tAsA, tAgA = cpasync.tma_partition(tma_a, 0, one_cta, cute.group_modes(sA, 0, 3), cute.group_modes(tCgA, 0, 3))
        tBsB, tBgB = cpasync.tma_partition(tma_b, 0, one_cta, cute.group_modes(sB, 0, 3), cute.group_modes(tCgB, 0, 3))
        tAsSFA, tAgSFA = cpasync.tma_partition(tma_sfa, 0, one_cta, cute.group_modes(sSFA, 0, 3),
                                               cute.group_modes(tCgSFA, 0, 3))
        tAsSFA = cute.filter_zeros(tAsSFA)
        tAgSFA = cute.filter_zeros(tAgSFA)
        tBsSFB, tBgSFB = cpasync.tma_partition(tma_sfb, 0, one_cta, cute.group_modes(sSFB, 0, 3),
                                               cute.group_modes(tCgSFB, 0, 3))
        tBsSFB = cute.filter_zeros(tBsSFB)
        tBgSFB = cute.filter_zeros(tBgSFB)

        tCrA = tiled_mma.make_fragment_A(sA)
        tCrB = tiled_mma.make_fragment_B(sB)
        acc_shape = tiled_mma.partition_shape_C(self.mma_tiler[:2])
        tCtAcc_fake = tiled_mma.make_fragment_C(cute.append(acc_shape, ACC_STAGES))
        pipeline.pipeline_init_wait(cluster_shape_mn=(1, 1))

        if warp_idx == TMA_WARP:
            prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.ab_stages)
            for nt in range(n_tiles):
                for kt in range(k_tiles):
                    ab_pipeline.producer_acquire(prod)
                    bar = ab_pipeline.producer_get_barrier(prod)
                    cute.copy(tma_a, tAgA[(None, bidx, kt, 0)], tAsA[(None, prod.index)], tma_bar_ptr=bar)
                    cute.copy(tma_b, tBgB[(None, nt, kt, 0)], tBsB[(None, prod.index)], tma_bar_ptr=bar)
                    cute.copy(tma_sfa, tAgSFA[(None, bidx, kt, 0)], tAsSFA[(None, prod.index)], tma_bar_ptr=bar)
                    cute.copy(tma_sfb, tBgSFB[(None, nt, kt, 0)], tBsSFB[(None, prod.index)], tma_bar_ptr=bar)
                    prod.advance()
            ab_pipeline.producer_tail(prod)

        if warp_idx == MMA_WARP:
            tmem.wait_for_alloc()
            acc_ptr = tmem.retrieve_ptr(cutlass.Float32)
            tCtAcc_base = cute.make_tensor(acc_ptr, tCtAcc_fake.layout)
            sfa_ptr = cute.recast_ptr(acc_ptr + self.num_acc_cols, dtype=self.sf_dtype)
            tCtSFA = cute.make_tensor(sfa_ptr, blockscaled_utils.make_tmem_layout_sfa(
                tiled_mma, self.mma_tiler, SF_VEC, cute.slice_(sfa_smem, (None, None, None, 0))))
            sfb_ptr = cute.recast_ptr(acc_ptr + self.num_acc_cols + self.num_sfa_cols, dtype=self.sf_dtype)
            tCtSFB = cute.make_tensor(sfb_ptr, blockscaled_utils.make_tmem_layout_sfb(
                tiled_mma, self.mma_tiler, SF_VEC, cute.slice_(sfb_smem, (None, None, None, 0))))
            s2t_sfa, tCsSFA_s2t, tCtSFA_s2t = self._s2t(sSFA, tCtSFA)
            s2t_sfb, tCsSFB_s2t, tCtSFB_s2t = self._s2t(sSFB, tCtSFB)
            cons = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.ab_stages)
            acc_prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, ACC_STAGES)
            for nt in range(n_tiles):
                acc_pipeline.producer_acquire(acc_prod)
                tCtAcc = tCtAcc_base[(None, None, None, acc_prod.index)]
                tiled_mma.set(tcgen05.Field.ACCUMULATE, False)
                for kt in range(k_tiles):
                    ab_pipeline.consumer_wait(cons)
                    stage = (None, None, None, None, cons.index)
                    cute.copy(s2t_sfa, tCsSFA_s2t[stage], tCtSFA_s2t)
                    cute.copy(s2t_sfb, tCsSFB_s2t[stage], tCtSFB_s2t)
                    for kb in cutlass.range(cute.size(tCrA, mode=[2]), unroll_full=True):
                        tiled_mma.set(tcgen05.Field.SFA, tCtSFA[(None, None, kb)].iterator)
                        tiled_mma.set(tcgen05.Field.SFB, tCtSFB[(None, None, kb)].iterator)
                        cute.gemm(tiled_mma, tCtAcc, tCrA[(None, None, kb, cons.index)],
                                  tCrB[(None, None, kb, cons.index)], tCtAcc)
                        tiled_mma.set(tcgen05.Field.ACCUMULATE, True)
                    ab_pipeline.consumer_release(cons)
                    cons.advance()
                acc_pipeline.producer_commit(acc_prod)
                acc_prod.advance()
            acc_pipeline.producer_tail(acc_prod)

        if warp_idx < MMA_WARP:
            tmem.allocate(TMEM_ALLOC_COLS)
            tmem.wait_for_alloc()
            acc_ptr = tmem.retrieve_ptr(cutlass.Float32)
            tCtAcc_base = cute.make_tensor(acc_ptr, tCtAcc_fake.layout)
            t2r_atom = sm100_utils.get_tmem_load_op(self.cta_tile_shape_mnk, utils.LayoutEnum.ROW_MAJOR,
                                                    cutlass.Float32, cutlass.Float32, epi_tile, False)
            # (EPI_M, EPI_N, #EPI_M, #EPI_N, STAGE)
            tAcc_epi = cute.flat_divide(tCtAcc_base[((None, None), 0, 0, None)], epi_tile)
            tiled_t2r = tcgen05.make_tmem_copy(t2r_atom, tAcc_epi[(None, None, 0, 0, 0)])
            thr_t2r = tiled_t2r.get_slice(tidx)
            tTR_tAcc = thr_t2r.partition_S(tAcc_epi)
            # coordinates (row, col) inside one epilogue subtile of what each register holds
            cSub = cute.make_identity_tensor(cute.product_each(tAcc_epi[(None, None, 0, 0, 0)].shape))
            tTR_cSub = thr_t2r.partition_D(cSub)
            tTR_rAcc = cute.make_rmem_tensor(tTR_cSub.shape, cutlass.Float32)
            erow = tTR_cSub[0][0]
            alpha = mAlpha[0]
            for j in cutlass.range_constexpr(k):
                sRs[erow, j] = cutlass.Float32(-math.inf)
                sRi[erow, j] = cutlass.Int32(EMPTY_ID)
            sRst[erow, 0] = cutlass.Float32(-math.inf)
            sRst[erow, 1] = cutlass.Float32(0.0)
            acc_cons = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, ACC_STAGES)
            for nt in range(n_tiles):
                acc_pipeline.consumer_wait(acc_cons)
                stage_acc = tTR_tAcc[(None, None, None, None, None, acc_cons.index)]
                stage_acc = cute.group_modes(stage_acc, 3, cute.rank(stage_acc))
                self._epilogue_tile(tiled_t2r, stage_acc, tTR_rAcc, tTR_cSub, acc_pipeline, acc_cons,
                                    sRs, sRi, sRst, erow, nt * TILE_N, alpha)
                acc_cons.advance()
            grow = bidx * TILE_M + erow
            if grow < m_total:
                vals = [sRs[erow, j] for j in range(k)]
                ws = self._row_weights(vals, sRst[erow, 0], sRst[erow, 1])
                for j in cutlass.range_constexpr(k):
                    mIds[grow, j] = sRi[erow, j]
                    mW[grow, j] = ws[j]
            tmem.relinquish_alloc_permit()
            epi_barrier.arrive_and_wait()
            tmem.free(acc_ptr)


def sm100_args(activation, linear, top_k: int):
    """CuTe arguments (torch -> ``from_dlpack(...).mark_layout_dynamic()``) and the output tensors."""
    import torch

    from kernels.nvfp4 import swizzle_scales

    from .runtime import alpha_of, current_stream
    from .runtime import to_cute as _cute

    a_data, a_scales = activation[0], activation[1]
    t = a_data.shape[0]
    dev = a_data.device
    sfa = swizzle_scales(a_scales.view(torch.float8_e4m3fn)).view(torch.uint8).reshape(-1)
    alpha = alpha_of(activation, linear, dev)
    ids = torch.empty((t, top_k), dtype=torch.int32, device=dev)
    w = torch.empty((t, top_k), dtype=torch.float32, device=dev)
    args = (
        _cute(a_data.contiguous()),
        _cute(sfa),
        _cute(linear._mat_b.contiguous()),
        _cute(linear._scale_b.contiguous().view(torch.uint8).reshape(-1)),
        _cute(alpha),
        _cute(ids),
        _cute(w),
        current_stream(dev),
    )
    return args, ids, w


_compiled = {}


def run_sm100_router(activation, linear, top_k: int, scoring: str, renormalize: bool):
    args, ids, w = sm100_args(activation, linear, top_k)
    key = (top_k, scoring, renormalize)
    if key not in _compiled:
        _compiled[key] = cute.compile(Sm100RouterKernel(top_k, scoring, renormalize), *args)
    _compiled[key](*args)
    return ids, w
