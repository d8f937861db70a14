"""The fused NVFP4 activation quantizer (``kernels.router.quant``).

CPU: a bit-level model of the kernel's steps (integer |x| max, c10's float->e4m3fn rounding done
with integers and one float add, the E2M1 thresholds) is checked against the PyTorch quantizer on
inputs built to hit the edge cases (E4M3 subnormal scales, E2M1 rounding ties, zero and -0 blocks).
GPU (``-m gpu``): the kernel itself is bit-identical to the PyTorch quantizer at T in {1, 7, 128,
4096}, hidden 7168, dynamic and calibrated global scale, also inside a CUDA graph."""

import importlib.util

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")

from kernels.nvfp4 import compute_global_scale, quantize_activation_nvfp4  # noqa: E402

_THRESH = [(0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False)]


def _bits(t):
    return t.contiguous().view(torch.int32)


def _float(b):
    return b.contiguous().view(torch.float32)


def kernel_model(x: torch.Tensor, g: torch.Tensor):
    """The kernel's arithmetic, step by step, on the CPU: (packed uint8, scale bytes uint8)."""
    xf = x.float().reshape(-1, 16)
    g = g.float().reshape(())
    g_safe = torch.where(g > 0, g, torch.ones_like(g))
    d6 = torch.tensor(6.0) * g_safe
    bam = (_bits(xf) & 0x7FFFFFFF).amax(dim=1)
    s = _float(bam) / d6
    s = torch.where(s == s, torch.minimum(s, torch.tensor(448.0)), s)
    sb = _bits(s)
    sub = _bits(s + torch.tensor(16384.0)) - (141 << 23)
    nrm = (sb + (-(120 << 23) + 0x7FFFF) + ((sb >> 20) & 1)) >> 20
    code = torch.where(sb < (121 << 23), sub, nrm) & 0xFF
    code = torch.where(sb > 0x7F800000, torch.full_like(code, 0x7F), code)
    e, m = code >> 3, code & 7
    val = torch.where(e > 0, _float(((e + 120) << 23) | (m << 20)), m.float() * 0.001953125)
    denom = val * g_safe
    ok = (denom > 0) & (code != 0x7F)
    d = torch.where(ok, denom, torch.ones_like(denom)).unsqueeze(1)
    y = xf / d
    a = y.abs()
    mag = torch.zeros_like(y, dtype=torch.int32)
    for t, ge in _THRESH:
        mag += (a >= t if ge else a > t).to(torch.int32)
    codes = mag | ((_bits(y) >> 28) & 8)
    codes = torch.where(ok.unsqueeze(1), codes, torch.zeros_like(codes)).to(torch.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(*x.shape[:-1], x.shape[-1] // 2)
    return packed, code.to(torch.uint8).reshape(*x.shape[:-1], x.shape[-1] // 16)


def _edge_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 256, generator=g)
    x[0] *= 1e3  # sets the dynamic global scale: the other rows get small block scales
    x[1] *= 1e-3  # E4M3 subnormal block scales
    x[2] *= 3e-5  # scales that round to 0: flushed blocks
    x[3] = 0.0
    x[4] = -0.0
    # rounding ties of x / (s g): a block whose max is 6 * 2^j has s g = 2^j exactly under a
    # static g = 1/448 ... use values that are exact multiples of the E2M1 midpoints
    ties = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 0.1])
    x[5:13] = ties.repeat(8, 16) * torch.tensor([2.0 ** (j - 4) for j in range(8)]).unsqueeze(1)
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("static", [None, 1.0 / 448, 0.37])
def test_kernel_model_matches_pytorch_quantizer(seed, static):
    x = _edge_inputs(seed)
    g = compute_global_scale(x.float()) if static is None else torch.tensor(static, dtype=torch.float32)
    ref = quantize_activation_nvfp4(x.float(), g, check_finite=False)
    data, scales = kernel_model(x, g)
    assert torch.equal(scales, ref.scales.view(torch.uint8))
    assert torch.equal(data, ref.data)


def test_kernel_model_can_fail():
    # the model is sensitive to the tie rule: rounding 0.25 up (> instead of >=) changes codes
    x = _edge_inputs(0)
    g = torch.tensor(1.0 / 448)
    ref = quantize_activation_nvfp4(x.float(), g, check_finite=False)
    old = _THRESH[0]
    _THRESH[0] = (0.25, True)
    try:
        data, _ = kernel_model(x, g)
    finally:
        _THRESH[0] = old
    assert not torch.equal(data, ref.data)


def _threshold_model(d):
    """kernels.router.quant's per-block E2M1 thresholds for float32 ``d [N]``: int64 [N, 7] bf16 bits
    (the fma's exact error from float64, which holds t * d exactly); also checks that the partial
    sums the kernel takes as exact are."""
    from kernels.router.quant import E2M1_MIDPOINTS

    out = []
    for t, strict, he in E2M1_MIDPOINTS:
        tt = torch.tensor(t, dtype=torch.float32)
        p = tt * d
        e1 = (tt.double() * d.double() - p.double()).float()
        c = d * torch.tensor(2.0 ** he) * (1 if strict else -1)
        pb = _bits(p)
        a0 = p - _float(pb & ~0xFFFF)
        a1 = p - _float((pb & ~0xFFFF) + 0x10000)
        s0, s1 = a0 + e1, a1 + e1
        for a, s_ in ((a0, s0), (a1, s1)):
            assert torch.equal(s_.double(), a.double() + e1.double())
        d0, d1 = s0 + c, s1 + c
        k = ((d0 >= 0) if strict else (d0 > 0)).long() + ((d1 >= 0) if strict else (d1 > 0)).long()
        out.append(((pb.long() >> 16) & 0xFFFF) + k)
    return torch.stack(out, 1)


def test_division_free_e2m1_thresholds_match_division():
    # every non-negative bf16 |x| (and inf) against d from E4M3 scale values times random global
    # scales, random floats over the valid range, and d that put t * d on a bf16 value (and their
    # neighbours): the count of thresholds passed equals the code div.rn(x, d) gets
    from kernels.router.quant import THRESHOLD_D_MAX, THRESHOLD_D_MIN

    g = torch.Generator().manual_seed(11)
    e4 = torch.arange(1, 127, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    ds = [e4 * float(2.0 ** torch.empty(1).uniform_(-30, 30, generator=g)) for _ in range(2)]
    ds.append(_float(torch.randint(0x0D800000, 0x71000000, (200,), generator=g, dtype=torch.int32)))
    b = _float(torch.randint(0x2000, 0x6000, (40,), generator=g, dtype=torch.int32) << 16)
    for t in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        q = b / t
        ds += [q, _float(_bits(q) + 1), _float(_bits(q) - 1)]
    d = torch.cat(ds)
    d = d[(d >= THRESHOLD_D_MIN) & (d <= THRESHOLD_D_MAX)]
    xb = torch.arange(0, 0x7F81)
    x = _float(xb.int() << 16)
    for i in range(0, len(d), 128):
        dd = d[i:i + 128]
        a = (x[None, :] / dd[:, None]).abs()
        want = sum((a >= t if ge else a > t).long() for t, ge in _THRESH)
        got = (xb[None, :, None] >= _threshold_model(dd)[:, None, :]).long().sum(-1)
        assert torch.equal(got, want), int((got != want).sum())


def test_grid_caps_ctas_for_the_barrier():
    pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed")
    from kernels.router.quant import CTAS_PER_SM, THREADS, grid_ctas

    from kernels.router.quant import PER_THREAD, blocks_per_thread, replicates

    # one block per thread while that grid is resident (T <= 301 at hidden 7168 on 132 SMs)
    assert blocks_per_thread(128 * 448, 132) == blocks_per_thread(301 * 448, 132) == 1
    assert blocks_per_thread(302 * 448, 132) == PER_THREAD == 2
    assert blocks_per_thread(4096 * 448, 132, replicate=True) == 1
    assert grid_ctas(128 * 448, 132, per_thread=1) == 224
    from kernels.router.quant import replica_inflight

    # the replicated max: a thread's whole share of the input in flight at once (power of two <= 16)
    assert [replica_inflight(n) for n in (448, 7 * 448, 9 * 448, 100000)] == [2, 16, 16, 16]
    assert replica_inflight(200) == 1 and replica_inflight(3 * 448) == 8

    assert grid_ctas(448, 132) == 1  # T=1, hidden 7168: one CTA, no grid barrier
    # up to 4 tokens of hidden 7168 every CTA computes the max (no barrier), one block per thread
    assert replicates(448) and replicates(4 * 448) and not replicates(5 * 448) and not replicates(7 * 448)
    assert not replicates(448, dynamic=False)
    from kernels.router.quant import uses_table

    # the per-CTA threshold table where threads quantize more blocks than they hold (T=4096), not
    # at decode sizes (one or two blocks per thread)
    assert uses_table(4096 * 448, grid_ctas(4096 * 448, 132), 2)
    assert not uses_table(128 * 448, grid_ctas(128 * 448, 132, per_thread=1), 1)
    assert not uses_table(301 * 448, grid_ctas(301 * 448, 132, per_thread=1), 1)
    from kernels.router.quant import pick_barrier

    # the dynamic scale's barrier: epoch slots for small grids, the arrival count above
    assert pick_barrier(grid_ctas(7 * 448, 132, per_thread=1)) == "epoch" == pick_barrier(32)
    assert pick_barrier(grid_ctas(128 * 448, 132, per_thread=1)) == "slots" == pick_barrier(33)
    # T = 603 is the last whose blocks all fit the registers of the resident grid on 132 SMs
    assert uses_table(604 * 448, grid_ctas(604 * 448, 132), 2)
    assert not uses_table(603 * 448, grid_ctas(603 * 448, 132), 2)
    assert grid_ctas(7 * 448, 132, per_thread=1) == -(-7 * 448 // THREADS) == 13
    assert grid_ctas(128 * 448, 132) == -(-128 * 448 // (2 * THREADS))
    assert grid_ctas(4096 * 448, 132) == CTAS_PER_SM * 132


def gpu_test(fn):
    for m in (
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: torch.cuda.is_available() is False"),
        pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="nvidia-cutlass-dsl is not installed"),
    ):
        fn = m(fn)
    return fn


def _tokens(t, hidden, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, hidden, generator=g).cuda().to(torch.bfloat16)


@gpu_test
@pytest.mark.parametrize("t,replicate", [(1, None), (7, None), (128, None), (4096, None), (1, False), (7, False),
                                         (130, True)])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "calibrated"])
def test_fused_quantizer_bit_identical(t, replicate, static):
    # replicate None: the launcher's choice (every CTA computes the max up to 4 tokens); False: one
    # CTA or the grid barrier; True: every CTA computes the max of a larger input (the last token
    # holds the amax, so a CTA that missed part of the input would get another scale)
    from kernels.router.quant import quantize_activation_fused

    x = _tokens(t, 7168, seed=t)
    x[0, :16] *= 40.0  # one block far above the rest: small scales elsewhere
    x[-1, -3] = 90.0 if replicate else x[-1, -3]
    gs = torch.tensor(0.0021, device="cuda") if static else None
    g_b = torch.tensor(3.1e-4, device="cuda")
    ref = quantize_activation_nvfp4(x.float(), gs if static else compute_global_scale(x.float()), check_finite=False)
    for _ in range(3):  # repeated launches: the barrier workspace is reset by the kernel
        data, scales, g, alpha = quantize_activation_fused(x, gs, g_b, replicate=replicate)
        torch.cuda.synchronize()
        assert torch.equal(g.reshape(()), ref.global_scale.reshape(()))
        assert torch.equal(alpha.reshape(()), (ref.global_scale * g_b).reshape(()))
        assert torch.equal(scales, ref.scales.view(torch.uint8)), (scales != ref.scales.view(torch.uint8)).sum()
        assert torch.equal(data, ref.data), (data != ref.data).sum()


@gpu_test
@pytest.mark.parametrize("gs,xscale", [(0.0021, 1.0), (1e-31, 2e-30), (1e-36, 1.0), (1e30, 1.0), (None, 1.0)],
                         ids=["calibrated", "straddles-2^-100", "tiny", "huge", "dynamic"])
@pytest.mark.parametrize("t,table", [(130, True), (4096, False)])
def test_fused_quantizer_threshold_table_same_bits(t, table, gs, xscale):
    # the per-CTA threshold table (large inputs) forced on a small input and off a large one, with
    # global scales whose divisors d ~ amax / 6 fall below the thresholds' range (2^-100) for some
    # blocks (x ~ 2e-30: ~70% of them take the table's division fallback), for all of them (tiny
    # scale), or give no codes at all (huge scale)
    from kernels.router.quant import quantize_activation_fused, uses_table

    assert uses_table(4096 * 448, 528, 2) and not uses_table(130 * 448, 228, 1)
    x = _tokens(t, 7168, seed=300 + t) * xscale
    x[0, :16] *= 40.0
    x[1, 16:32] *= 1e-3  # small blocks: small scale codes
    g = None if gs is None else torch.tensor(gs, dtype=torch.float32, device="cuda")
    ref = quantize_activation_nvfp4(x.float(), g if g is not None else compute_global_scale(x.float()),
                                    check_finite=False)
    data, scales, g_out, _ = quantize_activation_fused(x, g, table=table)
    torch.cuda.synchronize()
    assert torch.equal(g_out.reshape(()), ref.global_scale.reshape(()))
    assert torch.equal(scales, ref.scales.view(torch.uint8)), (scales != ref.scales.view(torch.uint8)).sum()
    assert torch.equal(data, ref.data), (data != ref.data).sum()


@gpu_test
@pytest.mark.parametrize("threads", [64, 128])
@pytest.mark.parametrize("t,replicate", [(1, None), (7, None), (7, False), (130, None)])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "calibrated"])
def test_fused_quantizer_smaller_ctas_same_bits(t, replicate, static, threads):
    # 64 or 128 threads per CTA (more CTAs, the grid cap scaled): the replicated max, one CTA or
    # the grid barrier, and the calibrated scale give the 256-thread quantizer's bits
    from kernels.router.quant import quantize_activation_fused

    x = _tokens(t, 7168, seed=500 + t)
    x[-1, 7] = 60.0
    gs = torch.tensor(0.0017, device="cuda") if static else None
    ref = quantize_activation_nvfp4(x.float(), gs if static else compute_global_scale(x.float()), check_finite=False)
    for _ in range(2):
        data, scales, g, _ = quantize_activation_fused(x, gs, replicate=replicate, threads=threads)
        torch.cuda.synchronize()
        assert torch.equal(g.reshape(()), ref.global_scale.reshape(()))
        assert torch.equal(scales, ref.scales.view(torch.uint8)) and torch.equal(data, ref.data)


@gpu_test
@pytest.mark.parametrize("t", [128, 4096])
def test_fused_quantizer_grid_barriers_same_bits(t):
    # the dynamic scale's three grid barriers in turn (their workspace words are apart); then, at
    # T=128, 260 launches of the slot barrier (its arrival count wraps around 2^32, 2^24 per launch,
    # unreset) and the epoch barrier over grids of 28, 224 and 528 CTAs in turn (a smaller grid
    # leaves the larger one's last slots with an older epoch)
    from kernels.router.quant import quantize_activation_fused

    def case(n, seed):
        x = _tokens(n, 7168, seed=seed)
        x[-1, 5] = 70.0  # the max in the last CTA's blocks
        return x, quantize_activation_nvfp4(x.float(), compute_global_scale(x.float()), check_finite=False)

    def check(x, ref, i, **kw):
        data, scales, g, _ = quantize_activation_fused(x, **kw)
        torch.cuda.synchronize()
        assert torch.equal(g.reshape(()), ref.global_scale.reshape(())), i
        assert torch.equal(scales, ref.scales.view(torch.uint8)) and torch.equal(data, ref.data), i

    x, ref = case(t, 400 + t)
    for i in range(6):
        check(x, ref, i, barrier=("atomic", "slots", "epoch")[i % 3])
    if t == 128:
        outs = [quantize_activation_fused(x, barrier="slots") for _ in range(260)]
        torch.cuda.synchronize()
        assert all(torch.equal(o[2].reshape(()), ref.global_scale.reshape(())) for o in outs)
        assert torch.equal(outs[-1][0], ref.data) and torch.equal(outs[-1][1], ref.scales.view(torch.uint8))
        sizes = [case(n, 410 + n) for n in (16, 128, 4096)]
        for i in range(9):
            check(*sizes[(i * 2) % 3], i, barrier="epoch")


def _operand_model(data, scales):
    """The swap-AB kernel's fp16 operands of packed codes: per 16-element block 8 int32 words, word
    4h + a = elements 8h + a (low half) and 8h + a + 4 (high half) as ``value * scale * 2^-14``
    in fp16 (exact), the sign from the code (``kernels.router.quant._dec_pair``)."""
    from kernels.nvfp4.format import e2m1_lut

    t = data.shape[0]
    codes = torch.stack([data & 0xF, data >> 4], -1).reshape(t, -1).long()
    s = scales.view(torch.float8_e4m3fn).float().repeat_interleave(16, dim=1)
    mag = e2m1_lut(dtype=torch.float32).to(data.device)[codes & 7]
    v = torch.where(codes & 8 != 0, -mag, mag) * s * 2.0 ** -14
    h16 = v.to(torch.float16).view(torch.int16).reshape(t, -1, 2, 2, 4)  # [T, block, h, half, a]
    lo = h16[:, :, :, 0, :].long() & 0xFFFF
    hi = h16[:, :, :, 1, :].long() & 0xFFFF
    w = (lo | (hi << 16)).reshape(t, -1)
    return torch.where(w >= 2 ** 31, w - 2 ** 32, w).to(torch.int32)


@gpu_test
@pytest.mark.parametrize("t", [1, 7, 130])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "calibrated"])
def test_fused_quantizer_operand_form_is_the_decoded_codes(t, static):
    # the operand hand-off: the quantizer writes each block as the swap-AB kernel's 8 fp16x2
    # operands; they are its codes decoded the kernel's way, its scale codes are the same
    from kernels.router.quant import quantize_activation_fused

    x = _tokens(t, 2048, seed=77 + t)
    x[0, :16] = 0.0  # a block without codes
    g = compute_global_scale(x.float()) if static else None
    data, scales, _, alpha = quantize_activation_fused(x, g, torch.tensor(0.5))
    ops, oscales, _, oalpha = quantize_activation_fused(x, g, torch.tensor(0.5), operands=True)
    assert ops.dtype == torch.int32 and ops.shape == (t, 1024)
    assert torch.equal(oscales, scales) and torch.equal(oalpha, alpha)
    want = _operand_model(data, scales)
    assert (want != 0).sum() > 100 and torch.equal(ops, want)


@gpu_test
@pytest.mark.parametrize("t", [7, 4096])
def test_fused_quantizer_in_cuda_graph(t):
    from kernels.router.quant import quantize_activation_fused

    x = _tokens(t, 7168, seed=100 + t)
    ref = quantize_activation_nvfp4(x.float(), compute_global_scale(x.float()), check_finite=False)
    quantize_activation_fused(x)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = quantize_activation_fused(x)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out[0], ref.data) and torch.equal(out[1], ref.scales.view(torch.uint8))
        assert torch.equal(out[2].reshape(()), ref.global_scale.reshape(()))


@gpu_test
@pytest.mark.parametrize("t", [1, 7, 130])
def test_quantize_and_route_same_answer_as_pytorch_quantizer(t):
    # same activation bytes and the same alpha bits: the router's output must not change at all
    from kernels import router
    from kernels.nvfp4 import Nvfp4Linear

    g = torch.Generator().manual_seed(t)
    layer = Nvfp4Linear((torch.randn(256, 7168, generator=g) / 7168 ** 0.5).cuda()).finalize_weights()
    x = _tokens(t, 7168, seed=200 + t)
    act_t = router.prepare_activation(x, layer, fused=False)
    act_f = router.prepare_activation(x, layer, fused=True)
    assert router.last_quantizer == "fused" and len(act_f) == 4
    ids_t, w_t = router.run_nvfp4_fused_router(x, layer, 6, "softmax", activation=act_t)
    ids_f, w_f = router.run_nvfp4_fused_router(x, layer, 6, "softmax")  # default path: fused quantizer
    assert router.last_quantizer == "fused"
    assert torch.equal(ids_t, ids_f) and torch.equal(w_t, w_f)
