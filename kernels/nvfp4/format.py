"""E2M1 (FP4) element format: encode, decode, pack two codes per byte.

An E2M1 code is 4 bits ``s e1 e0 m``: sign, 2 exponent bits (bias 1), 1 mantissa
bit.  The 8 magnitudes are::

    code  0    1    2    3    4    5    6    7
    value 0.0  0.5  1.0  1.5  2.0  3.0  4.0  6.0

Codes 8..15 are the same magnitudes with the sign bit set (8 is -0.0).  There is
no Inf/NaN.  Rounding is round-to-nearest, ties-to-even (even = mantissa bit 0),
saturating at +-6, i.e. what ``cvt.rn.satfinite.e2m1x2.f32`` does.

Packing: element ``2*i`` goes to the LOW nibble of byte ``i``, element ``2*i+1``
to the HIGH nibble -- the order in which the tensor cores read packed FP4.
"""

from __future__ import annotations

import functools

import torch

E2M1_MAX = 6.0
E4M3_MAX = 448.0
BLOCK_SIZE = 16  # elements along K sharing one FP8 scale

#: magnitudes of codes 0..7
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: values of all 16 codes (code 8 is -0.0)
E2M1_VALUES = E2M1_MAGNITUDES + tuple(-v for v in E2M1_MAGNITUDES)


def e2m1_lut(device=None, dtype=torch.float32) -> torch.Tensor:
    """The 16 code values as a tensor, indexable by code (shared per device and dtype: do not modify it).

    Cached because building it copies from the host on every call, which CUDA graph capture refuses.
    """
    return _e2m1_lut(torch.device(device) if device is not None else torch.device("cpu"), dtype)


@functools.lru_cache(maxsize=None)
def _e2m1_lut(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(E2M1_VALUES, dtype=dtype, device=device)


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round ``x`` (already divided by its scale) to E2M1 codes (uint8, 0..15).

    Round-to-nearest-even with saturation to +-6.  The decision boundaries are
    the midpoints between neighbouring magnitudes; at a tie the code with an even
    mantissa bit wins, hence the alternating ``>`` / ``>=``.
    NaN inputs are rejected by the callers (quantize_* check finiteness).
    """
    a = x.abs().float()
    mag = (
        (a > 0.25).to(torch.uint8)  # 0.25 ties to 0.0   (code 0)
        + (a >= 0.75).to(torch.uint8)  # 0.75 ties to 1.0   (code 2)
        + (a > 1.25).to(torch.uint8)  # 1.25 ties to 1.0   (code 2)
        + (a >= 1.75).to(torch.uint8)  # 1.75 ties to 2.0   (code 4)
        + (a > 2.5).to(torch.uint8)  # 2.5  ties to 2.0   (code 4)
        + (a >= 3.5).to(torch.uint8)  # 3.5  ties to 4.0   (code 6)
        + (a > 5.0).to(torch.uint8)  # 5.0  ties to 4.0   (code 6); > 6 saturates to 7
    )
    sign = torch.signbit(x).to(torch.uint8) << 3
    return mag | sign


def decode_e2m1(codes: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """E2M1 codes (any integer dtype, values 0..15) -> values."""
    lut = e2m1_lut(device=codes.device, dtype=dtype)
    return lut[codes.long()]


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes ``[..., K]`` (K even) into bytes ``[..., K/2]``: low nibble = even element."""
    if codes.shape[-1] % 2:
        raise ValueError(f"last dimension must be even to pack FP4, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    lo = c[..., 0::2] & 0x0F
    hi = c[..., 1::2] & 0x0F
    return lo | (hi << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_fp4`: bytes ``[..., K/2]`` -> codes ``[..., K]`` (uint8)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed FP4 must be uint8, got {packed.dtype}")
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)
