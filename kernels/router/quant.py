"""Fused NVFP4 activation quantizer in CuTe DSL: bf16 ``[T, K]`` -> packed E2M1 ``[T, K/2]`` + E4M3
block scales ``[T, K/16]`` (row-major, the layout the router kernels read) in ONE launch, bit for bit
what ``kernels.nvfp4.quantize_activation_nvfp4`` returns.

The PyTorch quantizer is ~20 elementwise kernels; at decode sizes each costs a graph node (~1 µs),
so quantize-and-route was 7-20x slower than route alone.  Here:

* the tensor is flat: block ``b`` (16 elements) is words ``[8b, 8b+8)`` of the bf16 input (read as
  int32, two 16-byte loads), words ``[2b, 2b+2)`` of the packed output and byte ``b`` of the scales;
  thread ``i`` of the grid takes blocks ``i, i + n, ...`` and keeps the first one or two
  (:func:`blocks_per_thread`) in registers across the global-scale step (all of them up to
  T = 603 on an H200);
* dynamic global scale (``g = amax(|x|) / 2688``, the layer has no ``input_global_scale``): CTA max
  (integer max of the |x| bit patterns: the same order as the floats, NaN propagates), then a grid
  barrier (:data:`BARRIER`, :func:`pick_barrier`): up to 32 CTAs each stores its max with the
  launch's epoch in its own 64-bit slot and polls all slots until each carries the epoch; larger
  grids store the max in a slot, add to an arrival count that is never reset (a launch adds 2^24
  in all) with one release atomic, poll the count and read the slots; either way the kernel is
  graph-capturable and needs no host memset (the grid is at most ``4 x SMs`` CTAs of 256 threads
  so every CTA is resident).  One CTA skips the barrier, and
  so does a small input (up to ``REPLICATE_MAX_BLOCKS`` blocks: decode): every CTA reads all of
  it for the max itself, one block per thread.  Static scale: read from a 1-element tensor, no
  barrier;
* large inputs (more blocks than the resident threads hold, :func:`uses_table`): the blocks'
  E2M1 thresholds from a per-CTA table of the 127 scale codes, and the dynamic scale's second
  pass backwards (L2 still holds what the max pass read last);
* every floating-point step PyTorch takes is done with the same IEEE operation through inline PTX
  (``div.rn.f32``, ``mul.rn.f32``, ``add.rn.f32``: no fast-math, no FMA contraction, no flush of
  subnormals): ``s = e4m3(min(amax_b / (6 g), 448))`` with c10's float->e4m3fn rounding (also for
  E4M3 subnormals), the E2M1 codes of ``y = x / (s g)`` by the same round-to-nearest-even
  thresholds as ``kernels.nvfp4.format.encode_e2m1`` - found without the division, by comparing
  ``|x|`` with per-block bf16 thresholds that are exact (``E2M1_MIDPOINTS``; the division where
  ``s g`` is outside [2^-100, 2^100]), a zero or NaN ``s g`` gives code 0;
* optionally ``alpha = g * g_b`` (the router's fp32 epilogue factor) is written too, saving the
  router launchers their own multiply kernel.

No ``cvt.*e2m1``/``e4m3`` hardware conversions (SM89+/SM100+): the same source builds for sm_80,
sm_90a and sm_120a.  NaN/Inf inputs follow PyTorch only where noted (a NaN makes the dynamic scale
NaN and every code 0, as in PyTorch); the tests use finite inputs.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass._mlir.dialects import llvm

THREADS = 256
WARPS = THREADS // 32
PER_THREAD = 2  # 16-element blocks per thread held in registers across the global-scale barrier
# grid cap: 4 CTAs of 256 threads (<= 64 registers a thread, checked in the compile test) fit on
# one SM of SM80/SM90/SM120, so every CTA is resident for the grid barrier
CTAS_PER_SM = 4
# dynamic scale of a small input (decode: T <= 4 at hidden 7168): every CTA reads the whole input
# for the max itself (all of a thread's share of it in flight at once: replica_inflight) and no
# CTA waits for another; one block per thread, so a token's quantization is spread over K/4096
# CTAs instead of one.  H200, the quantizer alone (2026-12-04, T = 1..9): 2.43 / 2.65 / 3.02 /
# 3.15 / 3.74 / 3.80 us at T = 1 / 2 / 3 / 4 / 5 / 7 against 3.13 / 3.24 / 3.24 / 3.26 / 3.29 / 3.47
# with the slot grid barrier: the replicated reads grow with T, the barrier does not
REPLICATE_MAX_BLOCKS = 2048

# workspace words: the atomic barrier's count, max and generation; the slot barrier's arrival
# count (its own 128-byte line, which only arrivals and polls touch) and one max per CTA
WS_COUNT = 0
WS_AMAX = 1
WS_GEN = 2
WS_ARRIVE = 32
WS_EPOCH = 48
WS_SLOTS = 64
MAX_CTAS = 4096  # CTAs of a grid (one barrier slot each; grid_ctas caps the grid at it)
WS_EPOCH_SLOTS = WS_SLOTS + MAX_CTAS  # int64 slots (epoch << 32 | max) of the epoch barrier
WS_WORDS = WS_EPOCH_SLOTS + 2 * MAX_CTAS
# the slot barrier's arrivals add up to this per launch (CTA 0 adds it less the others' ones), so the
# count needs no reset: a launch waits for the next multiple of it (int32 wrap-around included)
ARRIVE_UNIT = 1 << 24
# grid barrier of the dynamic scale: "epoch" (each CTA stores its max with this launch's epoch in
# its own 64-bit slot, no fence, no atomic; every CTA polls all slots until each carries the epoch),
# "slots" (each CTA stores its max in its own slot and adds to a count with a release atomic; every
# CTA polls the count, then reads all slots) or "atomic" (atom.max into one word, the last to
# arrive computes the scale and publishes it behind a generation word).  The launcher's pick
# (:func:`pick_barrier`): epoch up to EPOCH_MAX_CTAS CTAs, slots above (H200, the quantizer alone:
# 13 CTAs (T=7) 3.19 us against 3.45-3.50, 28 (T=16) 3.31 against 3.49; 224 (T=128) 4.90 against
# 4.47-4.52, 528 (T=4096) 43.3-43.5 against 42.0: every CTA polling every slot loads L2 with
# CTAs^2 requests a round); atomic: 3.68 / 3.97 / 5.09 / 43.5
BARRIER = "epoch"
EPOCH_MAX_CTAS = 32


def _asm(ret, ptx: str, cons: str, *vals):
    res = llvm.inline_asm(ret.mlir_type, [v.ir_value() for v in vals], ptx, cons)
    return ret(res)


def _div_rn(a, b):
    return _asm(cutlass.Float32, "div.rn.f32 $0, $1, $2;", "=f,f,f", cutlass.Float32(a), cutlass.Float32(b))


def _mul_rn(a, b):
    return _asm(cutlass.Float32, "mul.rn.f32 $0, $1, $2;", "=f,f,f", cutlass.Float32(a), cutlass.Float32(b))


def _add_rn(a, b):
    return _asm(cutlass.Float32, "add.rn.f32 $0, $1, $2;", "=f,f,f", cutlass.Float32(a), cutlass.Float32(b))


def _f2i(a):
    return _asm(cutlass.Int32, "mov.b32 $0, $1;", "=r,f", cutlass.Float32(a))


def _i2f(a):
    return _asm(cutlass.Float32, "mov.b32 $0, $1;", "=f,r", cutlass.Int32(a))


# Two bf16 (one int32 word: element 2j in the low half) -> one byte of two E2M1 codes (element 2j
# in the low nibble), y = x / d with div.rn; |y| against the rounding thresholds of encode_e2m1
# (> 0.25, >= 0.75, > 1.25, >= 1.75, > 2.5, >= 3.5, > 5.0: ties to the even mantissa); set.*.u32
# gives 0xffffffff for true, so subtracting counts the thresholds passed; NaN passes none.
_ENCODE_PAIR = """{
.reg .b32 w0, w1, m0, m1, t;
.reg .f32 x0, x1, y0, y1, a0, a1;
shl.b32 w0, $1, 16;
and.b32 w1, $1, 0xffff0000;
mov.b32 x0, w0;
mov.b32 x1, w1;
div.rn.f32 y0, x0, $2;
div.rn.f32 y1, x1, $2;
abs.f32 a0, y0;
abs.f32 a1, y1;
mov.b32 m0, 0;
mov.b32 m1, 0;
set.gt.u32.f32 t, a0, 0f3E800000; sub.s32 m0, m0, t;
set.ge.u32.f32 t, a0, 0f3F400000; sub.s32 m0, m0, t;
set.gt.u32.f32 t, a0, 0f3FA00000; sub.s32 m0, m0, t;
set.ge.u32.f32 t, a0, 0f3FE00000; sub.s32 m0, m0, t;
set.gt.u32.f32 t, a0, 0f40200000; sub.s32 m0, m0, t;
set.ge.u32.f32 t, a0, 0f40600000; sub.s32 m0, m0, t;
set.gt.u32.f32 t, a0, 0f40A00000; sub.s32 m0, m0, t;
set.gt.u32.f32 t, a1, 0f3E800000; sub.s32 m1, m1, t;
set.ge.u32.f32 t, a1, 0f3F400000; sub.s32 m1, m1, t;
set.gt.u32.f32 t, a1, 0f3FA00000; sub.s32 m1, m1, t;
set.ge.u32.f32 t, a1, 0f3FE00000; sub.s32 m1, m1, t;
set.gt.u32.f32 t, a1, 0f40200000; sub.s32 m1, m1, t;
set.ge.u32.f32 t, a1, 0f40600000; sub.s32 m1, m1, t;
set.gt.u32.f32 t, a1, 0f40A00000; sub.s32 m1, m1, t;
mov.b32 w0, y0;
mov.b32 w1, y1;
shr.u32 w0, w0, 28;
shr.u32 w1, w1, 28;
and.b32 w0, w0, 8;
and.b32 w1, w1, 8;
or.b32 m0, m0, w0;
or.b32 m1, m1, w1;
shl.b32 m1, m1, 4;
or.b32 $0, m0, m1;
}"""


# Division-free E2M1 codes (what _ENCODE_PAIR computes, without its 16 div.rn per block).  The
# magnitude code m of x is the number of thresholds |y| passes, y = div.rn(x, d); for d > 0 and
# each threshold t (> or >=, as above) that test is an exact comparison of the real |x| / d with
# the midpoint M = t +- ulp(t)/2 (every t has an even last mantissa bit, so a tie rounds to t):
# |x| > M d (for >), |x| >= M d (for >=).  |x| is a bf16 value, so the test is |x| >= V with V the
# smallest bf16 above (at or above) M d; V is found per block from p = mul.rn(t, d): M d =
# p + fma(t, d, -p) + (+-ulp(t)/2) d, whose differences to the two bf16 values above p's
# truncation are summed exactly up to one last correctly rounded add that keeps the sign (t has
# at most 3 significant bits, so the partial sums fit 24; tests/kernels/test_router_quant.py
# checks every bf16 |x| against div.rn for ~1300 d, a one-off run did ~49 000).  Valid for 2^-100 <= d <= 2^100 (no
# subnormal products); other blocks take the division.
# (threshold t, strict >, exponent of ulp(t)/2)
E2M1_MIDPOINTS = ((0.25, True, -26), (0.75, False, -25), (1.25, True, -24), (1.75, False, -24),
                  (2.5, True, -23), (3.5, False, -23), (5.0, True, -22))
THRESHOLD_D_MIN = 2.0 ** -100
THRESHOLD_D_MAX = 2.0 ** 100


def _f32_hex(v: float) -> str:
    import struct

    return "0f%08X" % struct.unpack("<I", struct.pack("<f", v))[0]


def _threshold_ptx(t: float, strict: bool, half_ulp_exp: int) -> str:
    """PTX: d ($1) -> the bf16 bits of V (see above) in both halves of a word ($0)."""
    c = 2.0 ** half_ulp_exp * (1.0 if strict else -1.0)
    cmp = "ge" if strict else "gt"  # V above M d: for > the bf16 equal to M d does not pass
    return f"""{{
.reg .f32 p, np, e, c, b0, b1, a0, a1, s0, s1, d0, d1;
.reg .b32 pb, q0, q1, k0, k1, v;
.reg .pred g0, g1;
mul.rn.f32 p, {_f32_hex(t)}, $1;
neg.f32 np, p;
fma.rn.f32 e, {_f32_hex(t)}, $1, np;
mul.rn.f32 c, {_f32_hex(c)}, $1;
mov.b32 pb, p;
and.b32 q0, pb, 0xFFFF0000;
add.s32 q1, q0, 0x10000;
mov.b32 b0, q0;
mov.b32 b1, q1;
sub.rn.f32 a0, p, b0;
sub.rn.f32 a1, p, b1;
add.rn.f32 s0, a0, e;
add.rn.f32 s1, a1, e;
add.rn.f32 d0, s0, c;
add.rn.f32 d1, s1, c;
setp.{cmp}.f32 g0, d0, 0f00000000;
setp.{cmp}.f32 g1, d1, 0f00000000;
selp.u32 k0, 1, 0, g0;
selp.u32 k1, 1, 0, g1;
shr.u32 v, pb, 16;
add.u32 v, v, k0;
add.u32 v, v, k1;
mul.lo.u32 $0, v, 0x10001;
}}"""


_THRESHOLD_PTX = [_threshold_ptx(*m) for m in E2M1_MIDPOINTS]

# Two bf16 (one word) -> one byte of two E2M1 codes against the thresholds V1..V7 ($2..$8 in the
# order V4, V2, V6, V1, V5, V3, V7): a binary search per half.  a = |x| | 0x8000 per half, so
# a - V (V <= 0x7f80) never borrows across halves and its bit 15 is set iff |x| >= V; prmt with
# the sign-replicating selector 0xBB99 spreads bits 15 / 31 over each half.  Code bits: b2 from
# V4, b1 from V2 or V6, b0 from V1, V3, V5 or V7; the sign is x's.
ENCODE_PAIR_THRESHOLDS = """{
.reg .b32 a, r, f2, f1, f0, s, x, y, t, u;
and.b32 a, $1, 0x7FFF7FFF;
or.b32 a, a, 0x80008000;
sub.s32 r, a, $2;
prmt.b32 f2, r, 0, 0xBB99;
xor.b32 s, $3, $4;
and.b32 s, s, f2;
xor.b32 s, s, $3;
sub.s32 r, a, s;
prmt.b32 f1, r, 0, 0xBB99;
xor.b32 x, $5, $6;
and.b32 x, x, f2;
xor.b32 x, x, $5;
xor.b32 y, $7, $8;
and.b32 y, y, f2;
xor.b32 y, y, $7;
xor.b32 s, x, y;
and.b32 s, s, f1;
xor.b32 s, s, x;
sub.s32 r, a, s;
prmt.b32 f0, r, 0, 0xBB99;
and.b32 t, f0, 0x00010001;
and.b32 u, f1, 0x00020002;
or.b32 t, t, u;
and.b32 u, f2, 0x00040004;
or.b32 t, t, u;
shr.b32 u, $1, 12;
and.b32 u, u, 0x00080008;
or.b32 t, t, u;
shr.b32 u, t, 12;
or.b32 t, t, u;
and.b32 $0, t, 0xFF;
}"""


def e2m1_thresholds(d):
    """V1..V7 of ``d`` (2^-100 <= d <= 2^100), each in both halves of an int32."""
    return [_asm(cutlass.Int32, ptx, "=r,f", cutlass.Float32(d)) for ptx in _THRESHOLD_PTX]


def _encode_pair_thresholds(word, v):
    return _asm(cutlass.Int32, ENCODE_PAIR_THRESHOLDS, "=r,r,r,r,r,r,r,r,r", cutlass.Int32(word),
                v[3], v[1], v[5], v[0], v[4], v[2], v[6])


def _sel(c, a, b):
    t = type(a) if isinstance(a, cutlass.Numeric) else type(b)
    return t(cutlass.select_(c, a, b))


def _encode_pair(word, d):
    return _asm(cutlass.Int32, _ENCODE_PAIR, "=r,r,f", cutlass.Int32(word), cutlass.Float32(d))


def _e4m3_code(s_bits):
    """c10's fp8e4m3fn_from_fp32_value for a non-negative float (bits), <= 448 or NaN: NaN -> 0x7f;
    below 2^-6 round to a multiple of 2^-9 by adding 2^14 (RNE); else round the mantissa to 3 bits
    (RNE by the +0x7ffff + odd trick)."""
    sub = _f2i(_add_rn(_i2f(s_bits), cutlass.Float32(16384.0))) - cutlass.Int32(141 << 23)
    nrm = (s_bits + cutlass.Int32(-(120 << 23) + 0x7FFFF) + ((s_bits >> 20) & 1)) >> 20
    code = _sel(s_bits < cutlass.Int32(121 << 23), sub, nrm)
    return _sel(s_bits > cutlass.Int32(0x7F800000), cutlass.Int32(0x7F), code & 0xFF)


def _e4m3_value(code):
    """The float value of an E4M3 code 0..0x7e (exact); 0x7f (NaN) is handled by the caller."""
    e = code >> 3
    m = code & 7
    normal = _i2f(((e + 120) << 23) | (m << 20))
    sub = _mul_rn(cutlass.Float32(m), cutlass.Float32(0.001953125))  # m * 2^-9, exact
    return _sel(e > 0, normal, sub)


@cute.jit
def block_amax(raw: cute.Tensor):
    """max |x| of a 16-element bf16 block (8 int32 words) as float bits (int order = float order
    for non-negative floats)."""
    return block_amax_words(raw, 8)


@cute.jit
def block_amax_words(raw: cute.Tensor, n: int):
    """:func:`block_amax` over the first ``n`` words of ``raw`` (part of a block)."""
    m = cutlass.Int32(0)
    for w in cutlass.range_constexpr(n):
        word = raw[w]
        m = cutlass.max(m, (word << 16) & 0x7FFFFFFF)
        m = cutlass.max(m, word & 0x7FFF0000)
    return m


def global_scale(amax_bits):
    """The dynamic global scale ``amax / (6 * 448)`` (div.rn, as PyTorch)."""
    return _div_rn(_i2f(amax_bits), cutlass.Float32(2688.0))


def _scale_code(bam, d6):
    """A block's E4M3 scale code: ``e4m3(min(amax / (6 g), 448))`` (``bam``: its max as float bits)."""
    s = _div_rn(_i2f(bam), d6)
    s = _sel(s == s, cute.arch.fmin(s, cutlass.Float32(448.0)), s)  # clamp(max=448), NaN kept
    return _e4m3_code(_f2i(s))


def _divisor(code, g_safe):
    """``(ok, d)`` of scale code ``code``: whether it gives codes at all (a zero or NaN divisor gives
    none) and the divisor ``e4m3(code) * g`` of its values (1 where not ok)."""
    denom = _mul_rn(_e4m3_value(code), g_safe)
    ok = (denom > cutlass.Float32(0.0)) & (code != 0x7F)
    return ok, _sel(ok, denom, cutlass.Float32(1.0))


@cute.jit
def quant_block(raw: cute.Tensor, bam, g_safe, d6, sThr, out: cute.Tensor, search: bool = False):
    """One 16-element block (``raw``: 8 bf16x2 words, ``bam``: its :func:`block_amax`) with global
    scale ``g_safe`` (``d6 = 6 g_safe``): its two words of E2M1 codes into ``out``; returns the
    E4M3 scale code.  ``sThr``: the thresholds from the table of :func:`build_threshold_table` (the
    same bits: the same divisor per scale code, the same tests), or None to compute them here.
    ``search`` (SM90+): the codes by :data:`ENCODE_PAIR_SEARCH` (the same bits)."""
    code = _scale_code(bam, d6)
    _encode_block(raw, code, g_safe, sThr, out, search, _pack_codes)
    return code


#: the per-CTA threshold table (large inputs): for every E4M3 scale code, 8 int32 words: V1..V7 of
#: its divisor d = e4m3(code) * g (:func:`e2m1_thresholds`), then flags (TABLE_OK: the code gives
#: codes at all, TABLE_THRESHOLDS: d is in the thresholds' range, else the division)
TABLE_CODES = 128
TABLE_WORDS = 8
TABLE_OK = 1
TABLE_THRESHOLDS = 2


@cute.jit
def build_threshold_table(sThr: cute.Tensor, g_safe, tidx):
    """Fill ``sThr`` (``TABLE_CODES x TABLE_WORDS`` int32, shared) for global scale ``g_safe``: with
    a calibrated scale a block's divisor takes one of 127 values, so its thresholds (~140
    instructions per block, the bulk of the quantizer's issue time at T=4096) are computed once per
    CTA instead of once per block.  Two threads per code (``THREADS`` = 2 x ``TABLE_CODES``); the
    caller synchronizes the CTA before reading."""
    code = tidx // 2
    ok, d = _divisor(code, g_safe)
    base = code * TABLE_WORDS
    if tidx % 2 == 0:
        for i in cutlass.range_constexpr(4):
            sThr[base + i] = _asm(cutlass.Int32, _THRESHOLD_PTX[i], "=r,f", d)
    else:
        for i in cutlass.range_constexpr(4, 7):
            sThr[base + i] = _asm(cutlass.Int32, _THRESHOLD_PTX[i], "=r,f", d)
        inr = (d >= cutlass.Float32(THRESHOLD_D_MIN)) & (d <= cutlass.Float32(THRESHOLD_D_MAX))
        sThr[base + 7] = _sel(ok, cutlass.Int32(TABLE_OK), cutlass.Int32(0)) | \
            _sel(inr, cutlass.Int32(TABLE_THRESHOLDS), cutlass.Int32(0))


@cute.jit
def _encode_block(raw, code, g_safe, sThr, out: cute.Tensor, search: bool, pack):
    """The codes of ``raw`` under scale code ``code`` packed by ``pack`` (:func:`_pack_codes`: a
    block into two words, :func:`_pack_half`: half a block into one): by comparisons against the
    block's thresholds (E2M1_MIDPOINTS: no division), computed here or, with ``sThr``, read from
    the table of :func:`build_threshold_table`; by division where the divisor is outside their range."""
    if cutlass.const_expr(sThr is None):
        ok, d = _divisor(code, g_safe)
        if (d >= cutlass.Float32(THRESHOLD_D_MIN)) & (d <= cutlass.Float32(THRESHOLD_D_MAX)):
            pack(raw, ok, out, _threshold_encoder(e2m1_thresholds(d), search))
        else:
            pack(raw, ok, out, lambda word: _encode_pair(word, d))
    else:
        v, ok, in_range = _table_row(sThr, code)
        if in_range:
            pack(raw, ok, out, _threshold_encoder([v[i] for i in range(7)], search))
        else:
            d = _sel(ok, _mul_rn(_e4m3_value(code), g_safe), cutlass.Float32(1.0))
            pack(raw, ok, out, lambda word: _encode_pair(word, d))


@cute.jit
def quant_half_block(raw: cute.Tensor, bam, g_safe, d6, sThr, out: cute.Tensor, search: bool = False):
    """Half of a 16-element block (``raw``: its 4 bf16x2 words, ``bam``: the whole block's max):
    its word of E2M1 codes into ``out[0]`` (the word :func:`quant_block` gives for that half, the
    same scale code and tests); ``sThr``: the table of :func:`build_threshold_table`, or None for
    the thresholds computed here.  Returns the scale code."""
    code = _scale_code(bam, d6)
    _encode_block(raw, code, g_safe, sThr, out, search, _pack_half)
    return code


def _pack_half(raw, ok, out, encode_pair):
    """:func:`_pack_codes` for one half: 4 bf16x2 words -> one word of codes in ``out[0]``."""
    out[0] = _pack_word([raw[j] for j in range(4)], ok, encode_pair)


def _pack_word(words, ok, encode_pair):
    """4 bf16x2 words -> one word of E2M1 codes (``encode_pair``: one word -> one byte), 0 unless
    ``ok``.  Unrolled at trace time."""
    w = cutlass.Int32(0)
    for j in range(4):
        w = w | (encode_pair(words[j]) << (8 * j))
    return _sel(ok, w, cutlass.Int32(0))


def _table_row(sThr: cute.Tensor, code):
    """Scale code ``code``'s row of the table of :func:`build_threshold_table`: ``(V1..V7 and the
    flags as registers, whether it gives codes at all, whether its thresholds apply)``."""
    v = cute.make_rmem_tensor(cute.make_layout(TABLE_WORDS), cutlass.Int32)
    cute.autovec_copy(cute.make_tensor(sThr.iterator + cute.assume(code * TABLE_WORDS, divby=TABLE_WORDS),
                                       cute.make_layout(TABLE_WORDS)), v)
    return v, (v[7] & TABLE_OK) != 0, (v[7] & TABLE_THRESHOLDS) != 0


def _threshold_encoder(v, search: bool):
    """word -> byte of two E2M1 codes against thresholds ``v`` (V1..V7): the integer binary search
    (any SM80+), or with ``search`` the bf16x2 compares' (SM90+; fewer instructions, the same codes)."""
    if search:
        sv = search_thresholds(v)
        return lambda word: _asm(cutlass.Int32, ENCODE_PAIR_SEARCH, "=r,r,r,r,r,r,r,r,r", cutlass.Int32(word), *sv)
    return lambda word: _encode_pair_thresholds(word, v)


def _pack_codes(raw, ok, out, encode_pair):
    """The block's 8 bf16x2 words -> its two words of E2M1 codes (``encode_pair``: one word -> one
    byte), all 0 unless ``ok``.  Unrolled at trace time."""
    for h in range(2):
        out[h] = _pack_word([raw[4 * h + j] for j in range(4)], ok, encode_pair)


# The fp16 decode of the tensor-core kernels (swap-AB, tile, staged; here as the quantizer's operand
# form too).  Pair a of a word: codes a (low half) and a+4 (high half).  Magnitude bits 0-2 of the nibble go to
# fp16 bits 9-11 (and 25-27), the sign bit to 15 (31); the sign is applied to the scale operand
# (lop3: (s & 0x80008000) ^ scale) so one mul.rn.f16x2 makes value * scale * 2^-14
_PAIR_SHIFT = (("shl.b32", 9, "shl.b32", 12), ("shl.b32", 5, "shl.b32", 8),
               ("shl.b32", 1, "shl.b32", 4), ("shr.b32", 3, None, 0))


def _dec_pair(w, s2, a: int):
    mop, msh, sop, ssh = _PAIR_SHIFT[a]
    sign = f"{sop} dS, $1, {ssh}; " if sop else "mov.b32 dS, $1; "
    ptx = ("{ .reg .b32 dM, dS, dK; "
           f"{mop} dM, $1, {msh}; and.b32 dM, dM, 0x0E000E00; "
           f"{sign}mov.b32 dK, 0x80008000; lop3.b32 dS, dS, dK, $2, 0x6A; "
           "mul.rn.f16x2 $0, dM, dS; }")
    return _asm(cutlass.Int32, ptx, "=r,r,r", cutlass.Int32(w), cutlass.Int32(s2))


def _scale2(byte_word):
    """fp16x2 (s, s) of the E4M3 scale in the low byte (sign ignored: block scales are >= 0):
    the 7 bits go to fp16 bits 7-13 of both halves (E4M3 value * 2^-8, subnormals too), times 2^8."""
    ptx = ("{ .reg .b32 dT, dK; and.b32 dT, $1, 0x7F; mul.lo.u32 dT, dT, 0x00800080; "
           "mov.b32 dK, 0x5C005C00; mul.rn.f16x2 $0, dT, dK; }")
    return _asm(cutlass.Int32, ptx, "=r,r", cutlass.Int32(byte_word))


# Quantize straight into the tensor-core kernels' fp16 operands (the swap-AB kernel quantizing its
# own tokens, calibrated scale, SM90+: ``set.u32.bf16x2``, ``max.u16x2``).  A pair word holds
# elements a and a+4 of an 8-element group (the operand's K-slot pairing, see
# :func:`_dec_pair`), picked from the bf16 words by one prmt.  Its magnitude code
# is the number of thresholds V1..V7 (:func:`e2m1_thresholds`, increasing) that |x| reaches, found
# by a binary search with three ``set.ge.u32.bf16x2`` (0xFFFF per half where |x| >= V) whose masks
# pick the next threshold per half (lop3 with V6 ^ V2 etc.) and land as the code's bits straight at
# fp16 bits 9-11: ``value * 2^-14``; one ``mul.rn.f16x2`` by the signed scale gives ``value * s *
# 2^-14``, the bits ``_dec_pair`` makes from the quantizer's code.  NaN passes no threshold (its
# block's scale is NaN, so the block gives zeros anyway).  14 instructions per pair with the |x|
# (the quantizer's encode takes ~30, then the decode 5).  Inputs: |x| pair, x pair, V4, V2, V6^V2,
# V1, V5^V1, V3, V7^V3, the fp16x2 scale, the sign mask.
_PAIR_SELECT = (0x5410, 0x7632)  # prmt: the low halves of two words, or their high halves

def _search_ptx(a: str, v0: int) -> str:
    """PTX: the masks f2, f1, f0 (0xFFFF per half where |x| >= the threshold the search reaches)
    of the bf16x2 magnitudes in register ``a`` against inputs ``$v0..`` = V4, V2, V6^V2, V1, V5^V1,
    V3, V7^V3 (:func:`search_thresholds`): a two-level pick of each half's next threshold by lop3."""
    v = [f"${v0 + i}" for i in range(7)]
    return f"""set.ge.u32.bf16x2 f2, {a}, {v[0]};
lop3.b32 t, f2, {v[2]}, {v[1]}, 0x6A;
set.ge.u32.bf16x2 f1, {a}, t;
lop3.b32 u, f2, {v[4]}, {v[3]}, 0x6A;
lop3.b32 w, f2, {v[6]}, {v[5]}, 0x6A;
xor.b32 w, w, u;
lop3.b32 t, f1, w, u, 0x6A;
set.ge.u32.bf16x2 f0, {a}, t;
"""


def _code_bits_ptx(bit: int) -> str:
    """PTX: the masks' code bits f0 | f1 << 1 | f2 << 2 at ``bit`` of each half, into f0."""
    m = (1 << bit) | (1 << (bit + 16))
    return f"""and.b32 f0, f0, {m:#010x};
mov.b32 k, {m << 1:#010x};
lop3.b32 f0, f1, k, f0, 0xE2;
mov.b32 k, {m << 2:#010x};
lop3.b32 f0, f2, k, f0, 0xE2;
"""


QUANT_PAIR_F16 = ("{\n.reg .b32 f2, f1, f0, t, u, w, k;\n" + _search_ptx("$1", 3) + _code_bits_ptx(9)
                  + "lop3.b32 t, $2, $11, $10, 0x6A;\nmul.rn.f16x2 $0, f0, t;\n}")

# The same search for the packed codes (the GEMV quantizing its own token, SM90+): two bf16 (one
# word) -> one byte of two E2M1 codes, as ENCODE_PAIR_THRESHOLDS gives (the code bits at bits 0-2
# of each half, the sign at 3, the halves' nibbles joined); inputs: the word, V4, V2, V6^V2, V1,
# V5^V1, V3, V7^V3.  18 instructions against ~32.
ENCODE_PAIR_SEARCH = ("{\n.reg .b32 a, f2, f1, f0, t, u, w, k;\nand.b32 a, $1, 0x7FFF7FFF;\n" + _search_ptx("a", 2)
                      + _code_bits_ptx(0) + "shr.b32 t, $1, 12;\nand.b32 t, t, 0x00080008;\nor.b32 f0, f0, t;\n"
                      "shr.b32 t, f0, 12;\nor.b32 f0, f0, t;\nand.b32 $0, f0, 0xFF;\n}")


def pair_word(w_lo, w_hi, a: int):
    """Elements ``a`` (low half) and ``a + 4`` (high half) of the 8-element group whose bf16 words
    are ``w_lo`` (elements 0-3: ``w[a // 2]``) and ``w_hi`` (elements 4-7)."""
    return _asm(cutlass.Int32, f"prmt.b32 $0, $1, $2, {_PAIR_SELECT[a % 2]:#x};", "=r,r,r", cutlass.Int32(w_lo),
                cutlass.Int32(w_hi))


def _max_u16x2(a, b):
    return _asm(cutlass.Int32, "max.u16x2 $0, $1, $2;", "=r,r,r", cutlass.Int32(a), cutlass.Int32(b))


def max_of_magnitudes(mags):
    """The largest of bf16x2 magnitude words (sign bits clear) as float bits, as :func:`block_amax`
    gives it (SM90+: ``max.u16x2``, one per word; unrolled at trace time)."""
    m = mags[0]
    for w in mags[1:]:
        m = _max_u16x2(m, w)
    return cutlass.max(m >> 16, m & 0xFFFF) << 16


def search_thresholds(v):
    """A block's thresholds V1..V7 as :data:`QUANT_PAIR_F16` takes them: V4, V2, V6^V2, V1, V5^V1,
    V3, V7^V3 (the xors let one lop3 pick either threshold of a level by a compare mask)."""
    return [v[3], v[1], v[5] ^ v[1], v[0], v[4] ^ v[0], v[2], v[6] ^ v[2]]


def quant_pair_f16(mag, word, sv, s2, sign_mask):
    """The fp16x2 operand of one pair word (``mag``: its |x|, ``word``: the signed one) with the
    block's :func:`search_thresholds` ``sv``, fp16x2 scale ``s2`` and ``sign_mask`` (0x80008000, or
    0 with ``s2 = 0`` where the block gives no codes)."""
    return _asm(cutlass.Int32, QUANT_PAIR_F16, "=r,r,r,r,r,r,r,r,r,r,r,r", cutlass.Int32(mag), cutlass.Int32(word),
                *sv, cutlass.Int32(s2), cutlass.Int32(sign_mask))


@cute.jit
def quant_block_f16(raw, g_safe, d6, sThr: cute.Tensor, ops: cute.Tensor):
    """One 16-element block (``raw``: its 8 bf16x2 words, a list) quantized as the activation quantizer
    does with the table of :func:`build_threshold_table` (the same codes and scale), straight into
    the 8 fp16x2 MMA operands of its two 8-element groups (``ops[4 h + a]``: pair ``a`` of group
    ``h``, the order of ``_dec_pair(code word h, scale, a)``); blocks whose divisor is outside the
    thresholds' range take their codes by division, then :func:`_dec_pair`.  Returns the E4M3 scale
    code."""
    pairs = [pair_word(raw[4 * h + a // 2], raw[4 * h + 2 + a // 2], a) for h in range(2) for a in range(4)]
    mags = [p & 0x7FFF7FFF for p in pairs]
    bam = max_of_magnitudes(mags)
    code = _scale_code(bam, d6)
    v, ok, in_range = _table_row(sThr, code)
    s2 = _scale2(code)
    if in_range:
        sv = search_thresholds([v[i] for i in range(7)])
        s2ok = _sel(ok, s2, cutlass.Int32(0))
        sign = _sel(ok, cutlass.Int32(-0x7FFF8000), cutlass.Int32(0))  # 0x80008000
        for i in cutlass.range_constexpr(8):
            ops[i] = quant_pair_f16(mags[i], pairs[i], sv, s2ok, sign)
    else:
        d = _sel(ok, _mul_rn(_e4m3_value(code), g_safe), cutlass.Float32(1.0))
        codes = cute.make_rmem_tensor(cute.make_layout(2), cutlass.Int32)
        _pack_codes(raw, ok, codes, lambda word: _encode_pair(word, d))
        for h in cutlass.range_constexpr(2):
            for a in cutlass.range_constexpr(4):
                ops[4 * h + a] = _dec_pair(codes[h], s2, a)
    return code


def safe_scales(g):
    """``(g_safe, 6 g_safe)``: a zero or negative global scale quantizes against 1 (every code 0)."""
    g_safe = _sel(g > cutlass.Float32(0.0), g, cutlass.Float32(1.0))
    return g_safe, _mul_rn(cutlass.Float32(6.0), g_safe)


class Nvfp4ActQuantKernel:
    """``dynamic``: compute the global scale on device (else read it from ``mG``);
    ``with_alpha``: also write ``mAlpha[0] = g * mGb[0]``; ``operands``: write each block as the 8
    fp16x2 MMA operands the swap-AB kernel decodes its codes into (:func:`_dec_pair`, ``[T, K/2]``
    int32 words, block b at words 8b..8b+7 in the order of :func:`quant_block_f16`) instead of its
    two code words (the scale codes are written either way)."""

    def __init__(self, dynamic: bool, with_alpha: bool = True, per_thread: int = PER_THREAD,
                 trigger: bool = False, replicate: int = 0, table: bool = False, barrier: str = BARRIER,
                 threads: int = THREADS, operands: bool = False):
        if barrier not in ("epoch", "slots", "atomic"):
            raise ValueError(f"barrier={barrier!r}: 'epoch', 'slots' or 'atomic'")
        if threads not in (64, 128, 256) or table and threads != 2 * TABLE_CODES:
            raise ValueError(f"threads={threads}: 64, 128 or 256 (the table: {2 * TABLE_CODES})")
        # threads per CTA: fewer spread a small input's blocks over more SMs (a thread quantizes one
        # block either way)
        self.threads = threads
        self.warps = threads // 32
        self.barrier = barrier
        if replicate and not dynamic:
            raise ValueError("replicate: the dynamic scale's max, computed by every CTA")
        self.dynamic = dynamic
        # dynamic: every CTA computes the whole input's max itself, no grid barrier (small inputs,
        # see REPLICATE_MAX_BLOCKS), ``replicate`` blocks of loads in flight per thread (0: off);
        # one block per thread
        self.replicate = replicate
        if replicate:
            per_thread = 1
        # SM90+: griddepcontrol.launch_dependents first thing, so a router launched after it as a
        # programmatic dependent (use_pdl) starts its weight loads while this kernel runs; its
        # griddepcontrol.wait still waits for this whole grid and its writes.  No effect on a
        # kernel launched without use_pdl.
        self.trigger = trigger
        self.with_alpha = with_alpha
        self.per_thread = per_thread
        # large inputs (more blocks than threads): the blocks' E2M1 thresholds from a per-CTA table
        # of the 127 scale codes (build_threshold_table) instead of computed per block
        self.table = table
        self.operands = operands
        self.smem_bytes = 4 * WARPS + 64 + (4 * TABLE_CODES * TABLE_WORDS + 16 if table else 0)

    @cute.jit
    def __call__(self, mX: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mG: cute.Tensor,
                 mGb: cute.Tensor, mAlpha: cute.Tensor, mWs: cute.Tensor, ctas: cutlass.Int32, stream):
        self.kernel(mX, mQ, mS, mG, mGb, mAlpha, mWs).launch(
            grid=[ctas, 1, 1], block=[self.threads, 1, 1], smem=self.smem_bytes, stream=stream)

    @cute.jit
    def _load_block(self, mX: cute.Tensor, b, dst: cute.Tensor):
        off = cute.assume(b * 8, divby=8)
        src = cute.make_tensor(mX.iterator + off, cute.make_layout(8))
        cute.autovec_copy(src, dst)

    @cute.jit
    def _quant_block(self, mQ: cute.Tensor, mS: cute.Tensor, b, raw: cute.Tensor, bam, g_safe, d6, sThr):
        out = cute.make_rmem_tensor(cute.make_layout(2), cutlass.Int32)
        code = quant_block(raw, bam, g_safe, d6, sThr if self.table else None, out)
        if cutlass.const_expr(self.operands):
            ops = cute.make_rmem_tensor(cute.make_layout(8), cutlass.Int32)
            s2 = _scale2(code)
            for h in cutlass.range_constexpr(2):
                for a in cutlass.range_constexpr(4):
                    ops[4 * h + a] = _dec_pair(out[h], s2, a)
            cute.autovec_copy(ops, cute.make_tensor(mQ.iterator + cute.assume(b * 8, divby=8), cute.make_layout(8)))
        else:
            dst = cute.make_tensor(mQ.iterator + cute.assume(b * 2, divby=2), cute.make_layout(2))
            cute.autovec_copy(out, dst)
        mS[b] = cutlass.Uint8(code)

    @cute.kernel
    def kernel(self, mX: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mG: cute.Tensor,
               mGb: cute.Tensor, mAlpha: cute.Tensor, mWs: cute.Tensor):
        if cutlass.const_expr(self.trigger):
            cute.arch.griddepcontrol_launch_dependents()
        self._quantize(mX, mQ, mS, mG, mGb, mAlpha, mWs)

    @cute.jit
    def _quantize(self, mX: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mG: cute.Tensor,
                  mGb: cute.Tensor, mAlpha: cute.Tensor, mWs: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        bx, _, _ = cute.arch.block_idx()
        nctas, _, _ = cute.arch.grid_dim()
        warp = tidx // 32
        lane = tidx % 32
        R = self.per_thread
        nb = mS.shape[0]
        stride = nctas * self.threads
        first = bx * self.threads + tidx

        smem = cutlass.utils.SmemAllocator()
        sRed = smem.allocate_tensor(cutlass.Int32, cute.make_layout(WARPS), 16)
        sG = smem.allocate_tensor(cutlass.Float32, cute.make_layout(4), 16)
        sThr = sG
        if cutlass.const_expr(self.table):
            sThr = smem.allocate_tensor(cutlass.Int32, cute.make_layout(TABLE_CODES * TABLE_WORDS), 16)

        # the epoch barrier's epoch: the previous launch's, read while the blocks load
        want = cutlass.Int32(0)
        if cutlass.const_expr(self.dynamic and not self.replicate and self.barrier == "epoch"):
            want = cute.arch.load((mWs.iterator + WS_EPOCH).llvm_ptr, cutlass.Int32, sem="relaxed", scope="gpu") + 1
        raw = cute.make_rmem_tensor(cute.make_layout((8, R), stride=(1, 8)), cutlass.Int32)
        raw.fill(0)
        bam = cute.make_rmem_tensor(cute.make_layout(R), cutlass.Int32)
        tmp = cute.make_rmem_tensor(cute.make_layout((8, 2), stride=(1, 8)), cutlass.Int32)
        # every register-held block's loads go out before any is used
        for i in cutlass.range_constexpr(R):
            b = first + i * stride
            if b < nb:
                self._load_block(mX, b, raw[None, i])
        amax = cutlass.Int32(0)
        for i in cutlass.range_constexpr(R):
            bam[i] = block_amax(raw[None, i])
            amax = cutlass.max(amax, bam[i])

        g = cutlass.Float32(0.0)
        if cutlass.const_expr(self.replicate):
            # the whole input's max in every CTA: `replicate` blocks of loads in flight
            rep = cute.make_rmem_tensor(cute.make_layout((8, self.replicate), stride=(1, 8)), cutlass.Int32)
            rep.fill(0)
            for b0 in range(tidx, nb, self.replicate * self.threads):
                for u in cutlass.range_constexpr(self.replicate):
                    if b0 + u * self.threads < nb:
                        self._load_block(mX, b0 + u * self.threads, rep[None, u])
                for u in cutlass.range_constexpr(self.replicate):
                    amax = cutlass.max(amax, _sel(b0 + u * self.threads < nb, block_amax(rep[None, u]),
                                                  cutlass.Int32(0)))
        if cutlass.const_expr(self.dynamic):
            # blocks beyond the registers: read once for the max now, again to quantize below
            for b in range(first + R * stride, nb, 2 * stride):
                # two blocks' loads in flight per thread
                self._load_block(mX, b, tmp[None, 0])
                if b + stride < nb:
                    self._load_block(mX, b + stride, tmp[None, 1])
                amax = cutlass.max(amax, block_amax(tmp[None, 0]))
                amax = cutlass.max(amax, _sel(b + stride < nb, block_amax(tmp[None, 1]), cutlass.Int32(0)))
            for sh in cutlass.range_constexpr(5):
                amax = cutlass.max(amax, cute.arch.shuffle_sync_bfly(amax, offset=16 >> sh))
            if lane == 0:
                sRed[warp] = amax
            cute.arch.sync_threads()
            if tidx == 0:
                m = sRed[0]
                for w in cutlass.range_constexpr(1, self.warps):
                    m = cutlass.max(m, sRed[w])
                if cutlass.const_expr(self.replicate):
                    gg = global_scale(m)
                    sG[0] = gg
                    if bx == 0:
                        mG[0] = gg
                elif nctas == 1:
                    gg = global_scale(m)
                    sG[0] = gg
                    mG[0] = gg
                elif cutlass.const_expr(self.barrier == "epoch"):
                    # this CTA's max and the epoch in one 64-bit store: the slot says itself whether
                    # it is this launch's, so no fence orders it before anything
                    slot = cute.recast_ptr(mWs.iterator + WS_EPOCH_SLOTS + 2 * bx, dtype=cutlass.Int64)
                    cute.arch.store(slot.llvm_ptr, (cutlass.Int64(want) << 32) | cutlass.Int64(m), sem="relaxed",
                                    scope="gpu")
                elif cutlass.const_expr(self.barrier == "slots"):
                    # this CTA's max in its slot, then arrive (release: the slot before the count);
                    # wait for this launch's arrivals (acquire: every slot after the count)
                    mWs[WS_SLOTS + bx] = m
                    inc = _sel(bx == 0, ARRIVE_UNIT - (nctas - 1), cutlass.Int32(1))
                    old = cute.arch.atomic_add((mWs.iterator + WS_ARRIVE).llvm_ptr, inc, sem="release", scope="gpu")
                    target = (old & -ARRIVE_UNIT) + ARRIVE_UNIT
                    cur = old + inc
                    while cur != target:
                        cur = cute.arch.load((mWs.iterator + WS_ARRIVE).llvm_ptr, cutlass.Int32, sem="acquire",
                                             scope="gpu")
                else:
                    # grid barrier: read the generation, publish the max, arrive (acq_rel orders
                    # the max before the count); the last to arrive computes g, resets the
                    # count and max for the next launch, then bumps the generation (release)
                    gen = cute.arch.load((mWs.iterator + WS_GEN).llvm_ptr, cutlass.Int32, sem="relaxed", scope="gpu")
                    cute.arch.atomic_max((mWs.iterator + WS_AMAX).llvm_ptr, m, sem="relaxed", scope="gpu")
                    old = cute.arch.atomic_add((mWs.iterator + WS_COUNT).llvm_ptr, cutlass.Int32(1),
                                               sem="acq_rel", scope="gpu")
                    if old == nctas - 1:
                        tot = cute.arch.load((mWs.iterator + WS_AMAX).llvm_ptr, cutlass.Int32, sem="relaxed", scope="gpu")
                        gg = global_scale(tot)
                        mG[0] = gg
                        sG[0] = gg
                        mWs[WS_AMAX] = cutlass.Int32(0)
                        mWs[WS_COUNT] = cutlass.Int32(0)
                        cute.arch.store((mWs.iterator + WS_GEN).llvm_ptr, gen + 1, sem="release", scope="gpu")
                    else:
                        cur = gen
                        while cur == gen:
                            cur = cute.arch.load((mWs.iterator + WS_GEN).llvm_ptr, cutlass.Int32,
                                                 sem="acquire", scope="gpu")
                        sG[0] = cute.arch.load((mG.iterator).llvm_ptr, cutlass.Float32, sem="relaxed", scope="gpu")
            cute.arch.sync_threads()
            g = sG[0]
            if cutlass.const_expr(self.barrier != "atomic" and not self.replicate):
                if nctas > 1:
                    # every CTA reads all slots (its threads a share each) and computes the same
                    # scale from the same max; the epoch barrier polls each slot until it carries
                    # this launch's epoch
                    ms = cutlass.Int32(0)
                    for i in range(tidx, nctas, self.threads):
                        if cutlass.const_expr(self.barrier == "epoch"):
                            sp = cute.recast_ptr(mWs.iterator + WS_EPOCH_SLOTS + 2 * i, dtype=cutlass.Int64)
                            v = cute.arch.load(sp.llvm_ptr, cutlass.Int64, sem="relaxed", scope="gpu")
                            while cutlass.Int32(v >> 32) != want:
                                v = cute.arch.load(sp.llvm_ptr, cutlass.Int64, sem="relaxed", scope="gpu")
                            ms = cutlass.max(ms, cutlass.Int32(v & 0x7FFFFFFF))
                        else:
                            ms = cutlass.max(ms, cute.arch.load((mWs.iterator + WS_SLOTS + i).llvm_ptr, cutlass.Int32,
                                                                sem="relaxed", scope="gpu"))
                    for sh in cutlass.range_constexpr(5):
                        ms = cutlass.max(ms, cute.arch.shuffle_sync_bfly(ms, offset=16 >> sh))
                    if lane == 0:
                        sRed[warp] = ms
                    cute.arch.sync_threads()
                    ms = sRed[0]
                    for w in cutlass.range_constexpr(1, self.warps):
                        ms = cutlass.max(ms, sRed[w])
                    g = global_scale(ms)
                    if bx == 0:
                        if tidx == 0:
                            mG[0] = g
                            if cutlass.const_expr(self.barrier == "epoch"):
                                # every CTA has stored its slot, so every CTA read the old epoch:
                                # the next launch (after this grid, in stream order) reads this one
                                mWs[WS_EPOCH] = want
        else:
            g = mG[0]
        if cutlass.const_expr(self.with_alpha):
            if bx == 0:
                if tidx == 0:
                    mAlpha[0] = _mul_rn(g, mGb[0])

        g_safe, d6 = safe_scales(g)
        if cutlass.const_expr(self.table):
            build_threshold_table(sThr, g_safe, tidx)
            cute.arch.sync_threads()
        for i in cutlass.range_constexpr(R):
            b = first + i * stride
            if b < nb:
                self._quant_block(mQ, mS, b, raw[None, i], bam[i], g_safe, d6, sThr)
        # the blocks beyond the registers, a pair per step; after the dynamic scale's pass over them,
        # last pair first: the blocks that pass read last are still in L2 (x of T=4096 at hidden
        # 7168 is 58.7 MB, more than the H200's 50 MB of L2: read in the same order, every block
        # would have been evicted before it is read again)
        b0 = first + R * stride
        if cutlass.const_expr(self.dynamic and not self.replicate):
            steps = cutlass.max((nb - b0 + 2 * stride - 1) // (2 * stride), 0)
            for j in range(steps):
                self._quant_pair(mX, mQ, mS, b0 + (steps - 1 - j) * 2 * stride, stride, nb, tmp, g_safe, d6, sThr)
        else:
            for b in range(b0, nb, 2 * stride):
                self._quant_pair(mX, mQ, mS, b, stride, nb, tmp, g_safe, d6, sThr)

    @cute.jit
    def _quant_pair(self, mX, mQ, mS, b, stride, nb, tmp, g_safe, d6, sThr):
        """Blocks ``b`` and ``b + stride`` (if any) loaded, then quantized: two blocks' loads in flight."""
        self._load_block(mX, b, tmp[None, 0])
        if b + stride < nb:
            self._load_block(mX, b + stride, tmp[None, 1])
        self._quant_block(mQ, mS, b, tmp[None, 0], block_amax(tmp[None, 0]), g_safe, d6, sThr)
        if b + stride < nb:
            self._quant_block(mQ, mS, b + stride, tmp[None, 1], block_amax(tmp[None, 1]), g_safe, d6, sThr)


@cute.jit
def _prefetch_l2(t: cute.Tensor, part, parts):
    """Part ``part`` of ``parts`` of tensor ``t``'s bytes (16-byte pieces; the tail under 16 bytes
    left out) into L2 with one ``cp.async.bulk.prefetch.L2`` (SM90+; a hint: nothing waits for it)."""
    nbytes = cute.size(t) * (t.element_type.width // 8)
    chunk = ((nbytes + parts - 1) // parts + 15) // 16 * 16
    start = part * chunk
    size = cutlass.min(chunk, (nbytes - start) // 16 * 16)
    if size > 0:
        addr = cutlass.Int64(t.iterator.toint()) + cutlass.Int64(start)
        llvm.inline_asm(None, [addr.ir_value(), cutlass.Int32(size).ir_value()],
                        "cp.async.bulk.prefetch.L2.global [$0], $1;", "l,r", has_side_effects=True)


class PrefetchingQuantKernel(Nvfp4ActQuantKernel):
    """The quantizer that also pulls the router's weights into L2 (SM90+): each CTA's thread 0
    prefetches its share of the two tensors ``mPa`` / ``mPb`` (the layer's packed weights and
    their scales) after letting the router start.  The router kernel after it needs a whole SM
    (one CTA per SM) or its share of the register file, so it cannot start its weight loads
    before the quantizer's CTAs leave; this moves them into the quantizer's time."""

    @cute.jit
    def __call__(self, mX: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mG: cute.Tensor,
                 mGb: cute.Tensor, mAlpha: cute.Tensor, mWs: cute.Tensor, mPa: cute.Tensor, mPb: cute.Tensor,
                 ctas: cutlass.Int32, stream):
        self.kernel(mX, mQ, mS, mG, mGb, mAlpha, mWs, mPa, mPb).launch(
            grid=[ctas, 1, 1], block=[self.threads, 1, 1], smem=self.smem_bytes, stream=stream)

    @cute.kernel
    def kernel(self, mX: cute.Tensor, mQ: cute.Tensor, mS: cute.Tensor, mG: cute.Tensor,
               mGb: cute.Tensor, mAlpha: cute.Tensor, mWs: cute.Tensor, mPa: cute.Tensor, mPb: cute.Tensor):
        if cutlass.const_expr(self.trigger):
            cute.arch.griddepcontrol_launch_dependents()
        tidx, _, _ = cute.arch.thread_idx()
        bx, _, _ = cute.arch.block_idx()
        nctas, _, _ = cute.arch.grid_dim()
        if tidx == 0:
            _prefetch_l2(mPa, bx, nctas)
            _prefetch_l2(mPb, bx, nctas)
        self._quantize(mX, mQ, mS, mG, mGb, mAlpha, mWs)


_compiled = {}
_WORKSPACES = {}


def workspace(device):
    """The zeroed 4-int barrier workspace of a device (the last CTA leaves it zeroed again)."""
    import torch

    key = str(device)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = torch.zeros(WS_WORDS, dtype=torch.int32, device=device)
    return _WORKSPACES[key]


def replicates(num_blocks: int, dynamic: bool = True) -> bool:
    """Whether the dynamic scale's max is computed by every CTA (no grid barrier): small inputs."""
    return dynamic and num_blocks <= REPLICATE_MAX_BLOCKS


def replica_inflight(num_blocks: int, threads: int = THREADS) -> int:
    """Blocks of loads in flight per thread for the replicated max: a thread's whole share of the
    input (rounded up to a power of two, at most 16) in one round trip."""
    n = 1
    while n < min(16, -(-num_blocks // threads)):
        n *= 2
    return n


def blocks_per_thread(num_blocks: int, sms: int, replicate: bool = False) -> int:
    """Blocks each thread holds in registers: one where one per thread fits the resident grid
    (``CTAS_PER_SM`` per SM; T <= 301 at hidden 7168 on 132 SMs: twice the CTAs of two per
    thread, so the quantizer's CTAs cover the SMs evenly), else ``PER_THREAD``."""
    if replicate or num_blocks <= CTAS_PER_SM * sms * THREADS:
        return 1
    return PER_THREAD


def grid_ctas(num_blocks: int, sms: int, per_thread: int = PER_THREAD, threads: int = THREADS) -> int:
    """CTAs for ``num_blocks`` 16-element blocks: enough to hold them all in registers, at most
    ``CTAS_PER_SM`` per SM (so every CTA is resident for the grid barrier)."""
    need = -(-num_blocks // (threads * per_thread))
    return max(1, min(need, CTAS_PER_SM * THREADS // threads * sms, MAX_CTAS))


def quant_args(x, data, scales, g, g_b, alpha, ctas: int):
    """CuTe arguments: bf16 ``x`` as int32 words (flat), packed codes as int32 words (flat),
    scales as bytes (flat), ``g`` / ``g_b`` / ``alpha`` 1-element float32."""
    import torch

    from .runtime import current_stream, to_cute

    dev = x.device
    return (
        to_cute(x.reshape(-1).view(torch.int32)),
        to_cute(data.reshape(-1).view(torch.int32)),
        to_cute(scales.reshape(-1)),
        to_cute(g.reshape(1)),
        to_cute(g_b.reshape(1)),
        to_cute(alpha.reshape(1)),
        to_cute(workspace(dev)),
        int(ctas),
        current_stream(dev),
    )


def compile_quant(dynamic: bool, args, trigger: bool = False, replicate: int = 0, per_thread: int = PER_THREAD,
                  table: bool = False, barrier: str = BARRIER, threads: int = THREADS, operands: bool = False,
                  prefetch: bool = False):
    key = (bool(dynamic), bool(trigger), int(replicate), per_thread, bool(table), barrier, threads, operands, prefetch)
    fn = _compiled.get(key)
    if fn is None:
        cls = PrefetchingQuantKernel if prefetch else Nvfp4ActQuantKernel
        fn = cute.compile(cls(dynamic, per_thread=per_thread, trigger=trigger, replicate=replicate,
                              table=table, barrier=barrier, threads=threads, operands=operands), *args)
        _compiled[key] = fn
    return fn


def with_prefetch(args, tensors):
    """:func:`quant_args` with ``tensors`` (flat bytes) where :class:`PrefetchingQuantKernel` takes
    them, after the workspace."""
    import torch

    from .runtime import to_cute

    return args[:7] + tuple(to_cute(t.reshape(-1).view(torch.uint8)) for t in tensors) + args[7:]


def fused_quant_problem(x) -> str | None:
    """Why the fused quantizer cannot take ``x`` (None when it can)."""
    import torch

    if x.device.type != "cuda":
        return "input not on CUDA"
    if x.dtype != torch.bfloat16:
        return f"input dtype {x.dtype} (the fused quantizer reads bf16)"
    if x.numel() == 0 or x.shape[-1] % 16:
        return "empty input or K not a multiple of 16"
    if x.numel() >= 2 ** 31:
        return "more than 2^31 elements (int32 word offsets)"
    if not x.is_contiguous() or x.data_ptr() % 16:
        return "input not contiguous and 16-byte aligned"
    return None


def pick_barrier(ctas: int) -> str:
    """The dynamic scale's grid barrier for a grid of ``ctas`` CTAs (see :data:`BARRIER`)."""
    return "epoch" if ctas <= EPOCH_MAX_CTAS else "slots"


def uses_table(num_blocks: int, ctas: int, per_thread: int, threads: int = THREADS) -> bool:
    """Whether the quantizer reads its blocks' thresholds from the per-CTA table: where threads
    quantize more blocks than they hold in registers (large inputs; at decode sizes every thread
    has one or two blocks and the table's build and barrier would sit on the critical path)."""
    return num_blocks > ctas * threads * per_thread


def quantize_activation_fused(x, global_scale=None, g_b=None, replicate=None, per_thread=None, table=None,
                              barrier=None, threads=None, operands=False, prefetch=None):
    """``(packed uint8 [T, K/2], scales uint8 [T, K/16], g_a float32 0-dim, alpha float32 [1])``
    from bf16 ``x [..., K]`` in one launch.  ``global_scale``: the layer's calibrated scale
    (a tensor on the device or a float), or None for the dynamic one (computed on the device).
    ``alpha = g_a * g_b`` when ``g_b`` is given, else ``g_a``'s copy.  ``replicate`` (dynamic
    scale; default :func:`replicates`): every CTA computes the max itself, one block per thread,
    else the CTAs meet at a grid barrier (or one CTA does it all); ``per_thread``: blocks held per
    thread (default :func:`blocks_per_thread`); ``table``: the thresholds from the per-CTA table
    (default :func:`uses_table`); ``barrier``: the dynamic scale's grid barrier (default
    :func:`pick_barrier`); ``operands``: the activation as the swap-AB kernel's fp16 MMA operands,
    int32 ``[T, K/2]`` in place of the packed codes (``Nvfp4ActQuantKernel``); ``prefetch``: tensors
    (the router's weights) the quantizer pulls into L2 while it runs (:class:`PrefetchingQuantKernel`,
    SM90+)."""
    launch, out = quant_launcher(x, global_scale, g_b, replicate, per_thread, table, barrier=barrier, threads=threads,
                                 operands=operands, prefetch=prefetch)
    launch()
    return out


def quant_launcher(x, global_scale=None, g_b=None, replicate=None, per_thread=None, table=None, trigger=None,
                   barrier=None, threads=None, operands=False, prefetch=None):
    """``(launch, (data, scales, g, alpha))``: the fused quantizer of ``x`` compiled with its
    arguments and output buffers made once; ``launch()`` runs it on the current stream, writing
    the same buffers each time (the probe times it before a router kernel reading them).  The
    arguments as in :func:`quantize_activation_fused`; ``trigger`` (default: SM90+): let a
    programmatic dependent start early."""
    import torch

    from .runtime import current_stream

    x2 = x.reshape(-1, x.shape[-1])
    t, k = x2.shape
    dev = x2.device
    data = (torch.empty((t, k // 2), dtype=torch.int32, device=dev) if operands
            else torch.empty((t, k // 2), dtype=torch.uint8, device=dev))
    scales = torch.empty((t, k // 16), dtype=torch.uint8, device=dev)
    dynamic = global_scale is None
    g = torch.empty((), dtype=torch.float32, device=dev) if dynamic else device_scalar(global_scale, dev)
    gb = device_scalar(g_b, dev, (1,)) if g_b is not None else _one(dev)
    alpha = torch.empty(1, dtype=torch.float32, device=dev)
    props = torch.cuda.get_device_properties(dev)
    nb = t * k // 16
    rep = dynamic and (replicates(nb) if replicate is None else bool(replicate))
    sms = props.multi_processor_count
    per = 1 if rep else per_thread or blocks_per_thread(nb, sms)
    th = threads or THREADS
    ctas = grid_ctas(nb, sms, per, th)
    table = uses_table(nb, ctas, per, th) if table is None else table
    args = quant_args(x2, data, scales, g, gb, alpha, ctas)
    if prefetch:
        args = with_prefetch(args, prefetch)
    fn = compile_quant(dynamic, args, trigger=props.major >= 9 if trigger is None else trigger,
                       replicate=replica_inflight(nb, th) if rep else 0, per_thread=per, table=table,
                       barrier=barrier or pick_barrier(ctas),
                       threads=th, operands=operands, prefetch=bool(prefetch))
    return (lambda: fn(*args[:-1], current_stream(dev))), (data, scales, g, alpha)


_ONES = {}


def device_scalar(value, dev, shape=()):
    """``value`` (a tensor or a float) as float32 of ``shape`` on ``dev``, 16-byte aligned: the
    CuTe tensors are made with that alignment assumption, so a scalar that is a view is copied."""
    import torch

    t = (value.detach().to(dev, torch.float32) if isinstance(value, torch.Tensor)
         else torch.tensor(float(value), dtype=torch.float32, device=dev)).reshape(shape)
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _one(dev):
    import torch

    key = str(dev)
    if key not in _ONES:
        _ONES[key] = torch.ones(1, dtype=torch.float32, device=dev)
    return _ONES[key]
