"""Pieces of the decode kernels checked on the CPU: the ``prmt``/``dp4a`` dot product as the PTX
text the GEMV kernel ships (run by a small interpreter of the instructions it uses), the polling
sentinel and its workspace, the launch-configuration rules, the tile kernel's stream-K ranges, and
the staged kernel's decode-piece assignment and shared-memory layout."""

import importlib.util
import random
import re
import struct

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (run kernels/install-cpu-torch.sh)")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None,
                                reason="nvidia-cutlass-dsl is not installed (the kernels' module imports it)")

from kernels.nvfp4.format import e2m1_lut  # noqa: E402

M32 = 0xFFFFFFFF


def _bytes(x):
    return [(x >> (8 * i)) & 0xFF for i in range(4)]


def _prmt(a, b, c):
    """PTX prmt.b32 (default mode): selector nibble i picks byte (bits 0-2) of {b:a}; bit 3 replicates
    the picked byte's sign bit."""
    src = _bytes(a) + _bytes(b)
    out = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 0xF
        v = src[sel & 7]
        if sel & 8:
            v = 0xFF if v & 0x80 else 0
        out |= v << (8 * i)
    return out


def _s8(v):
    return v - 256 if v & 0x80 else v


def _dp4a_ss(a, b, c):
    c = c - (1 << 32) if c & 0x80000000 else c
    r = c + sum(_s8(x) * _s8(y) for x, y in zip(_bytes(a), _bytes(b)))
    return r & M32


def _f32_value(bits):
    """The exact value of float32 bits (finite) as a Fraction."""
    from fractions import Fraction

    sign = -1 if bits >> 31 else 1
    e = (bits >> 23) & 0xFF
    m = bits & 0x7FFFFF
    if e == 0xFF:
        raise AssertionError("inf/NaN not modelled")
    return sign * (Fraction(m, 1 << 23) * Fraction(2) ** -126 if e == 0 else
                   Fraction(m | 0x800000, 1 << 23) * Fraction(2) ** (e - 127))


def _f32_round(v):
    """A Fraction rounded to float32 (round to nearest even, subnormals kept) -> bits."""
    from fractions import Fraction

    if v == 0:
        return 0
    sign = 0x80000000 if v < 0 else 0
    v = abs(v)
    e = max(v.numerator.bit_length() - v.denominator.bit_length() - 1, -150)
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    q = max(e, -126) - 23  # the ulp's exponent
    n = v / Fraction(2) ** q
    r = n.numerator // n.denominator
    rem = n - r
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and r & 1):
        r += 1
    if r >= 1 << 24:
        r >>= 1
        q += 1
    if q + 23 > 127:
        return sign | 0x7F800000
    if r < 1 << 23:  # subnormal
        return sign | r
    return sign | ((q + 23 + 127) << 23) | (r & 0x7FFFFF)


def _fop(fn):
    return lambda *a: _f32_round(fn(*[_f32_value(x) for x in a]))


# 16-bit halves: bf16 (8 exponent bits, 7 mantissa bits) and fp16 (5, 10), finite values only
_HALF = {"bf16": (8, 7), "f16": (5, 10)}


def _half_value(bits, kind):
    from fractions import Fraction

    eb, mb = _HALF[kind]
    bias = (1 << (eb - 1)) - 1
    e = (bits >> mb) & ((1 << eb) - 1)
    m = bits & ((1 << mb) - 1)
    if e == (1 << eb) - 1:
        raise AssertionError("inf/NaN not modelled")
    sign = -1 if bits & 0x8000 else 1
    return sign * (Fraction(m, 1 << mb) * Fraction(2) ** (1 - bias) if e == 0 else
                   Fraction(m | (1 << mb), 1 << mb) * Fraction(2) ** (e - bias))


def _half_round(v, kind):
    """A Fraction rounded to nearest even in ``kind`` (subnormals kept, overflow to inf) -> bits."""
    from fractions import Fraction

    eb, mb = _HALF[kind]
    bias = (1 << (eb - 1)) - 1
    sign = 0x8000 if v < 0 else 0
    v = abs(v)
    if v == 0:
        return sign
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    q = max(e, 1 - bias) - mb  # the ulp's exponent
    n = v / Fraction(2) ** q
    r = n.numerator // n.denominator
    rem = n - r
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and r & 1):
        r += 1
    if r >= 1 << (mb + 1):
        r >>= 1
        q += 1
    if q + mb > bias:
        return sign | (((1 << eb) - 1) << mb)
    if r < 1 << mb:
        return sign | r
    return sign | ((q + mb + bias) << mb) | (r & ((1 << mb) - 1))


def _halves(fn):
    """A packed 16x2 operation from one on halves (low half: bits 0-15)."""
    return lambda *a: fn(*[x & 0xFFFF for x in a]) | (fn(*[x >> 16 for x in a]) << 16)


def _set_ge_bf16(a, b):
    return 0xFFFF if _half_value(a, "bf16") >= _half_value(b, "bf16") else 0


def _mul_f16(a, b):
    """fp16 multiply, round to nearest even; a zero product carries the xor of the signs (IEEE)."""
    v = _half_value(a, "f16") * _half_value(b, "f16")
    return _half_round(v, "f16") if v else (a ^ b) & 0x8000


def _lop3(a, b, c, lut):
    return sum(((lut >> (((a >> i & 1) << 2) | ((b >> i & 1) << 1) | (c >> i & 1))) & 1) << i for i in range(32))


OPS = {
    "mov.b32": lambda a: a,
    "and.b32": lambda a, b: a & b,
    "or.b32": lambda a, b: a | b,
    "xor.b32": lambda a, b: a ^ b,
    "shl.b32": lambda a, b: (a << b) & M32,
    "shr.b32": lambda a, b: a >> b,  # .b32: logical
    "shr.u32": lambda a, b: a >> b,
    "add.s32": lambda a, b: (a + b) & M32,
    "add.u32": lambda a, b: (a + b) & M32,
    "sub.s32": lambda a, b: (a - b) & M32,
    "mul.lo.u32": lambda a, b: (a * b) & M32,
    "selp.u32": lambda a, b, p: a if p else b,
    "setp.ge.f32": lambda a, b: int(_f32_value(a) >= _f32_value(b)),
    "setp.gt.f32": lambda a, b: int(_f32_value(a) > _f32_value(b)),
    "mul.rn.f32": _fop(lambda a, b: a * b),
    "add.rn.f32": _fop(lambda a, b: a + b),
    "sub.rn.f32": _fop(lambda a, b: a - b),
    "fma.rn.f32": _fop(lambda a, b, c: a * b + c),
    "neg.f32": lambda a: a ^ 0x80000000,
    "prmt.b32": _prmt,
    "dp4a.s32.s32": _dp4a_ss,
    "lop3.b32": _lop3,
    "max.u16x2": _halves(max),
    "set.ge.u32.bf16x2": _halves(_set_ge_bf16),
    "mul.rn.f16x2": _halves(_mul_f16),
}


def run_ptx(text, *args):
    """Run an inline-asm block: ``$0`` is the output, ``$1``... the inputs."""
    regs = {f"${i + 1}": v & M32 for i, v in enumerate(args)}
    body = text.strip().strip("{}")
    for stmt in (s.strip() for s in body.split(";")):
        if not stmt or stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        dst, *srcs = [o.strip() for o in rest.split(",")]
        if op not in OPS:
            raise AssertionError(f"instruction {op!r} is not modelled: extend the interpreter")
        vals = [int(s[2:], 16) if re.fullmatch(r"0f[0-9a-fA-F]{8}", s) else
                int(s, 0) if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", s) else regs[s] for s in srcs]
        regs[dst] = OPS[op](*vals) & M32
    return regs["$0"]


def _code_dot(w, a):
    lut = [float(v) for v in e2m1_lut(dtype=torch.float32)]
    return sum(lut[(w >> (4 * j)) & 15] * lut[(a >> (4 * j)) & 15] for j in range(8))


def test_dot8_ptx_is_four_times_the_code_value_dot_product():
    from kernels.router.gemv import _DOT8

    rng = random.Random(0)
    words = [0, M32, 0x88888888, 0x77777777, 0xF0F0F0F0, 0x12345678] + [rng.getrandbits(32) for _ in range(3000)]
    for w in words:
        for a in words[:6] + [rng.getrandbits(32) for _ in range(3)]:
            got = run_ptx(_DOT8, w, a, 0)
            got = got - (1 << 32) if got & 0x80000000 else got
            assert got == 4 * _code_dot(w, a), (hex(w), hex(a))


def test_dot8_ptx_accumulates_and_covers_every_code_pair():
    from kernels.router.gemv import _DOT8

    # every (weight code, activation code) pair in every one of the 8 positions, with a carry-in
    for pos in range(8):
        for cw in range(16):
            for ca in range(16):
                w = cw << (4 * pos)
                a = ca << (4 * pos)
                got = run_ptx(_DOT8, w, a, 1000)
                assert got == 1000 + 4 * _code_dot(w, a), (pos, cw, ca)


def test_sentinel_is_a_nan_no_arithmetic_makes():
    from kernels.router.gemv import SENTINEL

    bits = SENTINEL & M32
    assert bits == 0xFFFFFFFF
    f = struct.unpack("<f", struct.pack("<I", bits))[0]
    assert f != f  # a NaN: a logit never compares equal to it by value
    assert bits != 0x7FFFFFFF  # NVIDIA's canonical NaN, which a kernel stores in its place


def test_polled_workspace_is_sentinel_filled_and_kept_per_shape():
    from kernels.router.gemv import SENTINEL
    from kernels.router.runtime import polled_workspace

    w = polled_workspace("cpu", (2, 3, 64))
    assert w.dtype == torch.float32 and w.shape == (2, 3, 64)
    assert bool((w.view(torch.int32) == SENTINEL).all())
    assert polled_workspace("cpu", (2, 3, 64)) is w  # one buffer per shape: graphs replay it
    assert polled_workspace("cpu", (1, 3, 64)) is not w


def test_launch_rules():
    from kernels.router.gemv import pick_gemv, pick_mma_gemv, swapab_polls, swapab_route, swapab_unit_words

    assert pick_gemv(1, 256) == (1, 1) and pick_gemv(1, 384) == (1, 1)  # one expert per CTA at T=1
    assert pick_gemv(7, 256) == (8, 2)
    # swap-AB: no K split once token groups x expert blocks fill the SMs (128 CTAs); past one CTA
    # per SM, 48-expert tiles with 2 K splits where that grid fits one wave (T=128, E=384)
    # (the K unit: 128-wide steps where they split evenly over the K-split warps, else 64-wide)
    # (n-tiles, K splits, expert blocks, K unit, warps, route spread, split pair): a grid of one CTA
    # per SM takes more warps, the polled route over 4 CTAs per n-tile and, from SM90 and not after
    # the quantizer (PDL), its 2 K splits as cluster pairs; two CTAs per SM (T=7) and grids past
    # one wave keep 8 warps
    assert pick_mma_gemv(128, 256, 7168) == (2, 1, 1, 4, 16, 4, False)
    assert pick_mma_gemv(128, 384, 7168) == (2, 2, 3, 2, 12, 4, True)
    assert pick_mma_gemv(128, 384, 7168, sm=80) == (2, 2, 3, 2, 12, 1, False)  # no clusters: the waiting route
    assert pick_mma_gemv(100, 384, 7168).pair  # ragged token groups: the same grid
    assert pick_mma_gemv(128, 384, 7168, sms=48) == (2, 2, 3, 2, 8, 1, False)  # GB10: 128 CTAs are not one wave
    assert pick_mma_gemv(128, 256, 7168, sms=120).warps == 8
    assert pick_mma_gemv(512, 384, 7168) == (2, 1, 1, 4, 8, 1, False)  # 48-expert tiles would not fit one wave
    assert pick_mma_gemv(128, 320, 7168) == (2, 1, 1, 4, 8, 1, False)  # 320 is no multiple of 48: 160 CTAs
    assert pick_mma_gemv(7, 256, 7168) == (1, 7, 1, 4, 8, 1, False)
    c = pick_mma_gemv(32, 256, 7168)
    assert c.nt == 2 and 1 < c.ksplit <= 7 and c.mw == 1 and c.uw in (2, 4) and c.warps == 8
    assert [swapab_route(ks) for ks in (1, 2, 3, 4, 7)] == ["poll", "wait", "wait", "count", "count"]
    assert swapab_polls(1) and not swapab_polls(2) and swapab_polls(7, "poll") and not swapab_polls(1, "wait")
    assert swapab_route(1, "narrow+count") == "count"
    # the slowest warp's decode: 56 steps over 16 warps = 4 (3.5 on average) against 7 half-steps
    assert swapab_unit_words(7168, 1) == 4 and swapab_unit_words(7168, 2) == 2 and swapab_unit_words(7168, 7) == 4


def test_gemv_quantizing_forms_pick_one_wave_of_ctas():
    # the GEMV's own quantization: "" keeps pick_gemv's configuration; the 512 / 1024-thread forms
    # (calibrated scale) take the fewest experts per CTA that keep the grid within one wave, the
    # per-CTA threshold table, and from SM90 the bf16x2-compare search; the dynamic scale has only ""
    from kernels.router.gemv import GEMV_QUANT_FORMS, pick_gemv, pick_gemv_quant

    assert GEMV_QUANT_FORMS == ("", "halves", "quarters")
    assert pick_gemv_quant(1, 256, "", True, 9, 132) == (pick_gemv(1, 256), "")
    assert pick_gemv_quant(1, 256, "quarters", True, 9, 132) == ((1, 2), "quarters+table+search")
    assert pick_gemv_quant(1, 384, "halves", True, 9, 132) == ((1, 3), "halves+table+search")
    assert pick_gemv_quant(1, 384, "halves", True, 12, 170) == ((1, 3), "halves+table+search")  # RTX 5090
    assert pick_gemv_quant(1, 256, "halves", True, 12, 256) == ((1, 1), "halves+table+search")
    assert pick_gemv_quant(1, 256, "quarters", True, 8, 108) == ((1, 4), "quarters+table")  # A100: no search
    assert pick_gemv_quant(1, 384, "quarters", True, 12, 48) == ((1, 8), "quarters+table+search")  # GB10
    assert pick_gemv_quant(5, 384, "halves", True, 9, 132) == ((8, 3), "halves+table+search")
    assert pick_gemv_quant(1, 256, "quarters", False, 9, 132) == (pick_gemv(1, 256), "")
    assert pick_gemv_quant(1, 2048, "halves", True, 9, 132)[0] == (1, 16)
    assert pick_gemv_quant(1, 2048, "halves", True, 9, 4)[0] == (1, 256)  # no one wave: the most experts a CTA takes
    with pytest.raises(ValueError, match="thirds"):
        pick_gemv_quant(1, 256, "thirds", True, 9, 132)


def test_quantizer_threshold_ptx_gives_the_division_codes():
    # the fused quantizer's division-free E2M1 codes, the PTX text it ships run by the interpreter
    # (float ops rounded exactly): per-block thresholds V1..V7 from d, then the binary search per
    # bf16 pair, against the codes of div.rn(x, d) (fp32 rounded exactly) and the 7 thresholds;
    # the same for the SM90+ search by bf16x2 compares (the GEMV's probe variant "search")
    from fractions import Fraction

    from kernels.router.quant import (_THRESHOLD_PTX, ENCODE_PAIR_SEARCH, ENCODE_PAIR_THRESHOLDS, THRESHOLD_D_MAX,
                                      THRESHOLD_D_MIN, search_thresholds)

    def div_code(xbits16, dbits):
        yb = _f32_round(_f32_value((xbits16 & 0x7FFF) << 16) / _f32_value(dbits))
        if yb == 0x7F800000:  # the quotient overflows: every threshold passed
            return 7 | (8 if xbits16 & 0x8000 else 0)
        a = _f32_value(yb)
        m = sum(int(a > t if gt else a >= t) for t, gt in
                ((Fraction(1, 4), 1), (Fraction(3, 4), 0), (Fraction(5, 4), 1), (Fraction(7, 4), 0),
                 (Fraction(5, 2), 1), (Fraction(7, 2), 0), (Fraction(5), 1)))
        return m | (8 if xbits16 & 0x8000 else 0)

    rnd = random.Random(5)
    dmin = struct.unpack("<I", struct.pack("<f", THRESHOLD_D_MIN))[0]
    dmax = struct.unpack("<I", struct.pack("<f", THRESHOLD_D_MAX))[0]
    ds = [rnd.randrange(dmin, dmax) for _ in range(12)] + [0x3F800000, dmin, dmax]
    # d that puts t * d on a bf16 value, and its float neighbours
    for t in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        b = rnd.randrange(0x3000, 0x5000) << 16
        q = struct.unpack("<I", struct.pack("<f", struct.unpack("<f", struct.pack("<I", b))[0] / t))[0]
        ds += [q - 1, q, q + 1]
    checked = 0
    for d in ds:
        v = [run_ptx(ptx, d) for ptx in _THRESHOLD_PTX]
        assert all(x & 0xFFFF == x >> 16 for x in v) and v == sorted(v)
        # every threshold's neighbours, and random values, in both halves and with either sign
        xs = [(x & 0xFFFF) + k for x in v for k in (-1, 0, 1)] + [rnd.randrange(0, 0x7F80) for _ in range(20)]
        for i in range(0, len(xs) - 1, 2):
            lo = xs[i] | (0x8000 if rnd.random() < 0.5 else 0)
            hi = xs[i + 1] | (0x8000 if rnd.random() < 0.5 else 0)
            got = run_ptx(ENCODE_PAIR_THRESHOLDS, lo | (hi << 16), v[3], v[1], v[5], v[0], v[4], v[2], v[6])
            assert got == div_code(lo, d) | (div_code(hi, d) << 4), (hex(d), hex(lo), hex(hi), hex(got))
            assert run_ptx(ENCODE_PAIR_SEARCH, lo | (hi << 16), *search_thresholds(v)) == got
            checked += 1
    assert checked > 500


def test_quantizing_into_fp16_operands_ptx_is_the_decoded_codes():
    # the swap-AB kernel quantizing its own tokens: each fp16 operand (elements a and a+4 of an
    # 8-element group, picked by prmt) made by QUANT_PAIR_F16 from the block's thresholds (binary
    # search) and scale, against the fused quantizer's codes for the same elements (ENCODE_PAIR_THRESHOLDS)
    # decoded as the kernel decodes them (_dec_pair with _scale2): the PTX texts the kernels ship,
    # run by the interpreter; and the block max by max.u16x2
    from kernels.router.quant import (_PAIR_SELECT, _PAIR_SHIFT, _THRESHOLD_PTX, ENCODE_PAIR_THRESHOLDS, QUANT_PAIR_F16,
                                      search_thresholds)

    def dec_pair_ptx(a):  # kernels.router.quant._dec_pair's text for pair a
        mop, msh, sop, ssh = _PAIR_SHIFT[a]
        sign = f"{sop} dS, $1, {ssh}; " if sop else "mov.b32 dS, $1; "
        return (f"{{ .reg .b32 dM, dS, dK; {mop} dM, $1, {msh}; and.b32 dM, dM, 0x0E000E00; "
                f"{sign}mov.b32 dK, 0x80008000; lop3.b32 dS, dS, dK, $2, 0x6A; mul.rn.f16x2 $0, dM, dS; }}")

    scale2 = ("{ .reg .b32 dT, dK; and.b32 dT, $1, 0x7F; mul.lo.u32 dT, dT, 0x00800080; "
              "mov.b32 dK, 0x5C005C00; mul.rn.f16x2 $0, dT, dK; }")
    rnd = random.Random(9)
    checked = 0
    for _ in range(40):
        code = rnd.randrange(1, 0x7F)
        d = struct.unpack("<I", struct.pack("<f", rnd.uniform(1e-3, 1e3)))[0]
        v = [run_ptx(ptx, d) for ptx in _THRESHOLD_PTX]
        sv = search_thresholds(v)
        s2 = run_ptx(scale2, code)
        # elements around the thresholds and random ones, either sign: 8 bf16 words (16 elements)
        els = [((x & 0xFFFF) + rnd.choice((-1, 0, 1))) | rnd.choice((0, 0x8000)) for x in v]
        els += [rnd.randrange(0, 0x7F80) | rnd.choice((0, 0x8000)) for _ in range(16 - len(els))]
        rnd.shuffle(els)
        words = [els[2 * i] | (els[2 * i + 1] << 16) for i in range(8)]
        mx = words[0] & 0x7FFF7FFF
        for w in words[1:]:
            mx = run_ptx("max.u16x2 $0, $1, $2;", mx, w & 0x7FFF7FFF)
        assert max(mx & 0xFFFF, mx >> 16) == max(e & 0x7FFF for e in els)
        for h in range(2):  # the block's two 8-element groups, each one code word
            enc = [run_ptx(ENCODE_PAIR_THRESHOLDS, words[4 * h + j], v[3], v[1], v[5], v[0], v[4], v[2], v[6])
                   for j in range(4)]
            codes = enc[0] | (enc[1] << 8) | (enc[2] << 16) | (enc[3] << 24)
            for a in range(4):
                p = run_ptx(f"prmt.b32 $0, $1, $2, {_PAIR_SELECT[a % 2]:#x};", words[4 * h + a // 2],
                            words[4 * h + 2 + a // 2])
                got = run_ptx(QUANT_PAIR_F16, p & 0x7FFF7FFF, p, *sv, s2, 0x80008000)
                assert got == run_ptx(dec_pair_ptx(a), codes, s2), (hex(d), code, h, a)
                # a block without codes (zero or NaN divisor): +0 operands
                assert run_ptx(QUANT_PAIR_F16, p & 0x7FFF7FFF, p, *sv, 0, 0) == 0
                checked += 1
    assert checked == 40 * 8


def test_pdl_after_the_quantizer_where_it_measured_faster():
    # the router's kernel is the fused quantizer's programmatic dependent except the swap-AB
    # kernel's polled route (measured slower so on the H200); GPUREPRO_ROUTER_PDL=0 turns it off
    import types

    from kernels.router.launch import pdl_helps
    from kernels.router.runtime import pdl_available

    def lay(e, k=7168):
        return types.SimpleNamespace(out_features=e, in_features=k)

    assert pdl_helps("gemv", 1, lay(384)) and pdl_helps("tile", 4096, lay(256))
    assert pdl_helps("swapab", 7, lay(256))  # counted
    # the one-CTA-per-SM forms (2026-12-04): 16 warps polled, cluster pairs
    assert pdl_helps("swapab", 128, lay(256)) and pdl_helps("swapab", 128, lay(384))
    assert not pdl_helps("swapab", 130, lay(256, 2048))  # polled, 8 warps, two CTAs per SM
    assert not pdl_helps("staged", 128, lay(256)) and not pdl_helps("mma", 128, lay(256))
    assert not pdl_available("cpu")


@pytest.mark.parametrize("t,e,ctas", [(4096, 384, 264), (8192, 384, 264), (4096, 256, 170), (1000, 384, 132)])
def test_stream_k_ranges_cover_every_unit_once(t, e, ctas):
    # the stream-K tile grid: CTA c takes units [c U / N, (c+1) U / N) of the tile-major, K-inner
    # order; each piece inside one tile lands in that tile's slot c - first(tile), and the route
    # kernel sums stream_k_count(tile) slots: so every (tile, k-tile) is summed exactly once and in
    # K order
    from kernels.router.tile import BK, BM, BN, pick_tile_grid, stream_k_count, stream_k_first, stream_k_slots

    k_tiles = 7168 // BK
    tiles = -(-t // BM) * (e // BN)
    units = tiles * k_tiles
    seen = {}
    for c in range(ctas):
        u, end = c * units // ctas, (c + 1) * units // ctas
        while u < end:  # the kernel's segment loop
            tile = u // k_tiles
            seg_end = min(end, (tile + 1) * k_tiles)
            slot = c - stream_k_first(tile, k_tiles, units, ctas)
            seen.setdefault(tile, []).append((slot, u - tile * k_tiles, seg_end - u))
            u = seg_end
    assert sorted(seen) == list(range(tiles))
    slots = stream_k_slots(tiles, k_tiles, ctas)
    for tile, segs in seen.items():
        assert [s for s, _, _ in segs] == list(range(len(segs)))  # slots 0, 1, ... in K order
        assert len(segs) == stream_k_count(tile, k_tiles, units, ctas) <= slots
        k = 0
        for _, k0, n in segs:
            assert k0 == k and n > 0
            k += n
        assert k == k_tiles
    if (t, e, ctas) == (4096, 384, 264):
        assert slots == 4 and pick_tile_grid(t, e, 7168, ctas) == ("stream_k", 264, 4)
        assert pick_tile_grid(t, 256, 7168, ctas)[0] == "split"  # 256 CTAs already fit one wave


def _phases_conflict_free(word_offsets):
    """16-byte accesses of a warp (32 word offsets): each 8-lane phase touches 8 different
    16-byte bank groups (no shared-memory bank conflict)."""
    return all(len({(o // 4) % 8 for o in word_offsets[p:p + 8]}) == 8 for p in range(0, 32, 8))


@pytest.mark.parametrize("em,tn", [(64, 32), (32, 32), (64, 16), (128, 32), (64, 64)])
def test_staged_pieces_cover_every_unit_once_without_bank_conflicts(em, tn):
    from kernels.router.gemv import THREADS, WARPS
    from kernels.router.staged import StagedRouterKernel, chunk_offset, staged_layout

    k = StagedRouterKernel(6, "softmax", False, 384, em, tn, ksplit=3)
    wm, wn, parts = staged_layout(em, tn)
    assert (k.wm, k.wn, k.parts) == (wm, wn, parts)
    # the warps' 16 wm x 8 wn blocks tile the CTA's em x tn exactly
    warps_m = em // (16 * wm)
    blocks = {((w % warps_m) * 16 * wm, (w // warps_m) * 8 * wn) for w in range(WARPS)}
    assert len(blocks) == WARPS and warps_m * 16 * wm == em and (WARPS // warps_m) * 8 * wn == tn
    # the kernel's piece -> (unit, code words): every word of every unit decoded once, weight
    # pieces exactly the first weight_parts of each thread
    seen = []
    for i in range(k.per_thread):
        for t in range(THREADS):
            p = t + THREADS * i
            unit, w0 = p // parts, (p % parts) * k.words
            assert (unit < 4 * em) == (i < k.weight_parts)
            seen += [(unit, w0 + wl) for wl in range(k.words)]
    assert sorted(seen) == [(u, w) for u in range(k.units) for w in range(4)]
    # stores: a warp's lanes write consecutive pieces; loads: lane (g, q) reads unit (row g, chunk q)
    for i in range(k.per_thread):
        for wl in range(k.words):
            for warp in range(WARPS):
                offs = []
                for lane in range(32):
                    p = warp * 32 + lane + THREADS * i
                    offs.append(chunk_offset(p // parts, (p % parts) * k.words + wl))
                assert _phases_conflict_free(offs), (i, wl, warp)
    for w in range(4):
        for r0 in range(0, em + tn, 8):
            offs = [chunk_offset((r0 + lane // 4) * 4 + lane % 4, w) for lane in range(32)]
            assert _phases_conflict_free(offs)
    assert len({chunk_offset(u, w) for u in range(k.units) for w in range(4)}) == 4 * k.units


def test_staged_layout_rejects_tiles_it_cannot_split():
    from kernels.router.staged import pick_staged, staged_layout

    with pytest.raises(ValueError):
        staged_layout(48, 32)  # 12 blocks of 16 x 8 over 8 warps
    with pytest.raises(ValueError):
        staged_layout(16, 8)
    em, tn, ks = pick_staged(128, 384, 7168)
    assert (em, tn) == (64, 32) and 6 * 4 * ks >= 264 and 56 // ks >= 4


def test_row_major_scales_unswizzle_and_are_kept_per_layer():
    # the GEMV's weight scales: [rows, K / 16] row-major from the 128x4 atoms (row r, block b at
    # ((r / 128) * K-tiles + b / 4) * 512 + (r % 32) * 16 + (r % 128 / 32) * 4 + b % 4), made once
    # per layer, made again after the scales change in place
    from kernels.nvfp4 import Nvfp4Linear
    from kernels.router.launch import row_major_scales

    layer = Nvfp4Linear(torch.randn(200, 512, generator=torch.Generator().manual_seed(3))).finalize_weights()
    sb = layer._scale_b.view(torch.uint8).reshape(-1)
    rm = row_major_scales(layer)
    kt = 512 // 64
    assert rm.numel() == sb.numel() == 256 * kt * 4  # rows padded to 128
    rng = random.Random(0)
    for _ in range(500):
        r, b = rng.randrange(200), rng.randrange(kt * 4)
        assert rm[r * kt * 4 + b] == sb[((r // 128) * kt + b // 4) * 512 + (r % 32) * 16 + (r % 128) // 32 * 4 + b % 4]
    assert row_major_scales(layer) is rm
    layer._scale_b.view(torch.uint8).reshape(-1)[0] ^= 1
    again = row_major_scales(layer)
    assert again is not rm and again[0] == rm[0] ^ 1
