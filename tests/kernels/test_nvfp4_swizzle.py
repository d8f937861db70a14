"""Scale-factor swizzle vs. the CUTLASS Sm1xxBlockScaledConfig layout.

The expected layout is evaluated here with a tiny CuTe layout-algebra evaluator
(hierarchical shape/stride, colexicographic coordinates) applied to the layout
CUTLASS builds in ``cutlass/detail/sm100_blockscaled_layout.hpp``::

    SfKMajorAtom = Layout<Shape <Shape <_32,_4>, Shape <_16,_4>>,     // (row, k-element), SFVecSize = 16
                          Stride<Stride<_16,_4>, Stride< _0,_1>>>
    tile_atom_to_shape_SFB: tile_to_shape(SfAtom, (N, K, L), Step<_2,_1,_3>)

``tile_to_shape`` with that step orders the atom repetitions K-tile first, then
MN-tile, then L, each repetition ``cosize(atom) = 512`` apart.
"""

import itertools

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")

from kernels.nvfp4 import padded_scale_shape, swizzle_scales, swizzled_offset, unswizzle_scales  # noqa: E402


# ------------------------------------------------------------------ a minimal CuTe layout evaluator
def _size(shape):
    return shape if isinstance(shape, int) else _prod(_size(s) for s in shape)


def _prod(xs):
    p = 1
    for x in xs:
        p *= x
    return p


def cute_offset(shape, stride, coord):
    """CuTe layout function: a 1-D coordinate is split colexicographically (first mode fastest)."""
    if isinstance(shape, int):
        assert isinstance(coord, int) and 0 <= coord < shape
        return coord * stride
    if isinstance(coord, int):
        parts = []
        for s in shape:
            parts.append(coord % _size(s))
            coord //= _size(s)
        coord = tuple(parts)
    return sum(cute_offset(s, d, c) for s, d, c in zip(shape, stride, coord))


SF_VEC = 16
ATOM_SHAPE = ((32, 4), (SF_VEC, 4))
ATOM_STRIDE = ((16, 4), (0, 1))
ATOM_COSIZE = 512  # max offset 31*16 + 3*4 + 3 = 511, plus one


def cutlass_sf_layout(rows, k_elems, batch=1):
    """tile_to_shape(SfKMajorAtom, (rows, K, L), Step<_2,_1,_3>) as (shape, stride)."""
    tm, tk = rows // 128, k_elems // (SF_VEC * 4)
    # repetition strides from make_ordered_layout((tm, tk, L), order (2, 1, 3)): K-tiles fastest
    rep_k, rep_m, rep_l = 1, tk, tk * tm
    shape = ((ATOM_SHAPE[0], tm), (ATOM_SHAPE[1], tk), batch)
    stride = ((ATOM_STRIDE[0], rep_m * ATOM_COSIZE), (ATOM_STRIDE[1], rep_k * ATOM_COSIZE), rep_l * ATOM_COSIZE)
    return shape, stride


def test_atom_is_a_bijection_onto_512_bytes():
    offs = {cute_offset(ATOM_SHAPE, ATOM_STRIDE, (m, kb * SF_VEC)) for m in range(128) for kb in range(4)}
    assert offs == set(range(512))
    # the 16 elements of one scale vector share one scale factor (stride 0)
    assert {cute_offset(ATOM_SHAPE, ATOM_STRIDE, (37, 32 + v)) for v in range(16)} == {
        cute_offset(ATOM_SHAPE, ATOM_STRIDE, (37, 32))}


@pytest.mark.parametrize(
    "row, kb, k_blocks, offset",
    [
        (0, 0, 8, 0),
        (0, 1, 8, 1),  # consecutive K blocks of one row: 4 bytes = one 32-bit TMEM word
        (0, 3, 8, 3),
        (32, 0, 8, 4),  # rows 32 apart sit in the same 16-byte line
        (96, 2, 8, 14),
        (1, 0, 8, 16),  # next row within a 32-row group: next 16-byte line
        (31, 3, 8, 31 * 16 + 3),
        (127, 3, 8, 511),  # last byte of the first atom
        (0, 4, 8, 512),  # next K tile comes before the next row tile
        (128, 0, 8, 1024),  # row tile 1 starts after both K tiles of row tile 0
        (200, 6, 8, 1674),  # (1*2 + 1)*512 + (200%32=8)*16 + (72//32=2)*4 + 2
        (130, 1, 3, 512 + 2 * 16 + 1),  # k_blocks=3 pads to one K tile
    ],
)
def test_worked_examples(row, kb, k_blocks, offset):
    assert swizzled_offset(row, kb, k_blocks) == offset
    shape, stride = cutlass_sf_layout(padded_scale_shape(row + 1, k_blocks)[0], padded_scale_shape(1, k_blocks)[1] * 16)
    assert cute_offset(shape, stride, (row, kb * SF_VEC + 5, 0)) == offset


@pytest.mark.parametrize("rows, k_blocks", [(128, 4), (256, 8), (384, 12)])
def test_swizzle_matches_cutlass_layout_everywhere(device, rows, k_blocks):
    # distinct int32 values (bytes would collide past 256) identify every position
    scales = torch.arange(rows * k_blocks, dtype=torch.int32, device=device).reshape(rows, k_blocks)
    flat = swizzle_scales(scales).reshape(-1).cpu()
    shape, stride = cutlass_sf_layout(rows, k_blocks * SF_VEC)
    for m, kb in itertools.product(range(rows), range(k_blocks)):
        off = cute_offset(shape, stride, (m, kb * SF_VEC, 0))
        assert int(flat[off]) == m * k_blocks + kb
    # the vectorized index formula agrees too
    m, kb = torch.meshgrid(torch.arange(rows), torch.arange(k_blocks), indexing="ij")
    assert torch.equal(flat[swizzled_offset(m, kb, k_blocks)], scales.cpu())


def test_batched_layout_matches_cutlass_l_mode(device):
    L, rows, k_blocks = 3, 128, 8
    scales = torch.arange(L * rows * k_blocks, dtype=torch.int32, device=device).reshape(L, rows, k_blocks)
    flat = swizzle_scales(scales).reshape(-1).cpu()
    shape, stride = cutlass_sf_layout(rows, k_blocks * SF_VEC, batch=L)
    for l, m, kb in [(0, 0, 0), (1, 0, 0), (2, 127, 7), (1, 33, 5), (2, 64, 4)]:
        assert int(flat[cute_offset(shape, stride, (m, kb * SF_VEC, l))]) == int(scales[l, m, kb])


@pytest.mark.parametrize("rows, k_blocks", [(1, 1), (31, 3), (128, 4), (129, 5), (300, 9), (200, 6)])
def test_swizzle_unswizzle_inverse_fp8(device, rows, k_blocks):
    gen = torch.Generator().manual_seed(rows * 31 + k_blocks)
    bytes_ = torch.randint(0, 0x7F, (2, rows, k_blocks), generator=gen, dtype=torch.uint8)
    scales = bytes_.view(torch.float8_e4m3fn).to(device)
    swz = swizzle_scales(scales)
    mp, kp = padded_scale_shape(rows, k_blocks)
    assert swz.shape == (2, mp, kp) and swz.dtype == torch.float8_e4m3fn and swz.is_contiguous()
    back = unswizzle_scales(swz, rows, k_blocks)
    assert back.dtype == torch.float8_e4m3fn
    assert torch.equal(back.view(torch.uint8), scales.view(torch.uint8))
    # flat buffers are accepted too
    assert torch.equal(unswizzle_scales(swz.reshape(2, -1), rows, k_blocks).view(torch.uint8), bytes_.to(device))
    # padding is zero: the number of nonzero bytes is unchanged
    assert int((swz.view(torch.uint8) != 0).sum()) == int((bytes_ != 0).sum())


def test_unswizzle_then_swizzle_is_identity_on_full_tiles(device):
    buf = torch.randint(0, 255, (256, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)).to(device)
    assert torch.equal(swizzle_scales(unswizzle_scales(buf, 256, 8)), buf)


def test_padding_shapes_and_errors():
    assert padded_scale_shape(1, 1) == (128, 4)
    assert padded_scale_shape(128, 4) == (128, 4)
    assert padded_scale_shape(129, 5) == (256, 8)
    with pytest.raises(ValueError):
        unswizzle_scales(torch.zeros(100, dtype=torch.uint8), 128, 4)
    with pytest.raises(ValueError):
        swizzle_scales(torch.zeros(4, dtype=torch.uint8))


# --------------------------------------------------------------- independent formulation, properties
def to_blocked(scales):
    """The same layout written the way torch._scaled_mm's Blackwell tests and torchao build it
    (``to_blocked``): 128x4 blocks, K-blocks fastest, each block stored as 32 lines of (4 row groups x 4)."""
    rows, cols = scales.shape
    nrb, ncb = -(-rows // 128), -(-cols // 4)
    padded = torch.zeros((nrb * 128, ncb * 4), dtype=scales.dtype, device=scales.device)
    padded[:rows, :cols] = scales
    blocks = padded.view(nrb, 128, ncb, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1, 32, 16).flatten()


@pytest.mark.parametrize("rows, k_blocks", [(1, 1), (128, 4), (200, 6), (257, 9)])
def test_swizzle_equals_to_blocked(device, rows, k_blocks):
    scales = torch.randint(0, 255, (rows, k_blocks), dtype=torch.uint8, generator=torch.Generator().manual_seed(rows))
    scales = scales.to(device)
    assert torch.equal(swizzle_scales(scales).reshape(-1), to_blocked(scales))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, database=None)
@given(batch=st.lists(st.integers(1, 3), max_size=2), rows=st.integers(1, 300), k_blocks=st.integers(1, 20),
       seed=st.integers(0, 2**31 - 1))
def test_swizzle_unswizzle_inverse_property(batch, rows, k_blocks, seed):
    scales = torch.randint(0, 256, (*batch, rows, k_blocks), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    swz = swizzle_scales(scales)
    mp, kp = padded_scale_shape(rows, k_blocks)
    assert swz.shape == (*batch, mp, kp)
    assert torch.equal(unswizzle_scales(swz, rows, k_blocks), scales)
    # every scale sits where the offset formula says, in its own batch's Mp*Kp bytes
    flat = swz.reshape(-1, mp * kp)
    m, kb = torch.meshgrid(torch.arange(rows), torch.arange(k_blocks), indexing="ij")
    assert torch.equal(flat[:, swizzled_offset(m, kb, k_blocks)], scales.reshape(-1, rows, k_blocks))
    # and nowhere else: the padding is zero
    assert int(flat.ne(0).sum()) == int(scales.ne(0).sum())
