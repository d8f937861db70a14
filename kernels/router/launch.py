"""Torch tensors -> CuTe tensors (``mark_layout_dynamic``) and the kernel launches.

The weight operands are the processed buffers of ``Nvfp4Linear.finalize_weights()``:
``_mat_b`` (packed E2M1, read as int32 words) and ``_scale_b`` (swizzled E4M3, read as bytes).
"""

from __future__ import annotations

from typing import Tuple

import torch

_LUTS = {}


def _lut(device):
    key = str(device)
    if key not in _LUTS:
        from .portable import e2m1_e4m3_lut

        _LUTS[key] = e2m1_e4m3_lut(device)
    return _LUTS[key]


def _cute(t: torch.Tensor):
    from cutlass.cute.runtime import from_dlpack

    return from_dlpack(t, assumed_align=16).mark_layout_dynamic()


def current_stream(device=None):
    import cuda.bindings.driver as cuda

    if device is None or torch.device(device).type != "cuda":
        return cuda.CUstream(0)
    return cuda.CUstream(torch.cuda.current_stream(device).cuda_stream)


def portable_args(activation, linear, top_k: int):
    """CuTe arguments of the portable kernel, and the output tensors."""
    a_data, a_scales, g_a = activation
    t = a_data.shape[0]
    dev = a_data.device
    alpha = (g_a.to(dev, torch.float32) * linear._global_scale_b.to(dev, torch.float32)).reshape(1)
    ids = torch.empty((t, top_k), dtype=torch.int32, device=dev)
    w = torch.empty((t, top_k), dtype=torch.float32, device=dev)
    args = (
        _cute(a_data.contiguous().view(torch.int32)),
        _cute(a_scales.contiguous()),
        _cute(linear._mat_b.contiguous().view(torch.int32)),
        _cute(linear._scale_b.contiguous().view(torch.uint8).reshape(-1)),
        _cute(alpha),
        _cute(_lut(dev)),
        _cute(ids),
        _cute(w),
        current_stream(dev),
    )
    return args, ids, w


def run_portable(activation, linear, top_k: int, scoring: str, renormalize: bool, config=None) -> Tuple[torch.Tensor, torch.Tensor]:
    from .portable import compile_portable, pick_config

    args, ids, w = portable_args(activation, linear, top_k)
    bm, threads = config or pick_config(activation[0].shape[0])
    fn = compile_portable(top_k, scoring, renormalize, bm, threads, args)
    fn(*args)
    return ids, w


def run_sm100(activation, linear, top_k: int, scoring: str, renormalize: bool):
    from .sm100 import run_sm100_router

    return run_sm100_router(activation, linear, top_k, scoring, renormalize)
