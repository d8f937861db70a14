"""Compile a router kernel for a given architecture without launching it (no GPU needed).

    CUTE_DSL_ARCH is set from --arch before cutlass is imported:
    python -m kernels.router.compile_check --kernel portable --arch sm_80
    python -m kernels.router.compile_check --kernel gemv --arch sm_120a
    python -m kernels.router.compile_check --kernel tile --arch sm_90a   # the pipelined large-T kernel
    python -m kernels.router.compile_check --kernel sm100 --arch sm_100a
    python -m kernels.router.compile_check --kernel quant --arch sm_90a   # the activation quantizer
    python -m kernels.router.compile_check --kernel inkernel-quant --arch sm_90a   # SM90+ quantizing forms
    python -m kernels.router.compile_check --kernel tile-quant --arch sm_90a   # the tile kernel quantizing

Prints one JSON line: kernel, arch, configurations compiled, seconds, and the cubin files that
``CUTE_DSL_KEEP=cubin`` left (their names carry the architecture).  Exit 0 when every
configuration compiled and left a cubin for ``--arch``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time


def cubin_registers(path: str) -> list:
    """Registers per thread of each kernel in a cubin (EIATTR_REGCOUNT records of its .nv.info
    sections): the occupancy a grid barrier relies on is checked without a GPU."""
    import struct

    with open(path, "rb") as fh:
        d = fh.read()
    shoff = struct.unpack_from("<Q", d, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
    names = secs[shstrndx][4]
    regs = []
    for sec in secs:
        name = d[names + sec[0]:d.index(b"\0", names + sec[0])]
        if not name.startswith(b".nv.info"):
            continue
        p, end = sec[4], sec[4] + sec[5]
        while p < end:
            fmt, attr, size = struct.unpack_from("<BBH", d, p)
            if fmt == 4:  # EIFMT_SVAL: a payload of `size` bytes follows
                if attr == 0x2F and size == 8:  # EIATTR_REGCOUNT: (function symbol, registers)
                    regs.append(struct.unpack_from("<II", d, p + 4)[1])
                p += 4 + size
            else:
                p += 4
    return regs


def _act_layer():
    import torch

    from kernels.nvfp4 import Nvfp4Linear
    from kernels.router import prepare_activation

    g = torch.Generator().manual_seed(0)
    # small CPU tensors: shapes and strides are dynamic in the compiled kernel, only dtypes,
    # ranks and alignment matter here
    layer = Nvfp4Linear(torch.randn(256, 256, generator=g)).finalize_weights()
    act = prepare_activation(torch.randn(8, 256, generator=g), layer)
    return act, layer


def _quant_args():
    import torch

    from kernels.router.quant import quant_args

    x = torch.randn(8, 256).to(torch.bfloat16)
    data = torch.empty(8, 128, dtype=torch.uint8)
    scales = torch.empty(8, 16, dtype=torch.uint8)
    one = torch.ones(1)
    return quant_args(x, data, scales, one, one, torch.empty(1), 1)


def _fake_args(kernel: str, top_k: int):
    if kernel == "quant":
        return _quant_args()
    act, layer = _act_layer()
    if kernel == "portable":
        from kernels.router.launch import portable_args

        return portable_args(act, layer, top_k)[0]
    if kernel == "tile":
        from kernels.router.launch import tile_args

        return tile_args(act, layer, top_k, 2, 2)[0]
    if kernel == "gemv":
        from kernels.router.launch import gemv_args

        return gemv_args(act, layer, top_k, tm=8)[0]
    from kernels.router.sm100 import sm100_args

    return sm100_args(act, layer, top_k)[0]


def _compile_pdl(cute, kernel: str, k: int) -> list:
    """The router kernels in the form launched after the fused quantizer (``pdl=True``): the GEMV
    and swap-AB kernels (``--kernel gemv``), the tile kernel (``tile``)."""
    done = []
    if kernel == "gemv":
        from kernels.router.gemv import GemvRouterKernel, MmaGemvRouterKernel, swapab_polls
        from kernels.router.launch import mma_gemv_args

        cute.compile(GemvRouterKernel(k, "softmax", False, 256, 1, 1, pdl=True), *_fake_args("gemv", k))
        done.append(f"k={k},softmax,tm=1,rb=1,pdl")
        for nt, ks, mw, uw in ((1, 7, 1, 4), (2, 2, 2, 2)):
            poll = swapab_polls(ks)
            margs = mma_gemv_args(*_act_layer(), k, nt, ks, poll)[0]
            cute.compile(MmaGemvRouterKernel(k, "softmax", False, 256, nt, ks, poll, mw=mw, uw=uw, pdl=True), *margs)
            done.append(f"k={k},softmax,swapab nt={nt},ksplit={ks},pdl")
        # the tokens as the quantizer's fp16 operands, launched after it (the operand hand-off)
        import torch

        oact, olayer = _act_layer()
        ops = torch.zeros(oact[0].shape[0], olayer.in_features // 2, dtype=torch.int32)
        margs = mma_gemv_args((ops, *oact[1:]), olayer, k, 1, 7, False)[0]
        cute.compile(MmaGemvRouterKernel(k, "softmax", False, 256, 1, 7, False, uw=4, pdl=True, operands=True), *margs)
        done.append(f"k={k},softmax,swapab operands nt=1,ksplit=7,pdl")
    elif kernel == "tile":
        from kernels.router.tile import TileRouterKernel

        args = _fake_args("tile", k)
        cute.compile(TileRouterKernel(k, "softmax", False, 4, pdl=True), *args)
        done.append(f"k={k},softmax,tile splits=4,pdl")
    return done


def _compile_inkernel_quant(cute, k: int, compiled) -> list:
    """The SM90+ forms of in-kernel quantization (bf16x2 compares): the GEMV's codes by the search
    (calibrated scale with the table; with 1, 2 and 4 threads per chunk, the latter two as the
    router picks them at E=256 and E=384: ``gemv.pick_gemv_quant``), the swap-AB kernel quantizing
    its bf16 tokens itself (calibrated scale): 8-byte units with several units per warp, then the
    T <= 8 form the launcher picks at hidden 7168 (7 K splits, 16-byte units, 8 warps: its registers
    decide whether two CTAs share an SM).  ``compiled(name)`` after each but the last (whose cubin
    stays for the caller)."""
    import torch

    from kernels.router.gemv import GemvRouterKernel, MmaGemvRouterKernel, pick_gemv_quant, swapab_polls
    from kernels.router.launch import gemv_quant_args, mma_gemv_args

    act, layer = _act_layer()
    layer.input_global_scale = 0.01
    x = torch.randn(8, 256).to(torch.bfloat16)
    qargs = gemv_quant_args(x[:1], layer, k, 1)[0]
    done = []

    def build(name, kernel, args):
        if done:
            compiled(done[-1])
        cute.compile(kernel, *args)
        done.append(name)

    build(f"k={k},softmax,tm=1,rb=2,quant=static,table+search",
          GemvRouterKernel(k, "softmax", False, 256, 1, 2, "table+search", quant="static"), qargs)
    # 2 and 4 threads per chunk (512 / 1024 threads: at most 128 / 64 registers), as the router
    # takes them on the H200 (132 SMs)
    for e in (256, 384):
        for parts in ("halves", "quarters"):
            (tm, rb), variant = pick_gemv_quant(1, e, parts, True, 9, 132)
            build(f"k={k},softmax,E={e},tm={tm},rb={rb},quant=static,{variant}",
                  GemvRouterKernel(k, "softmax", False, e, tm, rb, variant, quant="static"), qargs)
    for ks, uw in ((2, 2), (7, 4)):
        poll = swapab_polls(ks)
        args = mma_gemv_args(None, layer, k, 1, ks, poll, quant_x=x)[0]
        build(f"k={k},softmax,swapab quant nt=1,ksplit={ks},uw={uw}",
              MmaGemvRouterKernel(k, "softmax", False, 256, 1, ks, poll, uw=uw, quant=True), args)
    return done


def _compile_tile_quant(cute, k: int, compiled) -> list:
    """The tile kernel quantizing its bf16 token rows itself (calibrated scale, SM90+): the split
    grid and the stream-K grid, each with the tile's own threads quantizing and with a quantizing
    warpgroup of its own (``quant_warps=4``, setmaxnreg; the last, stream-K, cubin stays for the
    caller)."""
    import torch

    from kernels.router.launch import tile_args
    from kernels.router.tile import Q_STAGES, TileRouterKernel

    _, layer = _act_layer()
    layer.input_global_scale = 0.01
    x = torch.randn(8, 256).to(torch.bfloat16)
    targs = tile_args(None, layer, k, 4, 2, quant_x=x)[0]
    done = []
    for ctas in (0, 264):
        for warps in (0, 4):
            if done:
                compiled(done[-1])
            cute.compile(TileRouterKernel(k, "softmax", False, 4, stages=Q_STAGES, stream_k_ctas=ctas, quant=True,
                                          quant_warps=warps), *targs)
            grid = f"stream-K {ctas} CTAs" if ctas else "splits=4"
            done.append(f"k={k},softmax,tile quant {grid}" + (f",quant_warps={warps}" if warps else ""))
    return done


def _drop_cubins(dump: str) -> list:
    """Registers of the cubins compiled so far (in ``dump`` or, where the DSL ignores it, the working
    directory), which are then removed: a later compile of the same kernel name overwrites them."""
    files = glob.glob(os.path.join(dump, "**", "*.cubin"), recursive=True) + glob.glob("cutlass_*.cubin")
    regs = [r for f in files for r in cubin_registers(f)]
    for f in files:
        os.remove(f)
    return regs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", choices=["portable", "gemv", "tile", "sm100", "quant", "inkernel-quant", "tile-quant"],
                   required=True)
    p.add_argument("--arch", required=True, help="e.g. sm_80, sm_90a, sm_120a, sm_100a")
    p.add_argument("--topk", type=int, nargs="+", default=[6])
    p.add_argument("--scorings", nargs="+", default=["softmax", "sigmoid"])
    p.add_argument("--pdl", action="store_true",
                   help="only the programmatic-dependent-launch forms (SM90+): the router kernels that wait "
                        "(griddepcontrol.wait) and the quantizer that lets them start (launch_dependents)")
    p.add_argument("--expect-ptx", action="append", default=[],
                   help="a string the generated PTX must contain (e.g. an instruction name); repeatable")
    a = p.parse_args(argv)
    dump = tempfile.mkdtemp(prefix="router-cubin-")
    os.environ["CUTE_DSL_ARCH"] = a.arch
    os.environ["CUTE_DSL_KEEP"] = "cubin,ptx"
    os.environ["CUTE_DSL_DUMP_DIR"] = dump
    import cutlass.cute as cute

    from kernels.router.reference import default_renormalize

    done = []
    seen_regs = set()  # registers of cubins compiled and removed before the end
    form_regs = {}  # registers of each form compiled through compiled(name), and of the last one

    def compiled(name):
        regs = _drop_cubins(dump)
        seen_regs.update(regs)
        if regs:
            form_regs[name] = max(regs)

    t0 = time.time()
    if a.kernel == "quant":
        from kernels.router.quant import Nvfp4ActQuantKernel

        args = _fake_args("quant", 0)
        # calibrated scale, then the on-device one (grid barrier): both leave the same file name,
        # the PTX checked is the last one's
        # the replicated max (small inputs) first: its registers are not capped (no grid barrier)
        cute.compile(Nvfp4ActQuantKernel(True, trigger=a.pdl, replicate=16), *args)
        done.append("quant dynamic=True replicate" + (" trigger" if a.pdl else ""))
        _drop_cubins(dump)
        if a.pdl:
            # SM90+: the form that also pulls the router's weights into L2 (cp.async.bulk.prefetch)
            from kernels.router.quant import PrefetchingQuantKernel, with_prefetch

            _, layer = _act_layer()
            cute.compile(PrefetchingQuantKernel(False, trigger=True), *with_prefetch(args, (layer._mat_b, layer._scale_b)))
            done.append("quant dynamic=False trigger prefetch")
            seen_regs |= set(_drop_cubins(dump))
        # the large-input forms (per-CTA threshold table), their registers kept before the next
        # compile overwrites the file
        for dynamic in ([] if a.pdl else [False, True]):
            cute.compile(Nvfp4ActQuantKernel(dynamic, table=True), *args)
            done.append(f"quant dynamic={dynamic} table")
            seen_regs |= set(_drop_cubins(dump))
        if not a.pdl:
            # the grid barrier's other forms (an arrival count and slots; one atomic max word, the
            # last CTA publishing the scale)
            for barrier in ("slots", "atomic"):
                cute.compile(Nvfp4ActQuantKernel(True, barrier=barrier), *args)
                done.append(f"quant dynamic=True barrier={barrier}")
                seen_regs |= set(_drop_cubins(dump))
            # the activation as the swap-AB kernel's fp16 operands (the operand hand-off)
            cute.compile(Nvfp4ActQuantKernel(False, operands=True), *args)
            done.append("quant dynamic=False operands")
            seen_regs |= set(_drop_cubins(dump))
        for dynamic in (False, True):
            cute.compile(Nvfp4ActQuantKernel(dynamic, trigger=a.pdl), *args)
            done.append(f"quant dynamic={dynamic}" + (" trigger" if a.pdl else ""))
    if a.kernel == "inkernel-quant":
        done += _compile_inkernel_quant(cute, a.topk[0], compiled)
    if a.kernel == "tile-quant":
        done += _compile_tile_quant(cute, a.topk[0], compiled)
    if a.pdl and a.kernel != "quant":
        done += _compile_pdl(cute, a.kernel, a.topk[0])
    for k in ([] if a.kernel in ("quant", "inkernel-quant", "tile-quant") or a.pdl else a.topk):
        args = _fake_args(a.kernel, k)
        for scoring in a.scorings:
            renorm = default_renormalize(scoring)
            if a.kernel == "portable":
                from kernels.router.portable import PortableRouterKernel, pick_config

                configs = sorted({pick_config(1), pick_config(4096)})
                for bm, threads in configs:
                    cute.compile(PortableRouterKernel(k, scoring, renorm, bm, threads), *args)
                    done.append(f"k={k},{scoring},bm={bm},threads={threads}")
            elif a.kernel == "tile":
                from kernels.router.tile import SplitRouteKernel, TileRouterKernel

                for splits in (1, 4):
                    cute.compile(TileRouterKernel(k, scoring, renorm, splits), *args)
                    done.append(f"k={k},{scoring},tile splits={splits}")
                # the stream-K grid (one wave of equal K ranges) and its route kernel's slot counts; first,
                # as the later kernels' PTX files (same names) are the ones checked
                cute.compile(TileRouterKernel(k, scoring, renorm, 4, stream_k_ctas=264), *args)
                done.append(f"k={k},{scoring},tile stream-K 264 CTAs")
                cute.compile(SplitRouteKernel(k, scoring, renorm, 256, 4, stream_k=(112, 264)), args[7], args[5],
                             args[6], args[-1])
                done.append(f"k={k},{scoring},split route stream-K")
                # the 3-deep ring the launcher picks where a CTA gets less SMEM (SM120/SM121)
                cute.compile(TileRouterKernel(k, scoring, renorm, 4, stages=3), *args)
                done.append(f"k={k},{scoring},tile splits=4 stages=3")
                # the in-kernel route (last CTA of a row tile) and the route kernel of the default path
                cute.compile(TileRouterKernel(k, scoring, renorm, 4, route_in_kernel=True), *args)
                done.append(f"k={k},{scoring},tile splits=4 route in kernel")
                cute.compile(SplitRouteKernel(k, scoring, renorm, 256, 4), args[7], args[5], args[6], args[-1])
                done.append(f"k={k},{scoring},split route splits=4")
            elif a.kernel == "gemv":
                from kernels.router.gemv import GemvRouterKernel

                from kernels.router.gemv import MmaGemvRouterKernel, swapab_polls
                from kernels.router.launch import mma_gemv_args

                for tm, rb in ((1, 1), (8, 4)):  # decode and the largest token group
                    cute.compile(GemvRouterKernel(k, scoring, renorm, 256, tm, rb), *args)
                    done.append(f"k={k},{scoring},tm={tm},rb={rb}")
                # quantizing its bf16 activations in the same launch: dynamic and calibrated global scale
                import torch

                from kernels.router.launch import gemv_quant_args

                qargs = gemv_quant_args(torch.randn(1, 256).to(torch.bfloat16), _act_layer()[1], k, 1)[0]
                for quant in ("dynamic", "static"):
                    cute.compile(GemvRouterKernel(k, scoring, renorm, 256, 1, 1, quant=quant), *qargs)
                    done.append(f"k={k},{scoring},tm=1,rb=1,quant={quant}")
                # the tensor-core decode kernel (swap-AB): counted route (7 splits) with 16-byte K
                # units, polled (2) with 8-byte ones
                for nt, ks, mw, uw in ((1, 7, 1, 4), (2, 2, 2, 2)):
                    poll = swapab_polls(ks)
                    margs = mma_gemv_args(*_act_layer(), k, nt, ks, poll)[0]
                    cute.compile(MmaGemvRouterKernel(k, scoring, renorm, 256, nt, ks, poll, mw=mw, uw=uw), *margs)
                    done.append(f"k={k},{scoring},swapab nt={nt},ksplit={ks},mw={mw},uw={uw},poll={poll}")
                # the tokens as the quantizer's fp16 operands (the operand hand-off), 16 x 16 tiles
                # over the 16 warps of one CTA per SM, polled route
                oact, olayer = _act_layer()
                ops = torch.zeros(oact[0].shape[0], olayer.in_features // 2, dtype=torch.int32)
                margs = mma_gemv_args((ops, *oact[1:]), olayer, k, 2, 1, True)[0]
                cute.compile(MmaGemvRouterKernel(k, scoring, renorm, 256, 2, 1, True, uw=4, warps=16, spread=4,
                                                 operands=True), *margs)
                done.append(f"k={k},{scoring},swapab operands nt=2,ksplit=1,warps=16")
                # the one-CTA-per-SM forms (gemv.SwapabConfig): 16 warps with the polled route over 4
                # CTAs per n-tile; 12 warps with the K-split pair as a cluster (SM90 and later)
                forms = [(2, 1, 1, 4, 16, 4, False)]
                if int(a.arch[3:].rstrip("af")) >= 90:
                    forms.append((2, 2, 2, 2, 12, 4, True))
                for nt, ks, mw, uw, warps, spread, pair in forms:
                    margs = mma_gemv_args(*_act_layer(), k, nt, ks, True)[0]
                    cute.compile(MmaGemvRouterKernel(k, scoring, renorm, 256, nt, ks, True, mw=mw, uw=uw, warps=warps,
                                                     spread=spread, pair=pair), *margs)
                    done.append(f"k={k},{scoring},swapab nt={nt},ksplit={ks},mw={mw},uw={uw},warps={warps},"
                                f"spread={spread},pair={pair}")
                # the staged-decode kernel (cp.async ring, operands decoded once per CTA into shared
                # memory): the counted route with a 3-deep ring, then (last: its PTX file is the one
                # checked) the waiting route with a 4-deep ring
                from kernels.router.launch import staged_args
                from kernels.router.staged import StagedRouterKernel

                for em, tn, ks, stages, route in ((32, 32, 3, 3, "count"), (64, 32, 5, 4, "wait")):
                    sargs = staged_args(*_act_layer(), k, tn, ks)[0]
                    cute.compile(StagedRouterKernel(k, scoring, renorm, 256, em, tn, ks, "", stages, route), *sargs)
                    done.append(f"k={k},{scoring},staged {em}x{tn},ksplit={ks},stages={stages},route={route}")
            else:
                from kernels.router.sm100 import Sm100RouterKernel

                cute.compile(Sm100RouterKernel(k, scoring, renorm), *args)
                done.append(f"k={k},{scoring}")
    cubins = sorted(glob.glob(os.path.join(dump, "**", "*.cubin"), recursive=True)
                    + glob.glob(os.path.join(os.getcwd(), f"*.{a.arch}.cubin")))
    for f in glob.glob(os.path.join(os.getcwd(), f"cutlass_*.{a.arch}.cubin")):
        os.remove(f)  # CUTE_DSL_KEEP writes to the working directory when DUMP_DIR is ignored
    ptx = ""
    for f in glob.glob(os.path.join(dump, "**", "*.ptx"), recursive=True) + glob.glob(os.path.join(os.getcwd(), f"cutlass_*.{a.arch}.ptx")):
        with open(f, errors="replace") as fh:
            ptx += fh.read()
        if not f.startswith(dump):
            os.remove(f)
    missing = [s for s in a.expect_ptx if s not in ptx]
    ok = bool(done) and any(c.endswith(f".{a.arch}.cubin") for c in cubins) and not missing
    last_regs = {r for c in cubins if os.path.exists(c) for r in cubin_registers(c)}
    regs = sorted(seen_regs | last_regs)
    if form_regs and last_regs:
        form_regs[done[-1]] = max(last_regs)
    shutil.rmtree(dump, ignore_errors=True)
    print(json.dumps({"kernel": a.kernel, "arch": a.arch, "compiled": done, "seconds": round(time.time() - t0, 1),
                      "cubins": [os.path.basename(c)[-60:] for c in cubins], "registers": regs,
                      "form_registers": form_regs, "missing_ptx": missing, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
