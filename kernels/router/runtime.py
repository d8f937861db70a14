"""What the launchers of every router kernel share: torch tensor -> CuTe tensor, the CUDA stream,
the per-device E2M1/E4M3 decode table and the zeroed cross-CTA semaphores.

``launch`` (portable and GEMV kernels) and ``sm100`` both import this module; neither imports
the other, so the two can be loaded in either order.
"""

from __future__ import annotations

import torch

_LUTS = {}
_COUNTERS = {}
_POLLED = {}


def to_cute(t: torch.Tensor):
    from cutlass.cute.runtime import from_dlpack

    # the last dimension is the contiguous one for every tensor here (named: a [1,1,1] dummy or a
    # [1, k] output would leave it ambiguous)
    return from_dlpack(t, assumed_align=16).mark_layout_dynamic(leading_dim=t.dim() - 1)


def pdl_available(device) -> bool:
    """Programmatic dependent launches (``use_pdl`` + ``griddepcontrol``, SM90 and later): the
    router's kernel after the fused quantizer on ``device``; ``GPUREPRO_ROUTER_PDL=0`` turns them
    off (the bench's comparison)."""
    import os

    dev = torch.device(device)
    return (dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 9
            and os.environ.get("GPUREPRO_ROUTER_PDL", "1") != "0")


def current_stream(device=None):
    import cuda.bindings.driver as cuda

    if device is None or torch.device(device).type != "cuda":
        return cuda.CUstream(0)
    return cuda.CUstream(torch.cuda.current_stream(device).cuda_stream)


def e2m1_e4m3_lut(device=None):
    """float32 [272]: the 16 E2M1 code values, then the 256 E4M3 byte values (NaN bytes stay NaN)."""
    from kernels.nvfp4.format import e2m1_lut

    e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    return torch.cat([e2m1_lut(dtype=torch.float32), e4m3]).to(device)


def lut(device):
    """The decode table on ``device``, made once per device (a launch inside a CUDA graph may not copy)."""
    key = str(device)
    if key not in _LUTS:
        _LUTS[key] = e2m1_e4m3_lut(device)
    return _LUTS[key]


def alpha_of(activation, linear, dev):
    """The epilogue factor ``g_a * g_b`` as float32 [1]: the fused quantizer's 4th element when the
    activation came from it (no extra kernel), else one multiply."""
    if len(activation) > 3 and activation[3] is not None:
        return activation[3].reshape(1)
    g_a = activation[2]
    return (g_a.to(dev, torch.float32) * linear._global_scale_b.to(dev, torch.float32)).reshape(1)


def counters(device, n: int):
    """Zeroed int32 semaphores; the last CTA of a group resets its own to 0 for the next launch."""
    key = str(device)
    c = _COUNTERS.get(key)
    if c is None or c.numel() < n:
        c = torch.zeros(max(n, 256), dtype=torch.int32, device=device)
        _COUNTERS[key] = c
    return c


def polled_workspace(device, shape):
    """A float32 workspace of ``shape`` whose words all hold the polling sentinel
    (``kernels.router.gemv.SENTINEL``); the kernel that reads it writes the sentinel back, so one
    buffer per (device, shape) serves every launch, CUDA graph replays included.  Launches of one
    shape must not overlap (one stream), as with :func:`counters`."""
    key = (str(device), tuple(shape))
    w = _POLLED.get(key)
    if w is None:
        w = torch.full(tuple(shape), -1, dtype=torch.int32, device=device).view(torch.float32)
        _POLLED[key] = w
    return w


def refill_polled_workspaces() -> None:
    """Every polled workspace back to the sentinel: after a launch that published into one without
    routing (the probe's ``noroute`` variants), which would leave it holding stale values that the
    next routing launch of the same shape would take for this launch's."""
    for w in _POLLED.values():
        w.view(torch.int32).fill_(-1)
