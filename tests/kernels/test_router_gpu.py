"""Fused router kernels against the two-kernel reference on a GPU (``-m gpu``).

The full validation (hidden 7168, T up to 4096) is ``bench/router_validate.py``; these are the
same checks on smaller problems so they run in seconds."""

import importlib.util

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: torch.cuda.is_available() is False"),
    pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="nvidia-cutlass-dsl is not installed"),
]

from kernels.nvfp4 import Nvfp4Linear  # noqa: E402
from kernels import router  # noqa: E402


def _case(t, e, hidden, seed):
    g = torch.Generator().manual_seed(seed)
    layer = Nvfp4Linear((torch.randn(e, hidden, generator=g) / hidden ** 0.5).cuda()).finalize_weights()
    x = torch.randn(t, hidden, generator=g).cuda().to(torch.bfloat16)
    return layer, x


def _sm():
    return torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 0


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("t", [1, 7, 130])
@pytest.mark.parametrize("e,k", [(256, 8), (384, 6)])
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("split_k", [None, False], ids=["splitk", "nosplit"])
def test_portable_matches_two_kernel_reference(t, e, k, scoring, split_k):
    layer, x = _case(t, e, 1024, seed=t * 1000 + e)
    ids, w = router.run_nvfp4_fused_router(x, layer, k, scoring, path="portable", split_k=split_k)
    assert router.last_path == "portable"
    assert ids.shape == (t, k) and ids.dtype == torch.int32 and w.dtype == torch.float32
    c = router.compare_routing(ids, w, router.router_logits_reference(x, layer), k, scoring)
    assert c.ok, c
    assert c.max_weight_err < 1e-4, c


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
def test_portable_split_k_is_repeatable():
    # the split-K semaphores are reset by the kernel: back-to-back launches give the same bits
    layer, x = _case(40, 384, 2048, seed=5)
    first = router.run_nvfp4_fused_router(x, layer, 8, "softmax", path="portable")
    for _ in range(3):
        again = router.run_nvfp4_fused_router(x, layer, 8, "softmax", path="portable")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
def test_portable_finds_experts_in_the_last_n_tile():
    # rows whose best experts all sit in the third N-tile of E=384: the top-k must cross tiles
    layer, x = _case(16, 384, 512, seed=3)
    with torch.no_grad():
        layer.weight[300:306] *= 8
    layer._mat_b = None  # re-quantize the edited weight
    layer.finalize_weights()
    ids, w = router.run_nvfp4_fused_router(x, layer, 6, "sigmoid", path="portable")
    c = router.compare_routing(ids, w, router.router_logits_reference(x, layer), 6, "sigmoid")
    assert c.ok, c
    assert (ids >= 256).float().mean() > 0.5


@pytest.mark.skipif(not torch.cuda.is_available() or _sm() != 10, reason="no SM100 GPU: the SM100 kernel is compiled in CI but its numerics are not verified")
@pytest.mark.parametrize("t", [1, 128, 300])
def test_sm100_matches_two_kernel_reference(t):
    layer, x = _case(t, 384, 1024, seed=t)
    ids, w = router.run_nvfp4_fused_router(x, layer, 6, "softmax", path="sm100")
    c = router.compare_routing(ids, w, router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("t,kernel,e", [(1, "gemv", 256), (3, "gemv", 256), (200, "swapab", 256),
                                        (128, "swapab", 256), (128, "swapab", 384)])
def test_polled_route_refills_its_workspace_and_replays(t, kernel, e):
    # the routing CTA polls a sentinel-filled workspace and writes the sentinel back: after eager
    # calls and CUDA-graph replays the workspace is ready again and every answer is the same (T=128:
    # the one-wave forms, E=256 the route over 4 CTAs per n-tile, E=384 the K-split pairs, SM90+)
    from kernels.router.gemv import SENTINEL
    from kernels.router.runtime import _POLLED

    layer, x = _case(t, e, 1024, seed=77 + t)
    act = router.prepare_activation(x, layer)
    first = router.run_nvfp4_fused_router(x, layer, 6, "softmax", activation=act, kernel=kernel)
    c = router.compare_routing(first[0], first[1], router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c
    outs = []
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        router.run_nvfp4_fused_router(x, layer, 6, "softmax", activation=act, kernel=kernel)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(3):
            outs.append(router.run_nvfp4_fused_router(x, layer, 6, "softmax", activation=act, kernel=kernel))
    for _ in range(2):
        g.replay()
        torch.cuda.synchronize()
        for ids, w in outs:
            assert torch.equal(ids, first[0]) and torch.equal(w, first[1])
    polled = [buf for (dev, shape), buf in _POLLED.items() if shape[1] == t]
    assert polled, "the kernel did not use a polled workspace"
    for buf in polled:
        assert bool((buf.view(torch.int32) == SENTINEL).all())


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
def test_tile_kernel_three_stage_ring_gives_the_same_bits():
    # the 3-deep ring is what SM120/SM121 get (99 KB of SMEM per CTA); run here it must give the
    # 4-deep ring's bits: the depth changes when loads land, not the arithmetic
    from kernels.router.launch import tile_launcher

    layer, x = _case(300, 384, 2048, seed=9)
    act = router.prepare_activation(x, layer)
    got = {}
    for stages in (4, 3):
        launch, ids, w = tile_launcher(act, layer, 6, "softmax", False, (4, 8), stages=stages)
        launch()
        torch.cuda.synchronize()
        got[stages] = (ids, w)
    c = router.compare_routing(got[3][0], got[3][1], router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c
    assert torch.equal(got[3][0], got[4][0]) and torch.equal(got[3][1], got[4][1])


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("kernel,t,cfg", [
    # swap-AB (n-tiles, K splits, 16-expert blocks[, words per lane of a K unit]) per CTA: the fp16
    # decode feeds 1-4 expert blocks and 1-4 token tiles per warp, polled (<= 3 splits) and counted
    # routes, ragged token groups, 128-, 64- and 32-wide K units (unevenly over the warps too)
    ("swapab", 7, (1, 7, 1)), ("swapab", 37, (2, 2, 3)), ("swapab", 130, (2, 1, 2)), ("swapab", 130, (4, 3, 3)),
    ("swapab", 64, (2, 4, 4)), ("swapab", 37, (2, 2, 3, 2)), ("swapab", 130, (2, 3, 3, 2)),
    ("swapab", 100, (2, 4, 3, 1)),
    # one CTA per SM (gemv.SwapabConfig): 16 or 12 warps, the route over 2 or 4 CTAs per n-tile, the
    # K-split pair as a cluster (SM90+), ragged token groups
    ("swapab", 130, (2, 1, 1, 4, 16, 4, False)), ("swapab", 130, (2, 1, 2, 4, 16, 2, False)),
    ("swapab", 100, (2, 2, 3, 2, 12, 1, False)),
    pytest.param("swapab", 37, (2, 2, 3, 2, 12, 4, True), marks=pytest.mark.skipif(
        torch.cuda.is_available() and _sm() < 9, reason="thread block clusters need SM90 or later")),
    pytest.param("swapab", 128, (2, 2, 3, 4, 8, 2, True), marks=pytest.mark.skipif(
        torch.cuda.is_available() and _sm() < 9, reason="thread block clusters need SM90 or later")),
    # staged (experts, tokens, K splits) per CTA: 1-4 decode pieces per unit, 1-4 expert and token
    # blocks per warp, ragged token groups, 1-5 K splits (16 steps over 5: an empty split)
    ("staged", 128, (64, 32, 4)), ("staged", 37, (32, 32, 3)), ("staged", 130, (64, 16, 5)),
    ("staged", 200, (128, 32, 1)), ("staged", 64, (64, 64, 2))],
    ids=lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_decode_kernel_tile_shapes_match_the_reference(kernel, t, cfg):
    from kernels.router.launch import run_mma_gemv, run_staged

    run = run_mma_gemv if kernel == "swapab" else run_staged
    layer, x = _case(t, 384, 2048, seed=(11 if kernel == "swapab" else 31) + t)
    act = router.prepare_activation(x, layer)
    ref = router.router_logits_reference(x, layer)
    first = run(act, layer, 6, "softmax", False, cfg)
    c = router.compare_routing(first[0], first[1], ref, 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, (cfg, c)
    again = run(act, layer, 6, "softmax", False, cfg)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("kernel,t,cfg", [("gemv", 1, (1, 1)), ("swapab", 7, (1, 7, 1, 4)), ("swapab", 37, (2, 2, 3, 2)),
                                          ("swapab", 130, (2, 1, 1, 4))],
                         ids=lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("variant", ["floatpicks", "narrow", "poll", "wait", "count", "wait+spread2",
                                     "wait+spread4+floatpicks", "slowpicks", "wait+slowpicks",
                                     "count+narrow+slowpicks"])
def test_route_forms_give_the_same_bits(kernel, t, cfg, variant):
    # the decode kernels' route forms against the shipped one (integer-key picks with a ballot,
    # 16-byte polling, the route by K splits): float picks, one word per polling load, the polled /
    # waiting / counted route forced, the waiting route spread over 2 or 4 CTAs per n-tile, the tie
    # check in every pick (slowpicks, where the shipped picks redo all k after a tie).  The
    # same ids and weights, bit for bit, with exact ties (copies of the strongest rows: equal
    # logits in one lane and across lanes, the lower id first)
    from kernels.router.launch import run_gemv, run_mma_gemv

    if kernel == "gemv" and any(r in variant for r in ("poll", "wait", "count")):
        pytest.skip("the GEMV kernel always polls")
    layer, x = _tied_case(t)
    act = router.prepare_activation(x, layer)
    run = run_gemv if kernel == "gemv" else run_mma_gemv
    want = run(act, layer, 6, "softmax", False, cfg)
    got = run(act, layer, 6, "softmax", False, cfg, variant)
    _same_and_tied(got, want, x, layer)


def _tied_case(t):
    """E=384, hidden 1024: 7 copies of one row (one lane's run, other lanes, other 128-expert
    blocks) and 3 of its negation: for every token one group's logits lead, tied, and the top 6
    are its lowest ids."""
    g = torch.Generator().manual_seed(61 + t)
    w = torch.randn(384, 1024, generator=g) / 32
    top = w[4] * 16
    w[[4, 5, 69, 133, 197, 300, 301]] = top
    w[[200, 201, 264]] = -top
    layer = Nvfp4Linear(w.cuda()).finalize_weights()
    return layer, torch.randn(t, 1024, generator=g).cuda().to(torch.bfloat16)


def _same_and_tied(got, want, x, layer):
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    c = router.compare_routing(got[0], got[1], router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c
    has = [(got[0] == i).any(1) for i in (4, 5, 301, 200, 201)]
    assert bool(((has[0] & has[1] & ~has[2]) | (has[3] & has[4])).any()), got[0]


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 9, reason="thread block clusters need SM90 or later")
@pytest.mark.parametrize("t,base,form,variant", [
    (128, (2, 2, 3, 2), (2, 2, 3, 2, 12, 4, True), ""), (128, (2, 2, 3, 2), (2, 2, 3, 2, 12, 4, True), "pairbar"),
    (128, (2, 2, 3, 2), (2, 2, 3, 2, 12, 1, False), ""), (37, (2, 2, 3, 2), (2, 2, 3, 2, 8, 2, True), ""),
    (128, (2, 1, 1, 4), (2, 1, 1, 4, 16, 4, False), ""), (130, (2, 1, 1, 4), (2, 1, 1, 4, 16, 8, False), "")],
    ids=lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_swapab_forms_give_the_same_bits(t, base, form, variant):
    # the one-CTA-per-SM forms (more warps, the route over several CTAs per n-tile, the 2 K splits
    # as a cluster pair whose split 0 adds split 1's partials in split order: handed over by
    # st.async and an mbarrier, or "pairbar", stores and a cluster barrier) against the 8-warp
    # kernel with its waiting / polled route: the same ids and weights, bit for bit, with ties
    from kernels.router.launch import run_mma_gemv

    layer, x = _tied_case(t)
    act = router.prepare_activation(x, layer)
    want = run_mma_gemv(act, layer, 6, "softmax", False, base)
    for _ in range(2):
        _same_and_tied(run_mma_gemv(act, layer, 6, "softmax", False, form, variant), want, x, layer)


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("kernel,t,cfg", [("gemv", 1, (1, 1)), ("swapab", 7, (1, 7, 1, 4)), ("swapab", 130, (2, 1, 1, 4)),
                                          ("swapab", 130, (2, 2, 3, 2))],
                         ids=lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("renormalize", [False, True])
def test_route_fast_exp_against_the_accurate_one(kernel, t, cfg, renormalize):
    # the route's ex2.approx exp and approximate reciprocals (shipped) against the accurate ones
    # (exactexp): the same ids, weights within a few float32 ulp, and the reference's answers
    from kernels.router.launch import run_gemv, run_mma_gemv

    layer, x = _case(t, 384, 2048, seed=81 + t)
    act = router.prepare_activation(x, layer)
    run = run_gemv if kernel == "gemv" else run_mma_gemv
    fast = run(act, layer, 6, "softmax", renormalize, cfg)
    exact = run(act, layer, 6, "softmax", renormalize, cfg, "exactexp")
    assert torch.equal(fast[0], exact[0])
    assert not torch.equal(fast[1], exact[1]) or t == 1  # two forms, not one compiled twice
    torch.testing.assert_close(fast[1], exact[1], rtol=1e-6, atol=1e-7)
    c = router.compare_routing(fast[0], fast[1], router.router_logits_reference(x, layer), 6, "softmax", renormalize)
    assert c.ok and c.max_weight_err < 1e-4, c


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("t,ctas", [(300, 20), (600, 37), (4096, 264)])
def test_tile_kernel_stream_k_grid_matches_the_reference(t, ctas):
    # equal K ranges per CTA, tiles split across 1-4 CTAs (their partial slots summed in K order by
    # the route kernel, stale slots read as 0): the reference's answers, the same bits on every run
    from kernels.router.launch import tile_launcher
    from kernels.router.tile import BK, stream_k_slots

    hidden = 2048
    layer, x = _case(t, 384, hidden, seed=21 + t)
    act = router.prepare_activation(x, layer)
    slots = stream_k_slots(-(-t // 128) * 3, hidden // BK, ctas)
    assert 2 <= slots <= 8
    outs = []
    for _ in range(2):
        launch, ids, w = tile_launcher(act, layer, 6, "softmax", False, stream_k=(ctas, slots))
        launch()
        torch.cuda.synchronize()
        outs.append((ids.clone(), w.clone()))
    c = router.compare_routing(outs[0][0], outs[0][1], router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])



@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("t,e,hidden,static,variant", [(1, 256, 7168, False, ""), (1, 384, 7168, False, ""),
                                                       (5, 384, 2048, False, ""), (1, 384, 2048, True, ""),
                                                       (1, 256, 7168, True, "table"), (1, 384, 2048, True, "table"),
                                                       (1, 256, 7168, True, "table+search"),
                                                       (5, 384, 2048, False, "search"),
                                                       (1, 256, 7168, True, "halves+table+search"),
                                                       (1, 384, 7168, True, "halves+search"),
                                                       (5, 384, 2048, True, "halves+table"),
                                                       (1, 256, 2048, True, "halves"),
                                                       (1, 256, 7168, True, "quarters+table+search"),
                                                       (1, 384, 7168, True, "quarters+search"),
                                                       (5, 384, 2048, True, "quarters+table"),
                                                       (1, 256, 2048, True, "quarters")])
def test_gemv_quantizing_in_kernel_is_quantizer_plus_kernel_bit_for_bit(t, e, hidden, static, variant, monkeypatch):
    # the GEMV kernel reading bf16 activations and quantizing them itself (one launch) against the
    # fused quantizer + the same GEMV kernel: the same ids and weights, bit for bit (dynamic global
    # scale of the token group, and the layer's calibrated scale, its thresholds computed per block
    # or, variant "table", read from the per-CTA table; variant "search": the codes by bf16x2
    # compares, SM90+; variants "halves" / "quarters": two / four threads per chunk, each quantizing
    # one block / half of one, the codes handed over through shared memory)
    from kernels.router.launch import run_gemv, run_gemv_quant

    if "search" in variant and _sm() < 9:
        pytest.skip("variant search needs SM90 or later (bf16x2 compares)")
    layer, x = _case(t, e, hidden, seed=41 + t + e)
    x[0, 5] = 7.5  # a clear amax: its block's scale saturates toward 448
    if static:
        layer.input_global_scale = float(x.float().abs().max()) / 2000.0
    cfg = (1 if t == 1 else 8, 1)
    act = router.prepare_activation(x, layer)
    assert router.last_quantizer == "fused"
    want = run_gemv(act, layer, 6, "softmax", False, cfg)
    got = run_gemv_quant(x, layer, 6, "softmax", False, cfg, variant)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ref = router.router_logits_reference(x, layer)
    c = router.compare_routing(got[0], got[1], ref, 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c
    if t == 1 and not variant:
        # the router's path from bf16 at T=1 is this kernel (GPUREPRO_ROUTER_INKERNEL_QUANT=1)
        monkeypatch.setenv("GPUREPRO_ROUTER_INKERNEL_QUANT", "1")
        ids, w = router.run_nvfp4_fused_router(x, layer, 6, "softmax")
        assert router.last_quantizer == "in-kernel" and router.last_kernel == "gemv"
        assert torch.equal(ids, want[0]) and torch.equal(w, want[1])


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 8, reason="the portable kernel needs SM80 or later")
@pytest.mark.parametrize("e", [256, 384])
@pytest.mark.parametrize("form", ["halves", "quarters"])
def test_router_takes_the_gemv_quantizing_form_it_is_told(e, form, monkeypatch):
    # GPUREPRO_ROUTER_INKERNEL_QUANT=halves / quarters: at T=1 the router's GEMV quantizes in that
    # form (the configuration pick_gemv_quant gives it) with the calibrated scale, the same bits as
    # the quantizer + the GEMV; with the dynamic scale the one-thread form
    from kernels.router.gemv import pick_gemv_quant
    from kernels.router.launch import run_gemv

    layer, x = _case(1, e, 7168, seed=17 + e)
    act = router.prepare_activation(x, layer)
    want = run_gemv(act, layer, 6, "softmax", False)
    monkeypatch.setenv("GPUREPRO_ROUTER_INKERNEL_QUANT", form)
    ids, w = router.run_nvfp4_fused_router(x, layer, 6, "softmax")
    assert (router.last_kernel, router.last_quantizer, router.last_form) == ("gemv", "in-kernel", "")
    assert torch.equal(ids, want[0]) and torch.equal(w, want[1])
    layer.input_global_scale = float(x.float().abs().max()) / 2000.0
    act = router.prepare_activation(x, layer)
    props = torch.cuda.get_device_properties(x.device)
    cfg, _ = pick_gemv_quant(1, e, form, True, props.major, props.multi_processor_count)
    want = run_gemv(act, layer, 6, "softmax", False, cfg)
    got = [router.run_nvfp4_fused_router(x, layer, 6, "softmax") for _ in range(2)]
    assert (router.last_kernel, router.last_quantizer, router.last_form) == ("gemv", "in-kernel", form)
    for ids, w in got:
        assert torch.equal(ids, want[0]) and torch.equal(w, want[1])
    c = router.compare_routing(got[0][0], got[0][1], router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 9,
                    reason="the swap-AB kernel's own quantization needs SM90 or later (bf16x2 compares)")
@pytest.mark.parametrize("t,e,hidden,config,tiny", [
    (7, 256, 7168, None, False),  # the launcher's pick: 7 K splits, 16-byte units, counted route
    (7, 384, 7168, None, False),
    (2, 384, 2048, (1, 2, 1, 2), False),  # 8-byte units, two per warp, waiting route
    (8, 256, 2048, (1, 1, 1, 4), False),  # polled route, two units per warp
    (3, 256, 2048, (1, 1, 1, 4, 16, 4, 0), False),  # 16 warps (the table built by the first 8)
    (5, 256, 7168, (1, 7, 1, 4), True),  # divisors below 2^-100: the codes by division
])
def test_swapab_quantizing_in_kernel_is_quantizer_plus_kernel_bit_for_bit(t, e, hidden, config, tiny, monkeypatch):
    # the swap-AB kernel reading bf16 tokens and quantizing them itself into its fp16 operands (one
    # launch, the layer's calibrated scale) against the fused quantizer + the same kernel: the same
    # ids and weights, bit for bit, on every run
    from kernels.router.launch import pick_swapab_quant, run_mma_gemv, run_mma_gemv_quant

    layer, x = _case(t, e, hidden, seed=53 + t + e)
    x[0, 5] = 7.5  # a clear amax: its block's scale saturates toward 448
    if t > 1:
        x[1, 32:48] = 0.0  # a block without codes (zero scale)
    if tiny:
        x = x * 2.0 ** -100  # exact in bf16; every block's divisor below the thresholds' range
    layer.input_global_scale = float(x.float().abs().max()) / 2000.0
    act = router.prepare_activation(x, layer)
    assert router.last_quantizer == "fused"
    # the launcher's pick for the quantizing kernel (E=384: 32 experts per CTA), the same for both
    cfg = config if config is not None else pick_swapab_quant(t, layer, x.device)
    want = run_mma_gemv(act, layer, 6, "softmax", False, cfg)
    for _ in range(2):
        got = run_mma_gemv_quant(x, layer, 6, "softmax", False, config)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    c = router.compare_routing(got[0], got[1], router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c
    if config is None:
        # the router's default path from bf16 at T <= 8 with a calibrated scale; "0" turns it off
        monkeypatch.delenv("GPUREPRO_ROUTER_INKERNEL_QUANT", raising=False)
        ids, w = router.run_nvfp4_fused_router(x, layer, 6, "softmax")
        assert router.last_quantizer == "in-kernel" and router.last_kernel == "swapab"
        assert torch.equal(ids, want[0]) and torch.equal(w, want[1])
        monkeypatch.setenv("GPUREPRO_ROUTER_INKERNEL_QUANT", "0")
        router.run_nvfp4_fused_router(x, layer, 6, "softmax")
        assert router.last_quantizer == "fused" and router.last_kernel == "swapab"


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 9, reason="cp.async.bulk.prefetch needs SM90 or later")
@pytest.mark.parametrize("t,e,hidden", [(1, 384, 7168), (7, 256, 2048), (128, 256, 7168), (600, 256, 2048)])
def test_quantizer_prefetching_the_weights_changes_no_answer(t, e, hidden, monkeypatch):
    # GPUREPRO_ROUTER_L2_PREFETCH=1: the fused quantizer also pulls the layer's weights into L2 (a
    # hint, nothing waits for it); the router's answers are the same bits as without, eager and in
    # a CUDA graph
    layer, x = _case(t, e, hidden, seed=91 + t)
    monkeypatch.setenv("GPUREPRO_ROUTER_L2_PREFETCH", "0")
    want = router.run_nvfp4_fused_router(x, layer, 6, "softmax")
    monkeypatch.setenv("GPUREPRO_ROUTER_L2_PREFETCH", "1")
    for _ in range(2):
        got = router.run_nvfp4_fused_router(x, layer, 6, "softmax")
        assert router.last_quantizer == "fused"
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        router.run_nvfp4_fused_router(x, layer, 6, "softmax")
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = router.run_nvfp4_fused_router(x, layer, 6, "softmax")
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 9,
                    reason="the tile kernel's own quantization needs SM90 or later (bf16x2 compares)")
@pytest.mark.parametrize("t,e,hidden,grid,tiny", [
    (4096, 256, 7168, None, False),  # the launcher's pick: 4 splits
    (4096, 384, 7168, None, False),  # stream-K
    (300, 256, 2048, (2, 16), False),  # a partial row tile (rows past T re-read, never stored)
    (200, 384, 2048, "stream_k", False),  # stream-K segments crossing tiles
    (130, 256, 2048, (1, 32), True),  # divisors below 2^-100: the codes by division
])
@pytest.mark.parametrize("quant_warps", [0, 4])
def test_tile_quantizing_in_kernel_is_quantizer_plus_tile_bit_for_bit(t, e, hidden, grid, tiny, quant_warps,
                                                                      monkeypatch):
    # the tile kernel reading bf16 token rows and quantizing each k-tile itself into its fp16 tile
    # (the layer's calibrated scale) against the fused quantizer + the same tile grid: the same ids
    # and weights, bit for bit, on every run; by the tile's own threads, or (quant_warps=4) by a
    # warpgroup of its own beside the MMA warps (setmaxnreg)
    from kernels.router.launch import run_tile_quant, tile_launcher

    layer, x = _case(t, e, hidden, seed=71 + t + e)
    x[0, 5] = 7.5  # a clear amax: its block's scale saturates toward 448
    x[1, 32:48] = 0.0  # a block without codes (zero scale)
    x[t - 1, 100] = -3.0
    if tiny:
        x = x * 2.0 ** -100  # exact in bf16; every block's divisor below the thresholds' range
    layer.input_global_scale = float(x.float().abs().max()) / 2000.0
    act = router.prepare_activation(x, layer)
    assert router.last_quantizer == "fused"
    config = grid if isinstance(grid, tuple) else None
    stream_k = None
    if grid == "stream_k":
        from kernels.router.tile import BK, BN, stream_k_slots

        stream_k = (40, stream_k_slots(-(-t // 128) * (e // BN), hidden // BK, 40))
    launch, *want = tile_launcher(act, layer, 6, "softmax", False, config, stream_k=stream_k)
    launch()
    for _ in range(2):
        got = run_tile_quant(x, layer, 6, "softmax", False, config, stream_k=stream_k, quant_warps=quant_warps)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    c = router.compare_routing(got[0], got[1], router.router_logits_reference(x, layer), 6, "softmax")
    assert c.ok and c.max_weight_err < 1e-4, c
    if grid is None and not quant_warps:
        # not the router's path, even with GPUREPRO_ROUTER_INKERNEL_QUANT=1: measured slower than the
        # quantizer + tile kernel, which the router keeps (the same bits)
        monkeypatch.setenv("GPUREPRO_ROUTER_INKERNEL_QUANT", "1")
        ids, w = router.run_nvfp4_fused_router(x, layer, 6, "softmax")
        assert router.last_quantizer == "fused" and router.last_kernel == "tile"
        assert torch.equal(ids, want[0]) and torch.equal(w, want[1])


@pytest.mark.skipif(torch.cuda.is_available() and _sm() < 9, reason="programmatic dependent launch needs SM90 or later")
@pytest.mark.parametrize("t,e,hidden,kernel,pdl,operands", [
    (1, 384, 7168, "gemv", True, False), (7, 384, 7168, "swapab", True, False),
    (128, 384, 7168, "swapab", True, False),  # cluster pairs
    (128, 256, 7168, "swapab", True, False),  # 16 warps, polled
    (130, 256, 2048, "swapab", False, False),  # polled, 8 warps: launch.pdl_helps
    (600, 256, 2048, "tile", True, False),
    # the tokens handed over as the swap-AB kernel's fp16 operands (GPUREPRO_ROUTER_OPERAND_HANDOFF=1)
    (7, 384, 7168, "swapab", True, True), (128, 256, 7168, "swapab", True, True),
    (128, 384, 7168, "swapab", True, True), (130, 256, 2048, "swapab", False, True),
])
def test_router_after_the_quantizer_waits_for_its_activation(t, e, hidden, kernel, pdl, operands, monkeypatch):
    # from bf16 the router is launched as a programmatic dependent of the fused quantizer: its
    # weight loads start while the quantizer runs, its activation loads wait (griddepcontrol.wait).
    # Two inputs alternate so the allocator hands each call the buffers the previous call's
    # quantized activation was in: a router reading them before its own quantizer finished would
    # route the other input's tokens.  Eager calls and a CUDA graph, against the launch without
    # PDL (GPUREPRO_ROUTER_PDL=0), bit for bit; ``operands``: the tokens handed over as the
    # kernel's fp16 operands instead of codes, against the codes without PDL.
    layer, xa = _case(t, e, hidden, seed=501 + t)
    xb = -xa.flip(0) * 1.5
    want = {}
    monkeypatch.setenv("GPUREPRO_ROUTER_PDL", "0")
    for name, x in (("a", xa), ("b", xb)):
        want[name] = router.run_nvfp4_fused_router(x, layer, 6, "softmax", kernel=kernel)
        assert not router.last_pdl
        c = router.compare_routing(*want[name], router.router_logits_reference(x, layer), 6, "softmax")
        assert c.ok and c.max_weight_err < 1e-4, c
    assert not torch.equal(want["a"][0], want["b"][0]) and not router.last_operands
    monkeypatch.setenv("GPUREPRO_ROUTER_PDL", "1")
    monkeypatch.setenv("GPUREPRO_ROUTER_OPERAND_HANDOFF", "1" if operands else "0")
    for i in range(20):
        name = "ab"[i % 2]
        ids, w = router.run_nvfp4_fused_router(xa if name == "a" else xb, layer, 6, "softmax", kernel=kernel)
        assert router.last_pdl == pdl and router.last_quantizer == "fused" and router.last_kernel == kernel
        assert router.last_operands == operands
        assert torch.equal(ids, want[name][0]) and torch.equal(w, want[name][1]), (i, name)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        router.run_nvfp4_fused_router(xa, layer, 6, "softmax", kernel=kernel)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    outs = []
    with torch.cuda.graph(g):
        for i in range(4):
            outs.append(router.run_nvfp4_fused_router(xa if i % 2 == 0 else xb, layer, 6, "softmax", kernel=kernel))
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        for i, (ids, w) in enumerate(outs):
            ref = want["ab"[i % 2]]
            assert torch.equal(ids, ref[0]) and torch.equal(w, ref[1]), i
