"""Nvfp4Linear: weight finalization, kernel dispatch, reference path, comparison helper."""

import logging

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")

from kernels.nvfp4 import (  # noqa: E402
    Nvfp4Linear,
    compare_with_references,
    dequantize_nvfp4,
    error_stats,
    find_kernel,
    quantize_activation_nvfp4,
    quantize_to_nvfp4,
    register_kernel,
    swizzle_scales,
    unregister_kernel,
)


def _layer(device, n=200, k=96, bias=False, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    return Nvfp4Linear(w, b, **kw).to(device)


def _x(device, shape=(7, 96), seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16).to(device)


@pytest.fixture
def kernel_name():
    name = "test-kernel"
    yield name
    unregister_kernel(name)


def test_finalize_weights_once(device):
    layer = _layer(device)
    assert not layer.finalized and layer._mat_b is None and layer._scale_b is None
    layer.finalize_weights()
    assert layer._mat_b.dtype == torch.uint8 and layer._mat_b.shape == (200, 48)
    assert layer._scale_b.dtype == torch.float8_e4m3fn and layer._scale_b.shape == (256, 8)  # 200->256 rows, 6->8
    assert layer._mat_b.device.type == device.type and layer._scale_b.device.type == device.type
    q = quantize_to_nvfp4(layer.weight)
    assert torch.equal(layer._mat_b, q.data)
    assert torch.equal(layer._scale_b.view(torch.uint8), swizzle_scales(q.scales).view(torch.uint8))
    assert float(layer._global_scale_b) == float(q.global_scale)
    mat_b = layer._mat_b
    layer.finalize_weights()
    assert layer._mat_b is mat_b  # not re-quantized
    assert torch.equal(layer.dequantized_weight(), dequantize_nvfp4(q))


def test_module_dtype_cast_keeps_fp8_scales(device):
    layer = _layer(device).finalize_weights()
    before = layer._scale_b.view(torch.uint8).clone()
    layer.to(torch.float16)
    assert layer._scale_b.dtype == torch.float8_e4m3fn
    assert torch.equal(layer._scale_b.view(torch.uint8), before)


def test_reference_path_is_the_nvfp4_gemm(device):
    layer = _layer(device, bias=True)
    x = _x(device, (2, 5, 96))
    y = layer(x)
    assert layer.last_path == "reference" and y.dtype == torch.bfloat16 and y.shape == (2, 5, 200)
    xq = dequantize_nvfp4(quantize_activation_nvfp4(x.float(), x.float().abs().max() / 2688))
    wq = dequantize_nvfp4(quantize_to_nvfp4(layer.weight))
    expect = (xq @ wq.T + layer.bias.float()).to(torch.bfloat16)
    assert torch.allclose(y.float(), expect.float(), rtol=1e-2, atol=1e-2)
    # weight-only mode
    layer.quantize_activations = False
    y2 = layer(x)
    expect2 = x.float() @ wq.T + layer.bias.float()
    assert torch.allclose(y2.float(), expect2, rtol=1e-2, atol=1e-2)


def test_reference_path_announced_once_per_instance(device, caplog):
    caplog.set_level(logging.INFO, logger="kernels.nvfp4")
    a, b = _layer(device), _layer(device, seed=1)
    x = _x(device)
    for _ in range(3):
        a(x)
    b(x)
    b(x)
    msgs = [r for r in caplog.records if r.name == "kernels.nvfp4"]
    assert len(msgs) == 2
    assert all(r.levelno == logging.WARNING and "reference path" in r.getMessage() for r in msgs)


def test_registered_kernel_is_used_for_its_device(device, kernel_name, caplog):
    calls = []

    def fake_kernel(layer, x):
        calls.append((layer._mat_b.shape, layer._scale_b.dtype))
        return layer.nvfp4_gemm_reference(x).to(x.dtype)

    assert find_kernel(device) is None  # nothing registered by default
    register_kernel(kernel_name, lambda d: d.type == device.type, fake_kernel)
    with pytest.raises(KeyError):
        register_kernel(kernel_name, lambda d: True, fake_kernel)
    caplog.set_level(logging.INFO, logger="kernels.nvfp4")
    layer = _layer(device)
    x = _x(device)
    y = layer(x)
    assert layer.last_path == f"kernel:{kernel_name}" and len(calls) == 1
    assert calls[0] == ((200, 48), torch.float8_e4m3fn)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    cmp = compare_with_references(layer, x)
    assert cmp.path == f"kernel:{kernel_name}" and cmp.vs_nvfp4.rel_fro < 1e-2
    unregister_kernel(kernel_name)
    layer(x)
    assert layer.last_path == "reference"


def test_predicate_errors_do_not_break_dispatch(device, kernel_name):
    def bad(d):
        raise RuntimeError("no driver")

    register_kernel(kernel_name, bad, lambda layer, x: None)
    assert find_kernel(device) is None
    assert _layer(device)(_x(device)).shape == (7, 200)


def test_compare_detects_a_wrong_kernel(device, kernel_name):
    # a kernel that reads the scale factors in the wrong (unswizzled) order
    def wrong_layout_kernel(layer, x):
        scales = layer._scale_b.view(torch.uint8).reshape(-1)[: 200 * 6].reshape(200, 6).view(torch.float8_e4m3fn)
        w = dequantize_nvfp4(layer._mat_b, scales, layer._global_scale_b)
        xq = dequantize_nvfp4(quantize_activation_nvfp4(x.float(), x.float().abs().max() / 2688))
        return (xq @ w.T).to(x.dtype)

    layer = _layer(device)
    x = _x(device, (32, 96))
    good = compare_with_references(layer, x)
    assert good.path == "reference"
    assert good.vs_nvfp4.rel_fro < 4e-3  # only the bf16 rounding of the output (2^-9 relative)
    # NVFP4 vs BF16: ~0.09 relative per operand, ~0.13 for the product
    assert 0.03 < good.vs_bf16.rel_fro < 0.25
    register_kernel(kernel_name, lambda d: True, wrong_layout_kernel)
    bad = compare_with_references(layer, x)
    assert bad.vs_nvfp4.rel_fro > 0.5 and bad.vs_bf16.rel_fro > 0.5


def test_error_stats(device):
    e = torch.tensor([3.0, 4.0], device=device)
    s = error_stats(torch.tensor([3.0, 5.0], device=device), e)
    assert s.max_abs == 1.0 and s.rel_fro == pytest.approx(0.2)
    assert error_stats(torch.tensor([float("nan"), 0.0], device=device), e).rel_fro == float("inf")
    assert error_stats(torch.zeros(2), torch.zeros(2)).rel_fro == 0.0


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        Nvfp4Linear(torch.zeros(4, 20))
    with pytest.raises(ValueError):
        _layer("cpu")(torch.zeros(2, 32))
