"""NVFP4 quantize/dequantize: exact cases, hand-computed scales, and analytic error bounds."""

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kernels.nvfp4 import (  # noqa: E402
    E2M1_VALUES,
    Nvfp4Tensor,
    compute_global_scale,
    dequantize_nvfp4,
    fake_quantize_nvfp4,
    quantize_activation_nvfp4,
    quantize_to_nvfp4,
    unpack_fp4,
)

E2M1 = torch.tensor(E2M1_VALUES)
# every positive finite E4M3 value: bytes 0x01..0x7E (0x7F is NaN); 0x01 = 2^-9, 0x7E = 448
E4M3_POSITIVE = torch.arange(1, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
E4M3_ALL = torch.cat([torch.zeros(1), E4M3_POSITIVE])

HYPO = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_every_e2m1_value_round_trips_exactly_under_every_e4m3_scale(device):
    # row r holds all 16 E2M1 values times (e4m3 scale s_r) times a power-of-two global scale:
    # every step (amax/(6g), x/(s g), value*s*g) is exact in float32, so nothing may change.
    g = 2.0**-4
    x = (E2M1[None, :] * E4M3_POSITIVE[:, None] * g).to(device)  # [126, 16]
    for q in (quantize_activation_nvfp4(x, g), quantize_to_nvfp4(x, global_scale=g)):
        assert torch.equal(q.scales.float().cpu(), E4M3_POSITIVE[:, None])
        assert torch.equal(unpack_fp4(q.data).cpu(), torch.arange(16, dtype=torch.uint8).expand(126, 16))
        dq = dequantize_nvfp4(q)
        assert torch.equal(dq, x)
        assert torch.equal(torch.signbit(dq), torch.signbit(x))  # -0.0 stays -0.0


def test_global_scale_from_amax(device):
    x = torch.tensor([[224.0, -2688.0] + [0.0] * 14], device=device)  # 224 = 0.5 * 448
    g = compute_global_scale(x)
    assert g.dtype == torch.float32 and g.dim() == 0
    assert float(g) == 1.0  # 2688 / (6 * 448)
    q = quantize_to_nvfp4(x)
    assert float(q.global_scale) == 1.0
    assert float(q.scales.float()[0, 0]) == 448.0  # the amax block always gets the largest E4M3 scale
    assert torch.equal(dequantize_nvfp4(q), x)


def test_hand_computed_scales_and_packing(device):
    # tensor amax 6 -> g = 6 / 2688 = 1/448.  Block 0 (amax 6): scale 448.
    # Block 1 (amax 1): 1 / (6 g) = 74.67 -> nearest E4M3 is 72 (grid 64, 72, 80 there).
    # Block 1 in units of 72 g = 72/448:  1 -> 6.22 -> saturates to 6 (code 7)
    #                                   0.5 -> 3.11 -> 3   (code 5)
    #                                 -0.25 -> -1.56 -> -1.5 (code 8|3 = 11)
    row = [6.0] + [0.0] * 15 + [1.0, 0.5, -0.25] + [0.0] * 13
    x = torch.tensor([row], device=device)
    q = quantize_to_nvfp4(x)
    assert float(q.global_scale) == pytest.approx(1 / 448, rel=1e-7)
    assert q.scales.dtype == torch.float8_e4m3fn
    assert q.scales.float().tolist() == [[448.0, 72.0]]
    expect = [0x07] + [0] * 7 + [0x57, 0x0B] + [0] * 6
    assert q.data.tolist() == [expect]
    dq = dequantize_nvfp4(q)[0]
    assert dq[0].item() == pytest.approx(6.0, rel=1e-6)
    step = 72 / 448
    assert dq[16:19].tolist() == pytest.approx([6 * step, 3 * step, -1.5 * step], rel=1e-6)


def test_tiny_block_scale_underflows_to_zero(device):
    # block amax 6e-6 in a tensor of amax 6: 6e-6 / (6/448) = 4.5e-4 < 2^-10 (half the smallest E4M3)
    x = torch.zeros(1, 32, device=device)
    x[0, 0] = 6.0
    x[0, 16] = 6e-6
    q = quantize_to_nvfp4(x)
    assert q.scales.float().tolist() == [[448.0, 0.0]]
    assert q.data[0, 8:].tolist() == [0] * 8
    assert dequantize_nvfp4(q)[0, 16].item() == 0.0


def test_zero_tensor(device):
    x = torch.zeros(3, 32, device=device)
    q = quantize_to_nvfp4(x)
    assert float(q.global_scale) == 0.0
    assert int(q.data.sum()) == 0 and float(q.scales.float().sum()) == 0.0
    assert torch.equal(dequantize_nvfp4(q), x)


def test_activation_saturates_above_calibrated_range(device):
    g = 0.01  # representable range +-6*448*g = +-26.88
    x = torch.tensor([[100.0, -50.0, 1.0] + [0.0] * 13], device=device)
    dq = dequantize_nvfp4(quantize_activation_nvfp4(x, g))
    assert dq[0, 0].item() == pytest.approx(26.88, rel=1e-6)
    assert dq[0, 1].item() == pytest.approx(-26.88, rel=1e-6)


def test_leading_dims_and_dtypes(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, generator=gen).to(device)
    q = quantize_to_nvfp4(x)
    assert isinstance(q, Nvfp4Tensor) and q.shape == x.shape
    assert q.data.shape == (2, 3, 32) and q.scales.shape == (2, 3, 4)
    q2 = quantize_to_nvfp4(x.reshape(6, 64))
    assert torch.equal(q.data.reshape(6, 32), q2.data)
    # bf16 input quantizes exactly like the same values in float32
    xb = x.to(torch.bfloat16)
    qb, qf = quantize_to_nvfp4(xb), quantize_to_nvfp4(xb.float())
    assert torch.equal(qb.data, qf.data) and torch.equal(qb.scales.view(torch.uint8), qf.scales.view(torch.uint8))
    assert dequantize_nvfp4(qb, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert fake_quantize_nvfp4(xb).dtype == torch.bfloat16
    data, scales, g = q  # tuple unpacking
    assert torch.equal(dequantize_nvfp4(data, scales, g), dequantize_nvfp4(q))


def test_rejects_bad_input(device):
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_to_nvfp4(torch.ones(4, 24, device=device))
    with pytest.raises(ValueError, match="Inf or NaN"):
        quantize_to_nvfp4(torch.full((1, 16), float("nan"), device=device))
    with pytest.raises(TypeError):
        quantize_to_nvfp4(torch.ones(1, 16, dtype=torch.int32, device=device))
    with pytest.raises(ValueError):
        quantize_activation_nvfp4(torch.ones(1, 16, device=device), -1.0)
    with pytest.raises(ValueError):
        dequantize_nvfp4(torch.zeros(1, 8, dtype=torch.uint8), torch.zeros(1, 2), 1.0)


# ------------------------------------------------------------------------------ properties
@st.composite
def tensors(draw):
    rows = draw(st.integers(1, 4))
    blocks = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    log2_mag = draw(st.integers(-40, 40))
    kind = draw(st.sampled_from(["normal", "uniform", "heavy", "sparse", "wide"]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    g = torch.Generator().manual_seed(seed)
    shape = (rows, 16 * blocks)
    if kind == "normal":
        x = torch.randn(shape, generator=g)
    elif kind == "uniform":
        x = torch.rand(shape, generator=g) * 2 - 1
    elif kind == "heavy":
        x = torch.randn(shape, generator=g) ** 5
    elif kind == "sparse":
        x = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.1)
    else:  # blocks spanning many orders of magnitude: exercises E4M3 subnormal/zero block scales
        x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-30, 1, (rows, blocks, 1), generator=g)
                                                         .float()).repeat_interleave(16, -1).reshape(shape)
    return (x * 2.0**log2_mag).to(dtype)


def _check_properties(x, q):
    xf = x.float().reshape(x.shape[0], -1, 16)
    gs = q.global_scale.float()
    s = q.scales.float()  # [rows, blocks]
    # 1. each block scale is the nearest E4M3 value to amax/(6g) (capped at 448)
    s_unclamped = xf.abs().amax(-1) / (6 * gs) if float(gs) > 0 else torch.zeros_like(s)
    s_exact = s_unclamped.clamp(max=448.0)
    grid = E4M3_ALL.to(x.device)
    best = (s_exact[..., None] - grid).abs().min(-1).values
    assert bool(((s - s_exact).abs() <= best * (1 + 1e-6) + 1e-30).all())
    # 2. each code is the nearest E2M1 value to x / (s g), after saturation to +-6
    codes = unpack_fp4(q.data).reshape(xf.shape).long()
    vals = E2M1.to(x.device)[codes]
    denom = (s * gs)[..., None]
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    y = torch.where(denom > 0, xf / safe, torch.zeros_like(xf)).clamp(-6, 6)
    nearest = (y[..., None] - E2M1.to(x.device)).abs().min(-1).values
    assert bool(((vals - y).abs() <= nearest + 1e-6 * y.abs()).all())
    # 3. elementwise analytic bound: grid half-gap <= max(0.25, |y|/4) in units of s*g, plus saturation loss
    err = (dequantize_nvfp4(q).reshape(xf.shape) - xf).abs()
    bound = 0.25 * denom + xf.abs() / 4 + (xf.abs() - 6 * denom).clamp(min=0)
    assert bool((err <= bound * (1 + 1e-5) + 1e-30).all())
    # 4. blocks whose scale is a normal E4M3 number (not subnormal, not capped at 448 by a too-small
    #    global scale): error <= (1 + 2^-4) * amax(block) / 6  (E4M3 rounds to within 2^-4 relative)
    amax = xf.abs().amax(-1, keepdim=True)
    normal = ((s_unclamped >= 2.0**-6) & (s_unclamped <= 448.0))[..., None]
    assert bool((~normal | (err <= (17 / 16) * amax / 6 * (1 + 1e-5))).all())


@HYPO
@given(x=tensors())
def test_weight_quantization_properties(device, x):
    x = x.to(device)
    q = quantize_to_nvfp4(x)
    assert float(q.global_scale) == pytest.approx(float(x.float().abs().max()) / 2688, rel=1e-6)
    _check_properties(x, q)


@HYPO
@given(x=tensors(), factor=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
def test_activation_quantization_properties(device, x, factor):
    # global scale off from amax/2688 by `factor`: < 1 forces saturation, > 1 wastes range
    x = x.to(device)
    gs = compute_global_scale(x) * factor
    _check_properties(x, quantize_activation_nvfp4(x, gs))


@pytest.mark.gpu
def test_cuda_quantization_is_bitwise_equal_to_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available: torch.cuda.is_available() is False")
    from kernels.nvfp4 import swizzle_scales

    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(300, 256, generator=gen) * torch.exp(torch.randn(300, 1, generator=gen))).to(torch.bfloat16)
    qc, qg = quantize_to_nvfp4(x), quantize_to_nvfp4(x.cuda())
    assert torch.equal(qc.data, qg.data.cpu())
    assert torch.equal(qc.scales.view(torch.uint8), qg.scales.view(torch.uint8).cpu())
    assert torch.equal(swizzle_scales(qc.scales).view(torch.uint8), swizzle_scales(qg.scales).view(torch.uint8).cpu())
    assert float(qc.global_scale) == float(qg.global_scale)
    assert torch.equal(dequantize_nvfp4(qc), dequantize_nvfp4(qg).cpu())
