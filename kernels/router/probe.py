"""Device probe of the router kernels' configurations (a development tool, one device call).

    python -m kernels.router.probe --tokens 4096 --experts 256 384 --tile-splits 1 2 4

For each (T, E): the tile kernel (and any forced kernel) checked against the two-kernel reference
(``compare_routing``) and for bit-identical repeats, then timed with the bench's harness (one CUDA
graph over 64 weight copies, median replay / 64).  Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))


def main(argv=None) -> int:
    import router_bench as rb
    from router_validate import make_layer, make_tokens

    from kernels import router
    from kernels.router.launch import current_stream, tile_args, tile_launcher
    from kernels.router.tile import BK, compile_tile, device_stages

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[4096])
    p.add_argument("--experts", type=int, nargs="+", default=[256, 384])
    p.add_argument("--tile-splits", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--kernels", nargs="*", default=[], help="other kernels to time (gemv, swapab, mma)")
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--variants", nargs="*", default=[], help="tile kernel with a stage left out: nodecode nomma noepi")
    p.add_argument("--in-kernel", action="store_true", help="also time the tile kernel's in-kernel route")
    p.add_argument("--stages", type=int, default=None,
                   help="the tile kernel's ring depth (default: the deepest the device's SMEM allows)")
    p.add_argument("--stream-k", nargs="*", type=int, default=None, metavar="CTAS",
                   help="also check and time the tile kernel's stream-K grid (CTAS: grid sizes; none: one wave "
                        "of this device)")
    p.add_argument("--split-timing", action="store_true",
                   help="also time the tile kernel and its route kernel each alone")
    p.add_argument("--once", action="store_true", help="launch each tile configuration 3 times, no timing (for ncu)")
    p.add_argument("--gemv", nargs="*", default=[], metavar="TM,RB", help="GEMV kernel configurations to check and time")
    p.add_argument("--swapab", nargs="*", default=[], metavar="NT,KSPLIT[,MW[,UW[,WARPS,SPREAD,PAIR]]]",
                   help="swap-AB kernel configurations (MW: 16-expert blocks per CTA, default 1; UW: words "
                        "per lane of a K unit, 4 (default), 2 or 1; WARPS per CTA 8 (default), 12, 16; SPREAD: "
                        "CTAs per n-tile's route; PAIR 1: the two K splits as a cluster, polled route)")
    p.add_argument("--staged", nargs="*", default=[], metavar="EM,TN,KSPLIT[,STAGES]",
                   help="staged-decode swap-AB configurations (experts x tokens per CTA, K splits)")
    p.add_argument("--decode-variants", nargs="*", default=[""],
                   help="variants of the decode kernels: plain (as shipped), noroute (logits only), "
                        "clock (timestamps), slowpicks / floatpicks / exactexp (the route's older forms), "
                        "narrow (one word per polling load); "
                        "swap-AB only: poll / count / wait (force the polled, the counted or the "
                        "waiting route), spreadN (an n-tile's route over N CTAs), pairbar (cluster pairs "
                        "handing over with stores and a cluster barrier); quant (from bf16, quantizing in the kernel: "
                        "GEMV dynamic or calibrated scale, swap-AB calibrated only, --calibrated; GEMV with "
                        "table: the thresholds from a per-CTA table, search: the codes by bf16x2 compares, SM90+)")
    p.add_argument("--after-quant", nargs="*", default=[], choices=["dynamic", "calibrated", "trigger"],
                   help="also time each decode configuration after the fused quantizer of the bf16 tokens (dynamic "
                        "or calibrated global scale), launched plainly and as its programmatic dependent (PDL); "
                        "trigger: after a one-warp kernel that only lets its dependent start (the activations "
                        "quantized once beforehand): the floor of the hand-off")
    p.add_argument("--calibrated", action="store_true",
                   help="the layers carry the activation scale a calibration on the tokens would give (the GEMV's "
                        "quant variant then quantizes with it instead of computing the dynamic one)")
    p.add_argument("--quant-threads", type=int, default=None, choices=[64, 128, 256],
                   help="threads per CTA of the quantizer in the --after-quant timings (default: its launcher's)")
    p.add_argument("--quant-table", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                   help="the quantizer's per-CTA threshold table in the --after-quant timings, each in turn "
                        "(auto: its launcher's pick); each is also timed alone")
    p.add_argument("--operands", action="store_true",
                   help="the --after-quant timings of swap-AB configurations also with the operand hand-off (the "
                        "quantizer writing the tokens as the kernel's fp16 operands, GPUREPRO_ROUTER_OPERAND_HANDOFF)")
    p.add_argument("--quant-per-thread", type=int, default=None, choices=[1, 2],
                   help="blocks per quantizer thread held in registers in the --after-quant timings (default: its "
                        "launcher's; 2 halves the grid)")
    p.add_argument("--prefetch", action="store_true",
                   help="the --after-quant timings also with the quantizer pulling the layer's weights into L2 "
                        "(GPUREPRO_ROUTER_L2_PREFETCH)")
    p.add_argument("--tile-quant", action="store_true",
                   help="T >= 128, --calibrated: the tile kernel quantizing its own token rows (one launch + its "
                        "route kernel) beside route alone and the fused quantizer + tile kernel (plainly and as "
                        "its programmatic dependent), each checked and timed, the device's grid")
    p.add_argument("--tile-quant-regs", type=int, nargs="*", default=[], metavar="R",
                   help="with --tile-quant: also the tile kernel with a quantizing warpgroup of its own "
                        "(quant_warps=4), its MMA warpgroup at R registers (setmaxnreg; multiples of 8)")
    p.add_argument("--tile-ahead", type=int, nargs="*", default=[], metavar="N",
                   help="also time route alone with the tile kernel loading N k-tiles ahead (default stages - 1; "
                        "up to stages)")
    a = p.parse_args(argv)
    if a.tile_quant and not a.calibrated:
        p.error("--tile-quant: the tile kernel quantizes with a calibrated scale only (--calibrated)")
    dev = torch.device("cuda")
    k_tiles = a.hidden // BK
    rc = 0
    for e in a.experts:
        base0 = make_layer(e, a.hidden, seed=e, device=dev)
        layers0 = [] if a.once else [rb.layer_copy(base0) for _ in range(a.layers)]
        for t in a.tokens:
            x = make_tokens(t, a.hidden, seed=1000 + t, device=dev)
            base, layers = base0, layers0
            if a.calibrated:
                from kernels.nvfp4 import compute_global_scale

                scale = compute_global_scale(x)
                base = rb.calibrated(rb.layer_copy(base0), scale)
                layers = [rb.calibrated(lay, scale) for lay in layers0]
            act = router.prepare_activation(x, base)
            ref_logits = router.router_logits_reference(x, base0)  # the calibrated scale is the dynamic one
            for cfg in a.gemv + a.swapab + a.staged:
                for v in a.decode_variants:
                    kind = "gemv" if cfg in a.gemv else "swapab" if cfg in a.swapab else "staged"
                    if kind == "swapab" and "quant" in v and not a.calibrated:
                        print(json.dumps({"T": t, "E": e, "kernel": kind, "config": cfg, "variant": v,
                                          "skipped": "the swap-AB kernel quantizes with a calibrated scale only "
                                                     "(--calibrated)"}), flush=True)
                        continue
                    rc |= _decode(kind, tuple(int(c) for c in cfg.split(",")), v, x, base, act, ref_logits, layers,
                                  a, {"T": t, "E": e})
                    for mode in ([] if "quant" in v else a.after_quant):  # "quant": the kernel quantizes itself
                        for table in a.quant_table:
                            for pdl in (False, True):
                                for ops in ((False, True) if a.operands and kind == "swapab" else (False,)):
                                    for pf in ((False, True) if a.prefetch and mode != "trigger" else (False,)):
                                        rc |= _after_quant(kind, tuple(int(c) for c in cfg.split(",")), v, mode, pdl,
                                                           x, base, ref_logits, layers, a, {"T": t, "E": e}, table,
                                                           ops, pf)
            for mode in [m for m in a.after_quant if m != "trigger"]:
                for table in a.quant_table:
                    _quant_alone(mode, table, x, layers, a, {"T": t, "E": e})
            if a.tile_quant and t >= 128:
                rc |= _tile_quant(x, base, act, ref_logits, layers, a, {"T": t, "E": e})
            for n in (a.tile_ahead if t >= 128 else []):
                def make_ahead(lay, n=n):
                    return tile_launcher(act, lay, 6, "softmax", False, stages=a.stages, ahead=n)
                rc |= _check_and_time(make_ahead, base, ref_logits, layers, a,
                                      {"T": t, "E": e, "kernel": "tile", "ahead": n, "stages": a.stages or "auto"},
                                      True)
            for ctas in ((a.stream_k or [0]) if a.stream_k is not None and t >= 128 else []):
                from kernels.router.tile import BN as TBN, device_ctas_per_wave, stream_k_slots

                ctas = ctas or device_ctas_per_wave(dev, a.stages or device_stages(dev))
                slots = stream_k_slots(-(-t // 128) * (e // TBN), k_tiles, ctas)
                res = {"T": t, "E": e, "kernel": "tile", "stream_k_ctas": ctas, "slots": slots}
                sk = (ctas, slots)
                if not a.no_check:
                    outs = []
                    for _ in range(3):
                        launch, ids, w = tile_launcher(act, base, 6, "softmax", False, stages=a.stages, stream_k=sk)
                        launch()
                        outs.append((ids, w))
                    rc |= _check(outs, ref_logits, res)
                us, _ = rb.time_us([tile_launcher(act, lay, 6, "softmax", False, stages=a.stages, stream_k=sk)[0]
                                    for lay in layers], a.reps)
                res["us"] = round(us, 2)
                res["TFLOPs"] = round(2 * t * e * a.hidden / us / 1e6, 1)
                print(json.dumps(res), flush=True)
            for s in (a.tile_splits if t >= 128 else []):
                per = -(-k_tiles // s)
                splits = -(-k_tiles // per)
                res = {"T": t, "E": e, "kernel": "tile", "splits": splits, "per": per, "stages": a.stages or "auto"}
                if not a.no_check:
                    rc |= _check([tile_once(act, base, (splits, per), a.stages) for _ in range(3)], ref_logits, res)

                if a.once:
                    launch = tile_launcher(act, base, 6, "softmax", False, (splits, per), stages=a.stages)[0]
                    for _ in range(3):
                        launch()
                    torch.cuda.synchronize()
                    continue

                us, _ = rb.time_us([tile_launcher(act, lay, 6, "softmax", False, (splits, per), stages=a.stages)[0]
                                    for lay in layers], a.reps)
                res["us"] = round(us, 2)
                res["TFLOPs"] = round(2 * t * e * a.hidden / us / 1e6, 1)
                print(json.dumps(res), flush=True)
                if a.split_timing:
                    from kernels.router.tile import compile_split_route

                    def parts(lay, splits=splits, per=per):
                        args, _, _ = tile_args(act, lay, 6, splits, per)
                        fn = compile_tile(6, "softmax", False, splits, args, stages=a.stages or device_stages(dev))
                        rargs = (args[7], args[5], args[6], args[-1])
                        route = compile_split_route(6, "softmax", False, e, splits, rargs)
                        return (lambda: fn(*args[:-1], current_stream(dev)),
                                lambda: route(*rargs[:-1], current_stream(dev)))

                    both = [parts(lay) for lay in layers]
                    us_t, _ = rb.time_us([b[0] for b in both], a.reps)
                    us_r, _ = rb.time_us([b[1] for b in both], a.reps)
                    print(json.dumps({"T": t, "E": e, "splits": splits, "tile_alone_us": round(us_t, 2),
                                      "route_alone_us": round(us_r, 2)}), flush=True)
                if a.in_kernel:
                    fns = [tile_launcher(act, lay, 6, "softmax", False, (splits, per), route_in_kernel=True)[0]
                           for lay in layers]
                    us, _ = rb.time_us(fns, a.reps)
                    print(json.dumps({"T": t, "E": e, "splits": splits, "route": "in-kernel", "us": round(us, 2)}),
                          flush=True)
                for v in a.variants:
                    def makev(lay, splits=splits, per=per, v=v):
                        args, _, _ = tile_args(act, lay, 6, splits, per)
                        fn = compile_tile(6, "softmax", False, splits, args, variant=v, route_in_kernel=True)
                        return lambda: fn(*args[:-1], current_stream(dev))

                    us, _ = rb.time_us([makev(lay) for lay in layers], a.reps)
                    print(json.dumps({"T": t, "E": e, "splits": splits, "variant": v, "us": round(us, 2)}), flush=True)
            for kern in a.kernels:
                fns = [lambda lay=lay: router.run_nvfp4_fused_router(x, lay, 6, "softmax", activation=act, kernel=kern)
                       for lay in layers]
                us, _ = rb.time_us(fns, a.reps)
                print(json.dumps({"T": t, "E": e, "kernel": kern, "us": round(us, 2)}), flush=True)
    return rc


def _check(outs, ref_logits, res) -> int:
    """Three runs' ``(ids, weights)`` against the reference and each other; the verdict goes into
    ``res``; returns 0 when they pass."""
    from kernels import router

    torch.cuda.synchronize()
    cmp = router.compare_routing(outs[0][0], outs[0][1], ref_logits, 6, "softmax")
    same = all(torch.equal(o[0], outs[0][0]) and torch.equal(o[1], outs[0][1]) for o in outs[1:])
    ok = cmp.ok and cmp.max_weight_err <= 1e-4 and same
    res.update({"ok": ok, "id_mismatch": cmp.id_mismatches, "real": cmp.real_mismatches,
                "max_w_err": cmp.max_weight_err, "repeat_identical": same})
    return 0 if ok else 1


def tile_once(act, layer, config, stages):
    """One tile-kernel route (and its route kernel): ``(ids, weights)``."""
    from kernels.router.launch import tile_launcher

    launch, ids, w = tile_launcher(act, layer, 6, "softmax", False, config, stages=stages)
    launch()
    return ids, w


def _decode(kind, cfg, variant, x, base, act, ref_logits, layers, a, res) -> int:
    """Check (unless ``noroute``) and time one decode-kernel configuration; prints one JSON line."""
    from kernels.router import launch
    from kernels.router.runtime import refill_polled_workspaces

    dev = x.device

    def make(lay):
        fn, args, ids, w = _compiled_decode(kind, cfg, variant, act, lay, x)
        return (lambda: fn(*args[:-1], launch.current_stream(dev))), ids, w

    res = dict(res, kernel=kind, config=list(cfg), variant=variant)
    if "clock" in variant:
        print(json.dumps(dict(res, **_clock_run(kind, cfg, variant, base, act, dev, x))), flush=True)
        return 0
    # noroute: the logits only, nothing to check; the polled workspace is left to refill
    return _check_and_time(make, base, ref_logits, layers, a, res, "noroute" not in variant,
                           refill_polled_workspaces if "noroute" in variant else None)


def _check_and_time(make, base, ref_logits, layers, a, res, check: bool, after=None) -> int:
    """``make(layer)`` -> ``(run, ids, weights)``: three runs on ``base`` checked against the
    reference (where ``check`` and not ``--no-check``), then the runs over the layer copies timed
    (``after`` called once timed); prints ``res`` with the time as one JSON line."""
    import router_bench as rb

    rc = 0
    if check and not a.no_check:
        outs = []
        for _ in range(3):
            run, ids, w = make(base)
            run()
            outs.append((ids, w))
        rc = _check(outs, ref_logits, res)
    us, _ = rb.time_us([make(lay)[0] for lay in layers], a.reps)
    if after is not None:
        after()
    res["us"] = round(us, 2)
    print(json.dumps(res), flush=True)
    return rc


_TABLE = {"auto": None, "on": True, "off": False}


def _quant_alone(mode, table, x, layers, a, res):
    """The fused quantizer alone (``mode`` and ``table`` as in :func:`_after_quant`), timed like the
    decode kernels (one launcher per layer copy, so the same graph shape)."""
    import router_bench as rb

    from kernels.nvfp4 import compute_global_scale
    from kernels.router.quant import quant_launcher

    scale = compute_global_scale(x) if mode == "calibrated" else None
    launches = [quant_launcher(x, scale, lay._global_scale_b, trigger=False, threads=a.quant_threads,
                               table=_TABLE[table], per_thread=a.quant_per_thread)[0] for lay in layers]
    us, _ = rb.time_us(launches, a.reps)
    print(json.dumps(dict(res, kernel="quant", after_quant=mode, quant_table=table, quant_per_thread=a.quant_per_thread,
                          us=round(us, 2))), flush=True)


_TRIGGER = {}


def _trigger_launcher(dev, pdl: bool):
    """``launch()`` of a one-warp kernel that does nothing but ``griddepcontrol.launch_dependents``
    (``pdl``; else nothing at all): in place of the quantizer, what the hand-off to the router costs."""
    import cutlass.cute as cute

    from kernels.router.handoff import TriggerKernel
    from kernels.router.runtime import current_stream, to_cute

    key = (str(dev), pdl)
    if key not in _TRIGGER:
        buf = torch.zeros(4, dtype=torch.int32, device=dev)
        args = (to_cute(buf), current_stream(dev))
        _TRIGGER[key] = (cute.compile(TriggerKernel(pdl), *args), args)
    fn, args = _TRIGGER[key]
    return lambda: fn(args[0], current_stream(dev))


def _after_quant(kind, cfg, variant, mode, pdl, x, base, ref_logits, layers, a, res, table="auto",
                 operands: bool = False, prefetch: bool = False) -> int:
    """One decode configuration after the fused quantizer (``mode``: "dynamic" or "calibrated"
    global scale; "trigger": the empty kernel of :func:`_trigger_launcher` in its place, the
    activations quantized once beforehand), launched plainly or (``pdl``) as the quantizer's
    programmatic dependent: checked (three runs against the reference) and timed as quantizer +
    kernel per layer copy.  ``table``: the quantizer's threshold table (``--quant-table``);
    ``operands``: the tokens handed over as the swap-AB kernel's fp16 operands (``--operands``);
    ``prefetch``: the quantizer pulls the layer's weights into L2 (``--prefetch``)."""
    from kernels.nvfp4 import compute_global_scale
    from kernels.router import launch
    from kernels.router.quant import quant_launcher

    dev = x.device
    scale = compute_global_scale(x) if mode in ("calibrated", "trigger") else None

    def make(lay):
        quant, act = quant_launcher(x, scale, lay._global_scale_b, trigger=pdl, threads=a.quant_threads,
                                    table=_TABLE[table], per_thread=a.quant_per_thread, operands=operands,
                                    prefetch=(lay._mat_b, lay._scale_b) if prefetch else None)
        if mode == "trigger":
            quant()  # the activations the router reads, once
            quant = _trigger_launcher(dev, pdl)
        fn, args, ids, w = _compiled_decode(kind, cfg, variant, act, lay, pdl=pdl)

        def run():
            quant()
            fn(*args[:-1], launch.current_stream(dev))
        return run, ids, w

    res = dict(res, kernel=kind, config=list(cfg), variant=variant, after_quant=mode, pdl=pdl,
               quant_threads=a.quant_threads, quant_table=table, quant_per_thread=a.quant_per_thread,
               operands=operands, prefetch=prefetch)
    return _check_and_time(make, base, ref_logits, layers, a, res, "noroute" not in variant)


def _tile_quant(x, base, act, ref_logits, layers, a, res) -> int:
    """The tile kernel (the device's grid) from bf16 ``x`` with the layer's calibrated scale: route
    alone (the activations quantized beforehand), the fused quantizer + tile kernel plainly and as
    its programmatic dependent, and the tile kernel quantizing its token rows itself; each checked
    and timed (one JSON line each); ``--tile-quant-regs``: also with a quantizing warpgroup of its own."""
    from kernels.router.launch import tile_launcher
    from kernels.router.quant import quant_launcher

    rc = 0

    def alone(lay):
        return tile_launcher(act, lay, 6, "softmax", False)

    def own(lay):
        return tile_launcher(None, lay, 6, "softmax", False, quant_x=x)

    rc |= _check_and_time(alone, base, ref_logits, layers, a, dict(res, kernel="tile", quant="before"), True)
    for pdl in (False, True):
        def after(lay, pdl=pdl):
            quant, qact = quant_launcher(x, lay.input_global_scale, lay._global_scale_b, trigger=pdl)
            run, ids, w = tile_launcher(qact, lay, 6, "softmax", False, pdl=pdl)

            def both():
                quant()
                run()
            return both, ids, w
        rc |= _check_and_time(after, base, ref_logits, layers, a,
                              dict(res, kernel="tile", after_quant="calibrated", pdl=pdl), True)
    rc |= _check_and_time(own, base, ref_logits, layers, a, dict(res, kernel="tile", quant="in-kernel"), True)
    for regs in a.tile_quant_regs:
        def own_warps(lay, regs=regs):
            return tile_launcher(None, lay, 6, "softmax", False, quant_x=x, quant_warps=4, mma_regs=regs)
        rc |= _check_and_time(own_warps, base, ref_logits, layers, a,
                              dict(res, kernel="tile", quant="in-kernel", quant_warps=4, mma_regs=regs), True)
    return rc


def _compiled_decode(kind, cfg, variant, act, lay, x=None, pdl: bool = False):
    """``(compiled kernel, its arguments, ids, weights)`` of one decode-kernel configuration on
    layer ``lay`` (``x``: the bf16 activations, for the GEMV's "quant" variant; ``pdl``: launched
    as the programmatic dependent of the kernel before it, GEMV and swap-AB)."""
    from kernels.router import launch
    from kernels.router.gemv import compile_gemv

    if kind == "gemv" and "quant" in variant:
        args, ids, w, mode = launch.gemv_quant_args(x, lay, 6, cfg[0])
        fn = compile_gemv(6, "softmax", False, lay.out_features, cfg[0], cfg[1], args, variant, quant=mode)
    elif kind == "swapab" and "quant" in variant:
        from kernels.router.gemv import SwapabConfig

        scfg = SwapabConfig.of(cfg)
        why = launch.swapab_quant_problem(x, lay, scfg)
        if why:
            raise ValueError(f"swap-AB quant: {why}")
        fn, args, ids, w = launch.compile_swapab(None, lay, 6, "softmax", False, scfg, variant, quant_x=x)
    elif kind == "gemv":
        args, ids, w = launch.gemv_args(act, lay, 6, cfg[0])
        fn = compile_gemv(6, "softmax", False, lay.out_features, cfg[0], cfg[1], args, variant, pdl=pdl)
    elif kind == "staged":
        from kernels.router.staged import compile_staged

        if pdl:
            raise ValueError("the staged kernel has no programmatic-dependent form")

        args, ids, w = launch.staged_args(act, lay, 6, cfg[1], cfg[2])
        fn = compile_staged(6, "softmax", False, lay.out_features, cfg[0], cfg[1], cfg[2], args,
                            "noroute" if "noroute" in variant else "", *cfg[3:],
                            route="count" if "count" in variant else "wait")
    else:
        from kernels.router.gemv import SwapabConfig

        # NT,KSPLIT[,MW[,UW[,WARPS,SPREAD,PAIR]]]: MW 1, UW 4 unless given
        fn, args, ids, w = launch.compile_swapab(act, lay, 6, "softmax", False, SwapabConfig.of(cfg), variant, pdl)
    return fn, args, ids, w


def _clock_run(kind, cfg, variant, base, act, dev, x=None):
    """Variant "clock": one launch (after 3 warm-ups) whose ids tensor, enlarged, holds timestamps
    (``_WarpRouter._route_warp`` and ``_cta_stamp``): where the route's time goes.  Global-timer
    ns for the launch's timeline, SM clock cycles for the phases of a routing warp."""
    from kernels.router import launch

    t = act[0].shape[0]
    fn, args, _, w = _compiled_decode(kind, cfg, variant, act, base, x)
    big = torch.zeros((t + 8192, 6), dtype=torch.int32, device=dev)
    args = list(args)
    args[7 if kind == "gemv" else 6] = launch._cute(big)  # the ids tensor (its layout is dynamic)
    for _ in range(4):
        big.zero_()
        fn(*args[:-1], launch.current_stream(dev))
    torch.cuda.synchronize()
    d = big.cpu().to(torch.int64) & 0xFFFFFFFF
    ctas = d[t:][d[t:, 1] != 0]
    g0 = int(ctas[:, 0].min())
    routed = d[:t][d[:t, 5] != 0]
    clk_end = w[:t].view(torch.int32).cpu().to(torch.int64)[:, 0][d[:t, 5] != 0] & 0xFFFFFFFF

    def q(x):
        x = x.double()
        return [round(float(x.median()), 1), round(float(x.max()), 1)] if x.numel() else None

    return {
        "ctas": int(ctas.shape[0]), "routed_tokens": int(routed.shape[0]),
        "ns_last_cta_start": int(ctas[:, 0].max()) - g0,
        "ns_cta_stored": q(ctas[:, 1] - g0),
        "ns_route_entry": q(routed[:, 1] - g0),
        "ns_route_end": q(routed[:, 5] - g0),
        "cyc_cta_decode": q((ctas[:, 3] - ctas[:, 2]) & 0xFFFFFFFF),
        "cyc_gather": q((routed[:, 2] - routed[:, 0]) & 0xFFFFFFFF),
        "cyc_insert": q((routed[:, 3] - routed[:, 2]) & 0xFFFFFFFF),
        "cyc_picks": q((routed[:, 4] - routed[:, 3]) & 0xFFFFFFFF),
        "cyc_weights": q((clk_end - routed[:, 4]) & 0xFFFFFFFF),
    }


if __name__ == "__main__":
    sys.exit(main())
