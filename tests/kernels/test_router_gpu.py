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
