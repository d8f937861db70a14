"""The bench's layer helpers (``bench/router_bench.py``): the copies it rotates through and the
calibrated-scale form of a copy.  The timing itself needs a GPU and is not a test.  Here, not under
tests/kernels/: that folder is copied into the kernel suite's container, bench/ is not."""

import importlib.util
import os
import sys

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")
if importlib.util.find_spec("cutlass") is None:
    pytest.skip("nvidia-cutlass-dsl is not installed (the bench imports the router kernels)", allow_module_level=True)

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCH)
    try:
        import router_bench
    finally:
        sys.path.remove(BENCH)
    return router_bench


def test_calibrated_copy_shares_the_weights_and_quantizes_with_its_scale(bench):
    from kernels import router
    from kernels.nvfp4 import compute_global_scale

    base = bench.make_layer(64, 256, seed=3, device="cpu")
    x = bench.make_tokens(5, 256, seed=4, device="cpu")
    copy = bench.layer_copy(base)
    assert copy._mat_b.data_ptr() != base._mat_b.data_ptr() and torch.equal(copy._mat_b, base._mat_b)
    scale = compute_global_scale(x)
    cal = bench.calibrated(copy, scale)
    # the same weight buffers as the copy (no third copy of the weights), the scale for both quantizers
    assert cal._mat_b is copy._mat_b and cal._scale_b is copy._scale_b
    assert cal.input_global_scale is scale and cal.activation_global_scale(x) is scale
    assert copy.input_global_scale is None  # the copy itself stays dynamic
    # the input's own scale: the same codes as the dynamic path (PyTorch quantizer on the CPU)
    want = router.prepare_activation(x, base)
    got = router.prepare_activation(x, cal)
    assert all(torch.equal(g, w) for g, w in zip(got[:3], want[:3]))
    other = bench.calibrated(copy, scale * 2)
    assert not torch.equal(router.prepare_activation(x, other)[1], want[1])  # a different scale: other codes


@pytest.mark.parametrize("mode", ["1", "halves", "quarters"])
def test_one_launch_path_sets_the_in_kernel_mode_for_its_calls_only(bench, mode, monkeypatch):
    from kernels import router

    monkeypatch.delenv("GPUREPRO_ROUTER_INKERNEL_QUANT", raising=False)
    with bench.one_launch(mode):
        assert router.inkernel_quant_mode() == mode
    assert router.inkernel_quant_mode() == "auto"


def test_results_say_which_one_launch_mode_they_timed(bench, tmp_path):
    import argparse

    a = argparse.Namespace(out=str(tmp_path), hidden=7168, topk=6, scoring="softmax", layers=64, reps=7,
                           one_launch_mode="quarters")
    row = {"T": 1, "E": 256, "kernel": "gemv", "fused_us": 3.4, "one_launch_us": 4.0, "one launch/route": 4.0 / 3.4,
           "tile_splits": "-", "splits": 1, "bf16/fused": 6.3, "deq/fused": 17.0, "fused_GBps": 300.0,
           "fused_TFLOPs": 1.1, "quantizer": "fused"}
    md = bench.write_results([row], "GPU", a, 2766.0, 1.18)
    assert "one launch = GPUREPRO_ROUTER_INKERNEL_QUANT=quarters" in md.splitlines()[0]
    assert "| 4.0 |" in md and "| 1.18 |" in md
    assert (tmp_path / "router_bench.json").exists()
