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
