"""Benchmark the fused NVFP4 router against unfused paths on one GPU (not a test).

    python bench/router_bench.py [--out DIR] [--tokens 1 7 128 4096] [--experts 256 384] [--topk 6]

One harness for every path.  Each path is captured in one CUDA graph of ``--layers`` calls, call i
using layer copy i (``--layers`` >= 64 copies of the weights, so the weights stream from HBM and
not from the 60 MB L2), replayed ``--reps`` times; the time per call is the median replay / layers.

* ``fused``        the kernel the router picks (``choose_kernel``: GEMV, swap-AB or the pipelined
  tile kernel), activations already quantized to NVFP4;
* ``swapab`` / ``staged`` / ``gemv`` / ``tile`` / ``mma`` / ``mma_nosplit`` each kernel forced (where
  it takes the shape): tensor-core decode per warp, tensor-core decode staged once per CTA in shared
  memory (32 <= T <= 512), CUDA-core decode, the pipelined tile kernel (T >= 128), the older
  mma.sync tile kernel with and without split-K;
* ``fused+quant``  ``run_nvfp4_fused_router`` from bf16 activations, its default path: the fused
  one-kernel quantizer (``kernels.router.quant``), then the kernel as its programmatic dependent
  (SM90+: weight loads overlap the quantizer; ``fused+quant, no PDL``: ``GPUREPRO_ROUTER_PDL=0``) (with
  ``GPUREPRO_ROUTER_INKERNEL_QUANT=1``, at T=1 the GEMV kernel quantizing in its own launch; the
  PyTorch quantizer when ``GPUREPRO_ROUTER_FUSED_QUANT=0``);
* ``fused+quant, calibrated`` the same with the layer's calibrated activation scale
  (``input_global_scale``, as a checkpoint's static input scale: here the input's own dynamic
  scale, so the same codes): the quantizer needs no pass for the max, and at 1 < T <= 8 the
  default path is the swap-AB kernel quantizing its tokens itself (no quantizer launch);
* ``one launch``   (T <= 8) the same from bf16 with the calibrated scale and
  ``GPUREPRO_ROUTER_INKERNEL_QUANT=1`` (``--one-launch-mode``: or ``halves`` / ``quarters``, the
  GEMV's 2- / 4-thread forms): the GEMV (T=1) or swap-AB kernel quantizing its tokens in
  its own launch (``kernels.router.SWAPAB_QUANT_MAX_TOKENS``), no quantizer launch (the swap-AB
  one is the default path, so ``fused+quant, calibrated`` at 1 < T <= 8 is the same path);
* ``torchq+route`` the same with the PyTorch quantizer of ``kernels.nvfp4`` (~20 elementwise kernels);
* ``quant``        the fused quantizer alone (``quant, calibrated``: with the calibrated scale);
* ``bf16``         cuBLAS bf16 GEMM (x @ W^T, W in bf16) + softmax + ``torch.topk``;
* ``deq``          NVFP4 weight dequantization (PyTorch, to bf16) + cuBLAS bf16 GEMM + softmax + topk.

GB/s = the bytes the fused kernel must read (FP4 codes + E4M3 scales of the weight, the NVFP4
activation) / time, next to a measured device-to-device copy (bytes read + written / time);
TFLOP/s = 2 T E K / time.  Writes ``router_bench.{md,json}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import types
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from kernels import router  # noqa: E402
from kernels.nvfp4 import compute_global_scale, dequantize_nvfp4  # noqa: E402
from kernels.router.gemv import compile_gemv, pick_gemv  # noqa: E402
from kernels.router.staged import compile_staged, pick_staged  # noqa: E402
from kernels.router.launch import compile_swapab, current_stream, gemv_args, pick_swapab, plan_portable  # noqa: E402
from kernels.router.launch import portable_args  # noqa: E402
from kernels.router.portable import compile_portable  # noqa: E402
from kernels.router.launch import staged_args, tile_launcher  # noqa: E402
from kernels.router.tile import device_tile_grid  # noqa: E402
from kernels.router.quant import quantize_activation_fused  # noqa: E402


def tile_grid(t: int, e: int, hidden: int, dev) -> str:
    """The tile kernel's grid for a problem: its split count, or "sk<CTAs>" for the stream-K grid."""
    kind, g1, _ = device_tile_grid(t, e, hidden, dev)
    return f"sk{g1}" if kind == "stream_k" else str(g1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from router_validate import make_layer, make_tokens  # noqa: E402


def time_us(fns, reps: int):
    """GPU time per call: the calls ``fns`` (one per layer copy) captured in one CUDA graph,
    replayed ``reps`` times (median), so Python and launch overhead on the host do not count.
    Falls back to timing an eager loop when capture fails.  Returns (microseconds, "graph" | "eager")."""
    iters = len(fns)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    mode = "graph"
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for fn in fns:
                fn()
        run = g.replay
    except Exception as exc:  # noqa: BLE001 - report and time eagerly
        print(f"graph capture failed ({type(exc).__name__}: {exc}); timing eagerly", flush=True)
        torch.cuda.synchronize()
        mode = "eager"

        def run():
            for fn in fns:
                fn()
    run()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        e.synchronize()
        out.append(s.elapsed_time(e) * 1000.0 / iters)
    return statistics.median(out), mode


def no_pdl():
    """``GPUREPRO_ROUTER_PDL=0`` while a launcher is called (the launch without PDL)."""
    return mock.patch.dict(os.environ, {"GPUREPRO_ROUTER_PDL": "0"})


def one_launch(mode: str = "1"):
    """``GPUREPRO_ROUTER_INKERNEL_QUANT=mode`` while a launcher is called (the kernel quantizes itself;
    "halves" / "quarters": the GEMV in that form at T=1)."""
    return mock.patch.dict(os.environ, {"GPUREPRO_ROUTER_INKERNEL_QUANT": mode})


def copy_GBps(dev) -> float:
    """Device-to-device copy of 1 GiB (float32), bytes read + written per second (median of 10)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    us, _ = time_us([lambda: dst.copy_(src)] * 4, 10)
    return 2 * (1 << 30) / us / 1e3


def layer_copy(layer):
    """A layer object the launchers accept, with its own copy of the weight buffers."""
    return types.SimpleNamespace(_mat_b=layer._mat_b.clone(), _scale_b=layer._scale_b.clone(),
                                 _global_scale_b=layer._global_scale_b, out_features=layer.out_features,
                                 in_features=layer.in_features, finalize_weights=lambda: None,
                                 input_global_scale=layer.input_global_scale,
                                 activation_global_scale=layer.activation_global_scale)


def calibrated(layer, scale):
    """``layer`` (a :func:`layer_copy`: the same weight buffers) with the activation scale ``scale``
    (a device tensor: no host copy while a graph is captured), for the fused quantizer
    (``input_global_scale``) and the PyTorch one (``activation_global_scale``) alike."""
    return types.SimpleNamespace(**{**vars(layer), "input_global_scale": scale,
                                    "activation_global_scale": lambda x: scale})


def write_results(rows, name, a, copy, floor) -> str:
    """router_bench.{md,json} in ``a.out`` from the rows so far (called after every row: a run cut
    short still leaves its rows)."""
    def f(r, key):
        v = r.get(key + "_us")
        return "-" if v is None else f"{v:.1f}"

    lines = [
        f"device: {name}; hidden={a.hidden}, top_k={a.topk}, {a.scoring}; GPU time per call in us: one CUDA graph "
        f"of {a.layers} calls over {a.layers} weight copies (weights from HBM), median of {a.reps} replays / "
        f"{a.layers}; device copy {copy:.0f} GB/s (read + write); a one-element elementwise kernel in the same "
        f"harness: {floor:.2f} us; fused GB/s = FP4 weight + scales + NVFP4 "
        "activation bytes / time; quant = the fused activation quantizer alone (quantizer of fused+quant: "
        + ", ".join(f"T={t}: {q}" for t, q in sorted({(r['T'], r.get('quantizer')) for r in rows}))
        + f"), one launch = GPUREPRO_ROUTER_INKERNEL_QUANT={a.one_launch_mode}"
        + ", torchq+route = the PyTorch quantizer + the kernel",
        "",
        "| T | E | kernel | fused | swapab | staged | gemv | tile (splits; skN: stream-K on N CTAs) | mma (split-K) | mma, no split | quant | quant, calibrated | fused+quant "
        "| fused+quant, no PDL | fused+quant, calibrated | one launch, calibrated | torchq+route "
        "| bf16 GEMM+topk | deq+GEMM+topk | bf16/fused | deq/fused | quant+route/route | no PDL: quant+route/route "
        "| calibrated: quant+route/route | one launch/route | torchq+route/route | fused GB/s | % of copy | TFLOP/s |",
        "|" + "---|" * 29,
    ]
    for r in rows:
        qr = r.get("quant+route/route")
        tq = r.get("torchq+route/route")
        qn = r.get("quant+route/route, no PDL")
        qc = r.get("quant+route/route, calibrated")
        ol = r.get("one launch/route")
        lines.append(f"| {r['T']} | {r['E']} | {r['kernel']} | {f(r, 'fused')} | {f(r, 'swapab')} | {f(r, 'staged')} | {f(r, 'gemv')} | {f(r, 'tile')} ({r['tile_splits']}) | {f(r, 'mma')} "
                     f"({r['splits']}) | {f(r, 'mma_nosplit')} | {f(r, 'quant')} | {f(r, 'quant_cal')} | {f(r, 'fused+quant')} | "
                     f"{f(r, 'fused+quant_nopdl')} | {f(r, 'fused+quant_cal')} | {f(r, 'one_launch')} | {f(r, 'torchq+route')} | "
                     f"{f(r, 'bf16')} | "
                     f"{f(r, 'deq')} | {r['bf16/fused']:.2f} | {r['deq/fused']:.2f} | "
                     f"{'-' if qr is None else f'{qr:.2f}'} | {'-' if qn is None else f'{qn:.2f}'} | "
                     f"{'-' if qc is None else f'{qc:.2f}'} | {'-' if ol is None else f'{ol:.2f}'} | "
                     f"{'-' if tq is None else f'{tq:.2f}'} | {r['fused_GBps']:.0f} | "
                     f"{100 * r['fused_GBps'] / copy:.0f} | {r['fused_TFLOPs']:.1f} |")
    md = "\n".join(lines)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "router_bench.md"), "w") as fh:
        fh.write(md + "\n")
    with open(os.path.join(a.out, "router_bench.json"), "w") as fh:
        json.dump({"device": name, "copy_GBps": copy, "graph_kernel_floor_us": floor, "rows": rows}, fh, indent=1)
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 7, 128, 4096])
    p.add_argument("--experts", type=int, nargs="+", default=[256, 384])
    p.add_argument("--topk", type=int, default=6)
    p.add_argument("--scoring", default="softmax")
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--layers", type=int, default=64, help="weight copies rotated through (>= 64 keeps them out of L2)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--skip", nargs="*", default=[], help="paths not to time (mma_nosplit, fused+quant, ...)")
    p.add_argument("--one-launch-mode", default="1", choices=("1", "halves", "quarters"),
                   help="GPUREPRO_ROUTER_INKERNEL_QUANT of the one-launch path (T=1: the GEMV's quantizing form)")
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    copy_GBps(dev)  # warm-up: the first copy runs at idle clocks
    copy = copy_GBps(dev)
    tiny = torch.zeros(1, device=dev)
    floor, _ = time_us([lambda: tiny.add_(1)] * a.layers, a.reps)  # one minimal kernel node of a graph
    print(f"device: {name}; hidden={a.hidden} top_k={a.topk} scoring={a.scoring}; device copy {copy:.0f} GB/s; "
          f"a one-element kernel in the same graph harness {floor:.2f} us", flush=True)
    renorm = router.default_renormalize(a.scoring)
    rows = []
    for e in a.experts:
        base = make_layer(e, a.hidden, seed=e, device=dev)
        layers = [layer_copy(base) for _ in range(a.layers)]
        w_bf16 = [base.weight.detach().to(torch.bfloat16).clone() for _ in range(a.layers)]
        scales_rm = base.weight_scales()  # row-major scales, as a dequant kernel would read them
        deq_w = [(lay._mat_b, scales_rm.clone()) for lay in layers]
        fp4_bytes = base._mat_b.numel() + base._scale_b.numel()
        for t in a.tokens:
            x = make_tokens(t, a.hidden, seed=1000 + t, device=dev)
            act = router.prepare_activation(x, base)
            act_bytes = act[0].numel() + act[1].numel()
            paths = {}

            def launchers(make):
                out = []
                for lay in layers:
                    fn, args = make(lay)
                    out.append(lambda fn=fn, args=args: fn(*args[:-1], current_stream(dev)))
                return out

            def gemv_make(lay):
                tm, rb = pick_gemv(t, e)
                args, _, _ = gemv_args(act, lay, a.topk, tm)
                return compile_gemv(a.topk, a.scoring, renorm, e, tm, rb, args), args

            def swapab_make(lay):
                fn, args, _, _ = compile_swapab(act, lay, a.topk, a.scoring, renorm, pick_swapab(t, lay, dev))
                return fn, args

            def staged_make(lay):
                em, tn, ks = pick_staged(t, e, a.hidden)
                args, _, _ = staged_args(act, lay, a.topk, tn, ks)
                return compile_staged(a.topk, a.scoring, renorm, e, em, tn, ks, args), args

            def mma_make(split):
                def make(lay):
                    bm, threads, splits, per = plan_portable(t, a.hidden, split_k=split, experts=e)
                    args, _, _ = portable_args(act, lay, a.topk, splits, per, bm)
                    return compile_portable(a.topk, a.scoring, renorm, bm, threads, args, split_k=splits > 1), args
                return make

            chosen = router.choose_kernel(t, e)
            if t >= 128:
                # the tile kernel and its route kernel (two launches)
                paths["tile"] = [tile_launcher(act, lay, a.topk, a.scoring, renorm)[0] for lay in layers]
            if t <= 512:
                paths["swapab"] = launchers(swapab_make)
                if t >= 32:
                    paths["staged"] = launchers(staged_make)
                paths["gemv"] = launchers(gemv_make)
            paths["mma"] = launchers(mma_make(None))
            if "mma_nosplit" not in a.skip:
                paths["mma_nosplit"] = launchers(mma_make(False))
            paths["fused"] = paths[chosen]  # timed again: the table's "fused" column, one more sample

            def quant_route(lay):
                return lambda: router.run_nvfp4_fused_router(x, lay, a.topk, a.scoring, path="portable")

            def torch_quant_route(lay):
                return lambda: router.run_nvfp4_fused_router(
                    x, lay, a.topk, a.scoring, path="portable", activation=router.prepare_activation(x, lay, fused=False))

            def quant_route_nopdl(lay):
                def call():
                    with no_pdl():
                        return router.run_nvfp4_fused_router(x, lay, a.topk, a.scoring, path="portable")
                return call

            def quant_route_one_launch(lay):
                def call():
                    with one_launch(a.one_launch_mode):
                        return router.run_nvfp4_fused_router(x, lay, a.topk, a.scoring, path="portable")
                return call

            scale = compute_global_scale(x)  # what a calibration on this input would give
            cal_layers = [calibrated(lay, scale) for lay in layers]
            if "fused+quant" not in a.skip:
                paths["fused+quant"] = [quant_route(lay) for lay in layers]
                paths["fused+quant_nopdl"] = [quant_route_nopdl(lay) for lay in layers]
                paths["fused+quant_cal"] = [quant_route(lay) for lay in cal_layers]
            one = None  # the one-launch path's quantizer ("in-kernel" where the kernel quantized itself)
            if "one_launch" not in a.skip and t <= router.SWAPAB_QUANT_MAX_TOKENS:
                paths["one_launch"] = [quant_route_one_launch(lay) for lay in cal_layers]
                quant_route_one_launch(cal_layers[0])()
                one = router.last_quantizer
            if "torchq+route" not in a.skip:
                paths["torchq+route"] = [torch_quant_route(lay) for lay in layers]
            if "quant" not in a.skip:
                paths["quant"] = [lambda: router.prepare_activation(x, base)] * a.layers
                paths["quant_cal"] = [lambda: quantize_activation_fused(x, scale, base._global_scale_b)] * a.layers
            router.run_nvfp4_fused_router(x, base, a.topk, a.scoring, path="portable")
            quantizer = router.last_quantizer  # fused+quant's: "in-kernel" (the GEMV), "fused" or "torch"
            pdl = router.last_pdl  # fused+quant's kernel launched as the quantizer's programmatic dependent

            def topk(logits):
                probs = torch.softmax(logits.float(), dim=-1)
                return torch.topk(probs, a.topk, dim=-1)

            paths["bf16"] = [lambda w=w: topk(x @ w.t()) for w in w_bf16]

            def deq(mat, sc):
                wd = dequantize_nvfp4(mat, sc, base._global_scale_b, dtype=torch.bfloat16)
                return topk(x @ wd.t())

            paths["deq"] = [lambda m=m, sc=sc: deq(m, sc) for m, sc in deq_w]
            paths = {key: fns for key, fns in paths.items() if key == "fused" or key not in a.skip}
            r = {"T": t, "E": e, "k": a.topk, "kernel": chosen, "layers": a.layers, "quantizer": quantizer,
                 "splits": plan_portable(t, a.hidden, experts=e)[2], "tile_splits": tile_grid(t, e, a.hidden, dev)}
            for key, fns in paths.items():
                r[key + "_us"], r[key + "_timing"] = time_us(fns, a.reps)
            fus = r["fused_us"]
            r["bf16/fused"] = r["bf16_us"] / fus if "bf16_us" in r else float("nan")
            r["deq/fused"] = r["deq_us"] / fus if "deq_us" in r else float("nan")
            if "fused+quant_us" in r:
                r["quant+route/route"] = r["fused+quant_us"] / fus
                r["quant+route/route, no PDL"] = r["fused+quant_nopdl_us"] / fus
                r["quant+route/route, calibrated"] = r["fused+quant_cal_us"] / fus
            if "one_launch_us" in r:
                r["one launch/route"] = r["one_launch_us"] / fus
                r["one_launch_quantizer"] = one
                r["one_launch_mode"] = a.one_launch_mode
            r["pdl"] = pdl
            if "torchq+route_us" in r:
                r["torchq+route/route"] = r["torchq+route_us"] / fus
            r["fused_GBps"] = (fp4_bytes + act_bytes) / fus / 1e3
            r["copy_GBps"] = copy
            r["graph_kernel_floor_us"] = floor
            r["fused_TFLOPs"] = 2 * t * e * a.hidden / fus / 1e6
            if "bf16_us" in r:
                r["bf16_GBps"] = (w_bf16[0].numel() * 2 + x.numel() * 2) / r["bf16_us"] / 1e3
            rows.append(r)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
            del paths
            md = write_results(rows, name, a, copy, floor)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
