"""Registry of device kernels for :class:`~kernels.nvfp4.linear.Nvfp4Linear`.

A kernel is registered with a predicate on ``torch.device`` (e.g. "CUDA with
compute capability 12.x") and a callable ``fn(layer, x) -> Tensor`` that computes
``layer(x)`` from ``layer._mat_b`` / ``layer._scale_b`` / ``layer._global_scale_b``.
``Nvfp4Linear.forward`` uses the first registered kernel whose predicate accepts
the input's device, and otherwise the PyTorch reference path.  Empty by default;
the fused-router work fills it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

KernelFn = Callable[["torch.nn.Module", torch.Tensor], torch.Tensor]
DevicePredicate = Callable[[torch.device], bool]


@dataclass(frozen=True)
class RegisteredKernel:
    name: str
    supports: DevicePredicate
    fn: KernelFn


_lock = threading.Lock()
_kernels: Dict[str, RegisteredKernel] = {}


def register_kernel(name: str, supports: DevicePredicate, fn: KernelFn, *, replace: bool = False) -> RegisteredKernel:
    """Register ``fn`` under ``name``; ``supports(device)`` says where it can run."""
    with _lock:
        if name in _kernels and not replace:
            raise KeyError(f"NVFP4 kernel {name!r} is already registered")
        k = RegisteredKernel(name, supports, fn)
        _kernels[name] = k
        return k


def unregister_kernel(name: str) -> None:
    with _lock:
        _kernels.pop(name, None)


def registered_kernels() -> List[RegisteredKernel]:
    with _lock:
        return list(_kernels.values())


def find_kernel(device: torch.device) -> Optional[RegisteredKernel]:
    """First registered kernel whose predicate accepts ``device`` (a failing predicate counts as no)."""
    device = torch.device(device)
    for k in registered_kernels():
        try:
            ok = bool(k.supports(device))
        except Exception:  # a predicate must never break the reference path
            ok = False
        if ok:
            return k
    return None


def cuda_capability_is(*majors: int) -> DevicePredicate:
    """Predicate helper: CUDA device whose compute-capability major is one of ``majors`` (e.g. 12 for SM120/SM121)."""

    def pred(device: torch.device) -> bool:
        if device.type != "cuda" or not torch.cuda.is_available():
            return False
        return torch.cuda.get_device_capability(device)[0] in majors

    return pred
