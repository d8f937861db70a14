"""Router semantics on the CPU: the unrolled top-k network the kernels run, the global expert
index, the scoring, the tie-aware comparison and the wrapper's fallback."""

import logging
import math
import random
import types

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")

from kernels.nvfp4 import Nvfp4Linear  # noqa: E402
from kernels.router import (  # noqa: E402
    compare_routing,
    global_expert_index,
    reference_router,
    router_logits_reference,
    run_nvfp4_fused_router,
    topk_from_logits,
    weights_for_ids,
)
from kernels.router import topk as tk  # noqa: E402


def _expected(values, k):
    # descending by value, ties to the lower index
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]
    return [values[i] for i in order], order


@pytest.mark.parametrize("k", [1, 6, 8])
def test_sorted_insert_keeps_descending_topk(k):
    rng = random.Random(k)
    for _ in range(200):
        n = rng.randint(1, 40)
        # few distinct values: many exact ties
        values = [float(rng.randint(-5, 5)) for _ in range(n)]
        vals, ids = tk.topk_of(values, k)
        ev, ei = _expected(values, k)
        m = min(k, n)
        assert vals[:m] == ev and ids[:m] == ei
        assert all(v == -math.inf for v in vals[m:]) and all(i == tk.EMPTY_ID for i in ids[m:])


def test_sorted_insert_is_select_network():
    # every output slot is computed from the old slots with selects only: count the calls
    calls = {"select": 0, "better": 0}

    def sel(c, a, b):
        calls["select"] += 1
        return a if c else b

    def bet(v, i, s, j):
        calls["better"] += 1
        return tk._py_better(v, i, s, j)

    ops = tk.SelectOps(sel, bet)
    tk.sorted_insert([3.0, 2.0, 1.0], [0, 1, 2], 2.5, 7, ops)
    assert calls == {"better": 3, "select": 2 * 3 + 2 * 2}


@pytest.mark.parametrize("k", [1, 6, 8])
def test_key_insert_in_id_order_keeps_topk(k):
    # the decode kernels' route: a lane inserts its logits' order keys in increasing id order with
    # a strict > (topk.ASCENDING_ID_OPS): the same top-k as the float order with id tie-breaks
    rng = random.Random(100 + k)
    pool = [-math.inf, math.inf, float("nan"), 2.0 ** -149, -2.5, 3.0, 0.5]
    for _ in range(300):
        n = rng.randint(1, 24)
        values = [rng.choice(pool) if rng.random() < 0.3 else float(rng.randint(-4, 4)) for _ in range(n)]
        keys, ids = tk.empty_topk(k, tk.KEY_FLOOR, tk.EMPTY_ID)
        for i, v in enumerate(values):
            keys, ids = tk.sorted_insert(keys, ids, tk.order_key(v), i, tk.ASCENDING_ID_OPS)
        ev, ei = tk.topk_of(values, k)
        assert ids == ei
        got = [tk.key_value(key) for key, i in zip(keys, ids) if i != tk.EMPTY_ID]
        assert got == [v for v, i in zip(ev, ei) if i != tk.EMPTY_ID]


def test_order_key_orders_like_floats():
    vals = [-math.inf, -3.5, -(2.0 ** -130), -0.0, 0.0, 2.0 ** -149, 2.0, math.inf]
    keys = [tk.order_key(v) for v in vals]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # -0.0 just below +0.0
    assert [tk.key_value(key) for key in keys] == vals
    assert tk.order_key(float("nan")) == tk.KEY_FLOOR < tk.order_key(-math.inf)


def test_nan_never_selected():
    vals, ids = tk.topk_of([1.0, float("nan"), 0.5], 2)
    assert ids == [0, 2]


@pytest.mark.parametrize("tpr", [2, 4, 8])
@pytest.mark.parametrize("n,k", [(384, 6), (256, 8), (384, 8)])
def test_tiled_epilogue_model_matches_sort(n, k, tpr):
    rng = random.Random(n * 10 + k + tpr)
    values = [float(rng.randint(-20, 20)) / 4 for _ in range(n)]  # many ties, across tiles too
    # put the maximum in the last tile: the top-k must accumulate over all 3 tiles of E=384
    values[n - 1] = 100.0
    vals, ids = tk.tiled_topk_model(values, k, 128, tpr)
    assert (vals, ids) == tuple(_expected(values, k))
    assert ids[0] == n - 1


def test_global_expert_index_covers_every_expert_once():
    # E=384 as 3 N-tiles of 128, each written back in 4 epilogue subtiles of 32 columns
    seen = [global_expert_index(col, tile * 128, sub, 32) for tile in range(3) for sub in range(4) for col in range(32)]
    assert sorted(seen) == list(range(384))
    assert global_expert_index(5, 256, 2, 32) == 5 + 256 + 64


def test_topk_from_logits_scoring():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0], [0.0, 0.0, 5.0, 1.0]])
    ids, w = topk_from_logits(logits, 2, "softmax")
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert ids.tolist() == [[1, 2], [2, 3]]
    sm = torch.softmax(logits, -1)
    assert torch.allclose(w, sm.gather(1, ids.long()))
    ids, w = topk_from_logits(logits, 2, "sigmoid")
    sg = torch.sigmoid(logits.gather(1, ids.long()))
    assert torch.allclose(w, sg / sg.sum(-1, keepdim=True))
    assert torch.allclose(w.sum(-1), torch.ones(2))
    _, w = topk_from_logits(logits, 2, "softmax", renormalize=True)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    with pytest.raises(ValueError):
        topk_from_logits(logits, 2, "relu")


def test_compare_routing_counts_ties_and_errors():
    logits = torch.tensor([[5.0, 4.0, 4.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.5, 0.0]])
    ref_ids, ref_w = topk_from_logits(logits, 2, "softmax")
    c = compare_routing(ref_ids, ref_w, logits, 2, "softmax")
    assert c.ok and c.id_mismatches == 0 and c.max_weight_err == 0
    # row 0: expert 2 instead of 1 (exact tie at 4.0) is fine
    ids = ref_ids.clone()
    ids[0, 1] = 2
    c = compare_routing(ids, weights_for_ids(logits, ids, "softmax"), logits, 2, "softmax")
    assert c.ok and c.exact_ties == 1 and c.real_mismatches == 0
    # row 1: expert 3 instead of 1 is wrong
    ids[1, 1] = 3
    c = compare_routing(ids, weights_for_ids(logits, ids, "softmax"), logits, 2, "softmax")
    assert not c.ok and c.real_mismatches == 1
    # the same expert twice is wrong even though its logit "ties" with itself
    dup = ref_ids.clone()
    dup[1, 1] = dup[1, 0]
    assert not compare_routing(dup, ref_w, logits, 2, "softmax").ok
    # weights are checked
    c = compare_routing(ref_ids, ref_w + 0.01, logits, 2, "softmax")
    assert abs(c.max_weight_err - 0.01) < 1e-6


def test_compare_routing_near_tie_tolerance():
    logits = torch.tensor([[10.0, 9.0, 9.0 - 5e-5, 0.0]])
    ids = torch.tensor([[0, 2]], dtype=torch.int32)
    w = weights_for_ids(logits, ids, "sigmoid")
    assert compare_routing(ids, w, logits, 2, "sigmoid", tie_rel=1e-5).near_ties == 1
    assert not compare_routing(ids, w, logits, 2, "sigmoid", tie_rel=1e-7).ok


def _layer(e=256, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Nvfp4Linear(torch.randn(e, k, generator=g) / k ** 0.5)


def test_reference_router_is_nvfp4_gemm_then_topk():
    layer = _layer()
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    ids, w = reference_router(x, layer, 6, "softmax")
    logits = layer.nvfp4_gemm_reference(x)
    assert torch.equal(router_logits_reference(x, layer), logits)
    assert ids.shape == (5, 6) and w.shape == (5, 6)
    exp_ids = torch.topk(logits, 6, dim=-1).indices
    assert torch.equal(ids.long(), exp_ids)
    assert torch.allclose(w, torch.softmax(logits, -1).gather(1, exp_ids))


def test_wrapper_falls_back_to_reference_on_cpu_and_says_so_once(caplog):
    import kernels.router as router

    router._announced.clear()
    layer = _layer(e=384)
    x = torch.randn(3, 128)
    with caplog.at_level(logging.WARNING, logger="kernels.router"):
        ids, w = run_nvfp4_fused_router(x, layer, top_k=6, scoring="sigmoid")
        run_nvfp4_fused_router(x, layer, top_k=6, scoring="sigmoid")
    assert router.last_path.startswith("reference")
    msgs = [r.getMessage() for r in caplog.records if r.name == "kernels.router"]
    assert len(msgs) == 1 and "cpu" in msgs[0]
    ref_ids, ref_w = reference_router(x, layer, 6, "sigmoid")
    assert torch.equal(ids, ref_ids) and torch.allclose(w, ref_w)


def test_shape_problems_are_named():
    from kernels.router import shape_problem

    assert shape_problem(_layer(e=256, k=128), 6) is None
    assert "multiple of 128" in shape_problem(_layer(e=200, k=128), 6)
    assert "multiple of 64" in shape_problem(_layer(e=256, k=48), 6)


def test_sm100_does_not_import_launch():
    # what both launchers need lives in kernels.router.runtime (issue 10: no import cycle)
    import ast
    import os

    import kernels.router as pkg

    def imported(mod):
        tree = ast.parse(open(os.path.join(os.path.dirname(pkg.__file__), mod + ".py")).read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names.add((node.module or "").split(".")[-1])
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[-1] for a in node.names)
        return names

    # launch may load sm100 (run_sm100); sm100 must not load launch back
    assert "launch" not in imported("sm100")
    assert "runtime" in imported("launch") and "runtime" in imported("sm100")


def test_quantizer_switches_read_the_environment(monkeypatch):
    # the fused quantizer defaults on ("0" turns it off); the in-kernel one "auto" (the swap-AB
    # kernel's), "1" (the GEMV's too), "halves" / "quarters" (the GEMV's in that form) or "0";
    # anything else reads as the default
    from kernels.router import fused_quant_enabled, inkernel_quant_mode

    monkeypatch.delenv("GPUREPRO_ROUTER_FUSED_QUANT", raising=False)
    assert fused_quant_enabled()
    monkeypatch.setenv("GPUREPRO_ROUTER_FUSED_QUANT", "0")
    assert not fused_quant_enabled()
    monkeypatch.delenv("GPUREPRO_ROUTER_INKERNEL_QUANT", raising=False)
    assert inkernel_quant_mode() == "auto"
    for value, mode in (("1", "1"), ("0", "0"), ("halves", "halves"), ("quarters", "quarters"), ("yes", "auto"),
                        ("Quarters", "auto")):
        monkeypatch.setenv("GPUREPRO_ROUTER_INKERNEL_QUANT", value)
        assert inkernel_quant_mode() == mode
    from kernels.router import l2_prefetch_enabled, operand_handoff_enabled

    monkeypatch.delenv("GPUREPRO_ROUTER_L2_PREFETCH", raising=False)
    assert not l2_prefetch_enabled()
    monkeypatch.setenv("GPUREPRO_ROUTER_L2_PREFETCH", "1")
    assert l2_prefetch_enabled()

    monkeypatch.delenv("GPUREPRO_ROUTER_OPERAND_HANDOFF", raising=False)
    assert not operand_handoff_enabled()
    monkeypatch.setenv("GPUREPRO_ROUTER_OPERAND_HANDOFF", "1")
    assert operand_handoff_enabled()


def test_in_kernel_quantization_declines_cpu_and_multi_group_inputs():
    # launch.gemv_quant_problem: the in-kernel path is for one CUDA bf16 token group, K <= 8192
    from kernels.router.launch import gemv_quant_problem

    layer = Nvfp4Linear(torch.randn(128, 256)).finalize_weights()
    x = torch.randn(9, 256).to(torch.bfloat16)
    assert gemv_quant_problem(x, layer) == "9 tokens: more than one token group"
    assert gemv_quant_problem(torch.randn(1, 8320).to(torch.bfloat16), layer).startswith("K=8320")
    assert gemv_quant_problem(torch.randn(1, 192).to(torch.bfloat16), layer).startswith("K=192")
    assert gemv_quant_problem(x[:8], layer) == "input not on CUDA"


def test_swapab_quantizing_declines_without_a_calibrated_scale_or_whole_blocks():
    # launch.swapab_quant_problem: the swap-AB kernel quantizes its own tokens only with the layer's
    # calibrated scale (the dynamic one is the whole input's max) and whole 16-element blocks per
    # lane; the rest is the fused quantizer's rules (CUDA bf16)
    from kernels.router.gemv import SwapabConfig
    from kernels.router.launch import swapab_quant_problem

    layer = Nvfp4Linear(torch.randn(128, 256)).finalize_weights()
    x = torch.randn(7, 256).to(torch.bfloat16)
    assert swapab_quant_problem(x, layer) == "no calibrated activation scale (input_global_scale)"
    layer.input_global_scale = 0.01
    assert swapab_quant_problem(x, layer, SwapabConfig(1, 7, 1, 1)).startswith("K units of one word")
    assert swapab_quant_problem(x, layer, SwapabConfig(1, 7, 1, 4)) == "input not on CUDA"


def test_swapab_quantizing_takes_32_experts_per_cta_where_16_would_overfill_the_sms():
    # launch.pick_swapab_quant (an H200's 132 SMs without a device): T=7 at E=384 is 24 x 7 = 168
    # CTAs with 16 experts each, so 32 (84 CTAs); E=256's 112 CTAs stay at 16 experts; the
    # one-CTA-per-SM forms (T=128) are left as picked
    from kernels.router.launch import pick_swapab, pick_swapab_quant

    def layer(e):
        return types.SimpleNamespace(out_features=e, in_features=7168)

    assert pick_swapab_quant(7, layer(384)) == pick_swapab(7, layer(384))._replace(mw=2)
    assert pick_swapab_quant(7, layer(256)) == pick_swapab(7, layer(256))
    assert pick_swapab(7, layer(256)).mw == 1
    assert pick_swapab_quant(128, layer(256)) == pick_swapab(128, layer(256))


def test_tile_quantizing_declines_without_a_calibrated_scale():
    # launch.tile_quant_problem: the layer's calibrated scale, then the fused quantizer's rules
    from kernels.router.launch import tile_quant_problem

    layer = Nvfp4Linear(torch.randn(128, 256)).finalize_weights()
    x = torch.randn(300, 256).to(torch.bfloat16)
    assert tile_quant_problem(x, layer) == "no calibrated activation scale (input_global_scale)"
    layer.input_global_scale = 0.01
    assert tile_quant_problem(x, layer) == "input not on CUDA"


def test_operand_form_is_told_by_its_dtype():
    # launch.is_operand_form: the quantizer's fp16 operands are int32 [T, K/2], the codes uint8 [T, K/2]
    from kernels.router.launch import is_operand_form

    scales = torch.zeros(2, 16, dtype=torch.uint8)
    assert is_operand_form((torch.zeros(2, 128, dtype=torch.int32), scales))
    assert not is_operand_form((torch.zeros(2, 128, dtype=torch.uint8), scales))
