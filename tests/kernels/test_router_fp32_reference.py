"""The fused router against an independent float64 reference on a GPU (``-m gpu``).

Nothing of ``kernels.nvfp4``'s decode is used here: the E2M1 codes, the E4M3 scales (bit fields)
and the 128x4 scale swizzle are decoded by this file, the GEMM is a float64 matmul on the CPU,
then softmax and ``torch.topk``.  Only the NVFP4 inputs (quantized weight and activation) come
from the library, since they are what the kernel reads."""

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

HIDDEN = 7168
E = 384
K_TOP = 6


def _e2m1(codes):
    """E2M1 code (0..15) -> value from its bit fields: s | e1 e0 | m."""
    codes = codes.long()
    s = torch.where(codes & 8 != 0, -1.0, 1.0).double()
    e = ((codes >> 1) & 3).double()
    m = (codes & 1).double()
    mag = torch.where(e == 0, m * 0.5, torch.pow(2.0, e - 1) * (1 + m / 2))
    return s * mag


def _e4m3(b):
    """E4M3 (fn) byte -> value from its bit fields: s | 4-bit exponent (bias 7) | 3-bit mantissa."""
    b = b.long()
    s = torch.where(b & 0x80 != 0, -1.0, 1.0).double()
    e = ((b >> 3) & 15).double()
    m = (b & 7).double()
    v = torch.where(e == 0, m / 8 * 2.0 ** -6, torch.pow(2.0, e - 7) * (1 + m / 8))
    v = torch.where((b & 0x7F) == 0x7F, torch.full_like(v, float("nan")), v)
    return s * v


def _codes(packed):
    p = packed.cpu().long()
    return torch.stack((p & 15, p >> 4), dim=-1).flatten(-2)


def _unswizzle(flat, rows, blocks):
    """Row-major [rows, blocks] from the 128x4 atoms: atom (row // 128, block // 4), inside it
    (row % 32) * 16 + ((row % 128) // 32) * 4 + block % 4; K-atoms inner."""
    r = torch.arange(rows).unsqueeze(1)
    b = torch.arange(blocks).unsqueeze(0)
    k_atoms = -(-blocks // 4)
    off = ((r // 128) * k_atoms + b // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + b % 4
    return flat.cpu().reshape(-1)[off]


def _dequant(packed, scales_rm, g):
    vals = _e2m1(_codes(packed))
    rows, k = vals.shape
    s = _e4m3(scales_rm).repeat_interleave(16, dim=1)
    return vals * s * float(g)


def _reference(layer, act, k, scoring):
    a_data, a_scales, g_a = act[:3]  # the fused quantizer appends alpha = g_a * g_b
    a = _dequant(a_data, a_scales.cpu(), g_a.cpu())
    w_scales = _unswizzle(layer._scale_b.view(torch.uint8), layer.out_features, layer.in_features // 16)
    w = _dequant(layer._mat_b, w_scales, layer._global_scale_b.cpu())
    logits = a @ w.t()  # float64 on the CPU
    _, ids = torch.topk(logits, k, dim=-1)
    if scoring == "softmax":
        weights = torch.softmax(logits, dim=-1).gather(1, ids)
    else:
        weights = torch.sigmoid(logits.gather(1, ids))
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return logits, ids, weights


def _layer(seed):
    g = torch.Generator().manual_seed(seed)
    layer = Nvfp4Linear((torch.randn(E, HIDDEN, generator=g) / HIDDEN ** 0.5).cuda()).finalize_weights()
    return layer, g


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8,
                    reason="the portable kernels need SM80 or later")
@pytest.mark.parametrize("t", [1, 33, 500])
@pytest.mark.parametrize("kernel,split_k", [("auto", None), ("tile", None), ("staged", None), ("mma", True), ("mma", False)],
                         ids=["auto", "tile", "staged", "mma-splitk", "mma-nosplit"])
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_router_matches_independent_fp64_reference(t, kernel, split_k, scoring):
    layer, g = _layer(seed=t + 7)
    x = torch.randn(t, HIDDEN, generator=g).cuda().to(torch.bfloat16)
    act = router.prepare_activation(x, layer)
    # "tile": the pipelined large-T kernel forced at every T (split-K, route kernel); "staged": the
    # staged-decode swap-AB kernel forced (its K splits, waiting route)
    kw = ({} if kernel == "auto" else {"kernel": kernel} if kernel in ("tile", "staged")
          else {"kernel": kernel, "split_k": split_k})
    ids, w = router.run_nvfp4_fused_router(x, layer, K_TOP, scoring, path="portable", activation=act, **kw)
    torch.cuda.synchronize()
    logits, ref_ids, ref_w = _reference(layer, act, K_TOP, scoring)
    ids = ids.cpu().long()
    differ = ids != ref_ids
    # a differing slot is allowed only where the two experts' float64 logits are within float32
    # summation noise of each other
    tol = 1e-5 * logits.abs().amax(dim=1, keepdim=True)
    gap = (logits.gather(1, ids) - logits.gather(1, ref_ids)).abs()
    assert not bool((differ & (gap > tol)).any()), f"{int(differ.sum())} id mismatches beyond ties"
    if not differ.any():  # on a tie swap the weights are the other expert's; the ids were checked
        assert float((w.cpu().double() - ref_w).abs().max()) < 1e-4
    # deterministic: the same bits on every run
    for _ in range(2):
        ids2, w2 = router.run_nvfp4_fused_router(x, layer, K_TOP, scoring, path="portable", activation=act, **kw)
        assert torch.equal(ids2.cpu().long(), ids) and torch.equal(w2.cpu(), w.cpu())
