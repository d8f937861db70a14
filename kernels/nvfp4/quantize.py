"""NVFP4 quantization and dequantization (PyTorch reference, any device).

Two-level scaling, per tensor and per block of 16 elements along K (the last dim)::

    global_scale g  = amax(|t|) / (6 * 448)              float32, per tensor ("scale_2")
    block scale  s_b = e4m3( amax(|block|) / (6 * g) )    FP8 E4M3, one per 16 elements
    code         q   = e2m1( x / (s_b * g) )              round-to-nearest-even, saturating
    dequantized  x'  = value(q) * s_b * g

With ``g`` chosen from the tensor's own amax the largest block scale is exactly 448
(the E4M3 maximum) and the largest element maps to 6 (the E2M1 maximum).  ``g`` is a
*dequantization* multiplier; kernels that want the quantization multiplier use
``1 / g`` (= 2688 / amax).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from .format import BLOCK_SIZE, E2M1_MAX, E4M3_MAX, decode_e2m1, encode_e2m1, pack_fp4, unpack_fp4

ScaleLike = Union[torch.Tensor, float]


class Nvfp4Tensor(NamedTuple):
    """A quantized tensor.  Unpacks like a tuple: ``data, scales, global_scale = q``."""

    data: torch.Tensor  #: uint8 ``[..., K/2]``, two E2M1 codes per byte, low nibble = even element
    scales: torch.Tensor  #: float8_e4m3fn ``[..., K/16]``, row-major (NOT swizzled)
    global_scale: torch.Tensor  #: float32 0-dim tensor, dequant multiplier ``amax / (6*448)``

    @property
    def shape(self) -> torch.Size:
        """Shape of the unquantized tensor."""
        return torch.Size((*self.data.shape[:-1], self.data.shape[-1] * 2))


def compute_global_scale(t: torch.Tensor) -> torch.Tensor:
    """``amax(|t|) / (6 * 448)`` as a float32 0-dim tensor on ``t``'s device."""
    amax = t.detach().abs().amax().float() if t.numel() else torch.zeros((), device=t.device)
    # Divide by a tensor on the same device: CUDA turns division by a Python scalar into a
    # multiplication by its reciprocal, which can differ from the CPU's result in the last bit.
    # Near rounding ties of x / (s * g) that bit decides the E2M1 code.
    # torch.full fills on the device (no host copy, so it works under CUDA graph capture)
    return amax / torch.full((), E2M1_MAX * E4M3_MAX, dtype=torch.float32, device=amax.device)


def _as_scale_tensor(g: ScaleLike, device) -> torch.Tensor:
    if isinstance(g, torch.Tensor):
        if g.numel() != 1:
            raise ValueError(f"global_scale must be a scalar, got shape {tuple(g.shape)}")
        return g.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.tensor(float(g), dtype=torch.float32, device=device)


def _check_input(x: torch.Tensor, check_finite: bool) -> None:
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] % BLOCK_SIZE:
        raise ValueError(f"last dimension (K) must be a multiple of {BLOCK_SIZE}, got shape {tuple(x.shape)}")
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError("NVFP4 quantization input contains Inf or NaN")


def block_scales(x: torch.Tensor, global_scale: ScaleLike) -> torch.Tensor:
    """The FP8 E4M3 block scales ``e4m3(amax(|block|) / (6 g))``, shape ``[..., K/16]``."""
    _check_input(x, check_finite=False)
    g = _as_scale_tensor(global_scale, x.device)
    g_safe = torch.where(g > 0, g, torch.ones_like(g))
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // BLOCK_SIZE, BLOCK_SIZE)
    s_exact = blocks.abs().amax(dim=-1) / (E2M1_MAX * g_safe)
    # torch's float->e4m3fn cast rounds to nearest even but does not saturate.
    return s_exact.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)


def _quantize(x: torch.Tensor, global_scale: ScaleLike, check_finite: bool) -> Nvfp4Tensor:
    _check_input(x, check_finite)
    g = _as_scale_tensor(global_scale, x.device)
    if check_finite and (bool(g < 0) or not bool(torch.isfinite(g))):
        raise ValueError(f"global_scale must be finite and >= 0, got {float(g)}")
    scales = block_scales(x, g)
    g_safe = torch.where(g > 0, g, torch.ones_like(g))
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // BLOCK_SIZE, BLOCK_SIZE)
    denom = (scales.float() * g_safe).unsqueeze(-1)
    # A block whose scale underflows to 0 in E4M3 is flushed to zero.
    y = torch.where(denom > 0, blocks / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(blocks))
    codes = encode_e2m1(y).reshape(x.shape)
    return Nvfp4Tensor(pack_fp4(codes), scales, g)


def quantize_to_nvfp4(w: torch.Tensor, global_scale: Optional[ScaleLike] = None, *, check_finite: bool = True) -> Nvfp4Tensor:
    """Quantize a weight ``[..., K]`` (usually ``[N, K]``) to NVFP4.

    ``global_scale`` defaults to :func:`compute_global_scale` of ``w``.  With
    ``check_finite=False`` non-finite input is not rejected: a NaN makes its block's
    scale NaN (and, through a dynamic global scale, the whole tensor), like hardware.
    """
    if global_scale is None:
        global_scale = compute_global_scale(w)
    return _quantize(w, global_scale, check_finite)


def quantize_activation_nvfp4(x: torch.Tensor, global_scale: ScaleLike, *, check_finite: bool = True) -> Nvfp4Tensor:
    """Quantize an activation ``[..., K]`` with a given (calibrated or dynamic) global scale.

    For a dynamic scale pass ``compute_global_scale(x)``.  Values beyond
    ``6 * 448 * global_scale`` saturate.
    """
    return _quantize(x, global_scale, check_finite)


def dequantize_nvfp4(
    q: Union[Nvfp4Tensor, torch.Tensor],
    scales: Optional[torch.Tensor] = None,
    global_scale: Optional[ScaleLike] = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Back to a dense tensor ``[..., K]``: ``value(code) * s_b * g``.

    Call as ``dequantize_nvfp4(nvfp4_tensor)`` or ``dequantize_nvfp4(data, scales, global_scale)``.
    ``scales`` must be row-major ``[..., K/16]`` (use :func:`unswizzle_scales` first
    for swizzled ones).  Computed in float32, returned as ``dtype``.
    """
    if isinstance(q, Nvfp4Tensor):
        data, scales, global_scale = q
    else:
        data = q
        if scales is None or global_scale is None:
            raise TypeError("dequantize_nvfp4(data, scales, global_scale) needs scales and global_scale")
    codes = unpack_fp4(data)
    k = codes.shape[-1]
    if scales.shape[-1] * BLOCK_SIZE != k or scales.shape[:-1] != codes.shape[:-1]:
        raise ValueError(f"scales shape {tuple(scales.shape)} does not match data shape {tuple(data.shape)}")
    g = _as_scale_tensor(global_scale, data.device)
    vals = decode_e2m1(codes).reshape(*codes.shape[:-1], k // BLOCK_SIZE, BLOCK_SIZE)
    out = vals * (scales.float() * g).unsqueeze(-1)
    return out.reshape(codes.shape).to(dtype)


def fake_quantize_nvfp4(x: torch.Tensor, global_scale: Optional[ScaleLike] = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x.dtype``; global scale from ``x``'s amax by default."""
    if global_scale is None:
        global_scale = compute_global_scale(x)
    return dequantize_nvfp4(_quantize(x, global_scale, True), dtype=x.dtype)
