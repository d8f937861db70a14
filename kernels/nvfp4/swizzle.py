"""Scale-factor layout read by SM100/SM120 block-scaled MMAs (CUTLASS ``Sm1xxBlockScaledConfig``).

CUTLASS (``cutlass/detail/sm100_blockscaled_layout.hpp``) builds the scale-factor
layout of an ``[MN, K]`` operand from one K-major atom::

    SfKMajorAtom = Layout< Shape < Shape <_32,_4>, Shape <SFVecSize,_4> >,
                           Stride< Stride<_16,_4>, Stride<       _0,_1> > >

i.e. over (row, k-element) an atom covers 128 rows x 4 scale factors (64 K
elements for NVFP4) in 512 bytes: row ``r = r0 + 32*r1`` (``r0 < 32``, ``r1 < 4``)
and scale column ``c < 4`` sit at ``16*r0 + 4*r1 + c``.  ``tile_to_shape(atom,
(MN, K[, L]), Step<_2,_1[,_3]>)`` repeats the atom with K-tiles innermost, then
MN-tiles, then the batch mode.  For a row-major scale matrix ``[M, KB]``
(``KB = K/16``), padded to ``Mp = ceil(M/128)*128`` rows and ``Kp = ceil(KB/4)*4``
columns, the byte offset of scale ``(m, kb)`` is::

    ((m // 128) * (Kp // 4) + kb // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4 + kb % 4

:func:`swizzle_scales` returns a tensor of shape ``[..., Mp, Kp]`` whose
*contiguous memory* is in that order (only the memory order is meaningful, not the
2-D indexing); padding is zero.  :func:`unswizzle_scales` inverts it.
"""

from __future__ import annotations

from typing import Tuple

import torch

SF_ATOM_ROWS = 128  # rows (M or N) per atom
SF_ATOM_COLS = 4  # scale factors (K blocks) per atom
SF_ATOM_SIZE = SF_ATOM_ROWS * SF_ATOM_COLS  # 512 elements


def _ceil_to(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def padded_scale_shape(rows: int, k_blocks: int) -> Tuple[int, int]:
    """``(Mp, Kp)``: rows padded to 128, scale columns padded to 4."""
    return _ceil_to(rows, SF_ATOM_ROWS), _ceil_to(k_blocks, SF_ATOM_COLS)


def swizzled_offset(row, k_block, k_blocks: int):
    """Offset of scale ``(row, k_block)`` in the swizzled buffer of a matrix with ``k_blocks`` columns.

    Works on Python ints and on integer tensors (elementwise).
    """
    kt = _ceil_to(k_blocks, SF_ATOM_COLS) // SF_ATOM_COLS
    return (
        ((row // SF_ATOM_ROWS) * kt + k_block // SF_ATOM_COLS) * SF_ATOM_SIZE
        + (row % 32) * 16
        + ((row % SF_ATOM_ROWS) // 32) * 4
        + k_block % SF_ATOM_COLS
    )


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    # Do the data movement on a uint8 view for 1-byte types (float8 has few ops on CPU).
    return t.view(torch.uint8) if t.element_size() == 1 and t.dtype != torch.uint8 else t


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """Row-major scales ``[..., M, KB]`` -> swizzled ``[..., Mp, Kp]`` (same dtype, contiguous)."""
    if scales.dim() < 2:
        raise ValueError(f"scales must be at least 2-D [..., rows, k_blocks], got shape {tuple(scales.shape)}")
    *batch, m, kb = scales.shape
    mp, kp = padded_scale_shape(m, kb)
    src = _as_bytes(scales.contiguous())
    padded = torch.zeros((*batch, mp, kp), dtype=src.dtype, device=src.device)
    padded[..., :m, :kb] = src
    # row = mt*128 + r1*32 + r0 ; col = kt*4 + c   ->  order (mt, kt, r0, r1, c)
    t = padded.reshape(*batch, mp // 128, 4, 32, kp // 4, 4)
    nb = len(batch)
    perm = list(range(nb)) + [nb + 0, nb + 3, nb + 2, nb + 1, nb + 4]
    out = t.permute(perm).contiguous().reshape(*batch, mp, kp)
    return out.view(scales.dtype) if out.dtype != scales.dtype else out


def unswizzle_scales(swizzled: torch.Tensor, rows: int, k_blocks: int) -> torch.Tensor:
    """Inverse of :func:`swizzle_scales`: ``[..., Mp, Kp]`` (or flat ``[..., Mp*Kp]``) -> ``[..., rows, k_blocks]``."""
    mp, kp = padded_scale_shape(rows, k_blocks)
    if swizzled.dim() >= 2 and tuple(swizzled.shape[-2:]) == (mp, kp):
        batch = swizzled.shape[:-2]
    elif swizzled.dim() >= 1 and swizzled.shape[-1] == mp * kp:
        batch = swizzled.shape[:-1]
    else:
        raise ValueError(
            f"swizzled scales of shape {tuple(swizzled.shape)} do not hold a padded {mp}x{kp} "
            f"layout for {rows} rows x {k_blocks} scale columns"
        )
    src = _as_bytes(swizzled.contiguous())
    t = src.reshape(*batch, mp // 128, kp // 4, 32, 4, 4)  # (mt, kt, r0, r1, c)
    nb = len(batch)
    perm = list(range(nb)) + [nb + 0, nb + 3, nb + 2, nb + 1, nb + 4]  # -> (mt, r1, r0, kt, c)
    out = t.permute(perm).reshape(*batch, mp, kp)[..., :rows, :k_blocks].contiguous()
    return out.view(swizzled.dtype) if out.dtype != swizzled.dtype else out
