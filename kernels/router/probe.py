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
    from kernels.router.tile import BK, compile_tile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[4096])
    p.add_argument("--experts", type=int, nargs="+", default=[256, 384])
    p.add_argument("--tile-splits", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--kernels", nargs="*", default=[], help="other kernels to time (gemv, swapab, mma)")
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--variants", nargs="*", default=[], help="tile kernel with a stage left out: nodecode nomma noepi")
    p.add_argument("--in-kernel", action="store_true", help="also time the tile kernel's in-kernel route")
    p.add_argument("--once", action="store_true", help="launch each tile configuration 3 times, no timing (for ncu)")
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    k_tiles = a.hidden // BK
    rc = 0
    for e in a.experts:
        base = make_layer(e, a.hidden, seed=e, device=dev)
        layers = [] if a.once else [rb.layer_copy(base) for _ in range(a.layers)]
        for t in a.tokens:
            x = make_tokens(t, a.hidden, seed=1000 + t, device=dev)
            act = router.prepare_activation(x, base)
            ref_logits = router.router_logits_reference(x, base)
            for s in a.tile_splits:
                per = -(-k_tiles // s)
                splits = -(-k_tiles // per)
                res = {"T": t, "E": e, "kernel": "tile", "splits": splits, "per": per}
                if not a.no_check:
                    outs = [router.run_nvfp4_fused_router(x, base, 6, "softmax", activation=act, kernel="tile",
                                                          tile_config=(splits, per)) for _ in range(3)]
                    torch.cuda.synchronize()
                    cmp = router.compare_routing(outs[0][0], outs[0][1], ref_logits, 6, "softmax")
                    same = all(torch.equal(o[0], outs[0][0]) and torch.equal(o[1], outs[0][1]) for o in outs[1:])
                    ok = cmp.ok and cmp.max_weight_err <= 1e-4 and same
                    res.update({"ok": ok, "id_mismatch": cmp.id_mismatches, "real": cmp.real_mismatches,
                                "max_w_err": cmp.max_weight_err, "repeat_identical": same})
                    rc |= 0 if ok else 1

                if a.once:
                    launch = tile_launcher(act, base, 6, "softmax", False, (splits, per))[0]
                    for _ in range(3):
                        launch()
                    torch.cuda.synchronize()
                    continue

                us, _ = rb.time_us([tile_launcher(act, lay, 6, "softmax", False, (splits, per))[0] for lay in layers],
                                   a.reps)
                res["us"] = round(us, 2)
                res["TFLOPs"] = round(2 * t * e * a.hidden / us / 1e6, 1)
                print(json.dumps(res), flush=True)
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


if __name__ == "__main__":
    sys.exit(main())
