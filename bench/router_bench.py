"""Benchmark the fused NVFP4 router against unfused paths on one GPU (not a test).

    python bench/router_bench.py [--out DIR] [--tokens 1 7 128 4096] [--experts 256 384] [--topk 6]

Per (T, E) it times, with CUDA events (median of ``--reps`` runs of ``--iters`` calls each):

* ``fused``       the fused kernel alone, activations already quantized to NVFP4;
* ``fused+quant`` the same plus the activation quantization (the PyTorch quantizer of
  ``kernels.nvfp4``, several elementwise kernels) -- what ``run_nvfp4_fused_router`` does;
* ``bf16``        cuBLAS bf16 GEMM (x @ W^T, W in bf16) + softmax + ``torch.topk``;
* ``deq``         NVFP4 weight dequantization (PyTorch, to bf16) + cuBLAS bf16 GEMM + softmax + topk.

It reports each time, the ratio baseline / fused, and the achieved bandwidth against the weight
bytes each path reads: FP4 codes + E4M3 scales for ``fused`` and ``deq``, bf16 for ``bf16``.
Writes ``router_bench.{md,json}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from kernels import router  # noqa: E402
from kernels.nvfp4 import dequantize_nvfp4  # noqa: E402
from kernels.router.launch import current_stream, plan_portable, portable_args  # noqa: E402
from kernels.router.portable import compile_portable  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from router_validate import make_layer, make_tokens  # noqa: E402


def time_us(fn, iters: int, reps: int):
    """GPU time per call: ``iters`` calls captured in one CUDA graph, replayed ``reps`` times
    (median), so Python and launch overhead on the host do not count.  Falls back to timing an
    eager loop when capture fails.  Returns (microseconds, "graph" | "eager")."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    mode = "graph"
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(iters):
                fn()
        run = g.replay
    except Exception as exc:  # noqa: BLE001 - report and time eagerly
        print(f"graph capture failed ({type(exc).__name__}: {exc}); timing eagerly", flush=True)
        torch.cuda.synchronize()
        mode = "eager"

        def run():
            for _ in range(iters):
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 7, 128, 4096])
    p.add_argument("--experts", type=int, nargs="+", default=[256, 384])
    p.add_argument("--topk", type=int, default=6)
    p.add_argument("--scoring", default="softmax")
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name}; hidden={a.hidden} top_k={a.topk} scoring={a.scoring}")
    renorm = router.default_renormalize(a.scoring)
    rows = []
    for e in a.experts:
        layer = make_layer(e, a.hidden, seed=e, device=dev)
        w_bf16 = layer.weight.detach()
        scales_rm = layer.weight_scales()  # row-major scales, as a dequant kernel would read them
        fp4_bytes = layer._mat_b.numel() + layer._scale_b.numel()
        bf16_bytes = w_bf16.numel() * 2
        for t in a.tokens:
            x = make_tokens(t, a.hidden, seed=1000 + t, device=dev)
            act = router.prepare_activation(x, layer)
            kernels_ = {}
            for split in (None, False):
                bm, threads, splits, per = plan_portable(t, a.hidden, split_k=split, experts=e)
                args, _, _ = portable_args(act, layer, a.topk, splits, per, bm)
                fn = compile_portable(a.topk, a.scoring, renorm, bm, threads, args, split_k=splits > 1)
                kernels_[split] = (fn, args, splits)

            def launcher(split):
                fn, args, _ = kernels_[split]

                def call():  # the stream is taken at call time: graph capture runs on a side stream
                    fn(*args[:-1], current_stream(dev))
                return call

            fused, fused_nosplit = launcher(None), launcher(False)

            def fused_quant():
                act2 = router.prepare_activation(x, layer)
                router.run_nvfp4_fused_router(x, layer, a.topk, a.scoring, path="portable", activation=act2)

            def topk(logits):
                probs = torch.softmax(logits.float(), dim=-1)
                return torch.topk(probs, a.topk, dim=-1)

            def bf16():
                return topk(x @ w_bf16.t())

            def deq():
                wd = dequantize_nvfp4(layer._mat_b, scales_rm, layer._global_scale_b, dtype=torch.bfloat16)
                return topk(x @ wd.t())

            r = {"T": t, "E": e, "k": a.topk, "splits": kernels_[None][2]}
            for key, f in (("fused", fused), ("fused_nosplit", fused_nosplit), ("fused+quant", fused_quant),
                           ("bf16", bf16), ("deq", deq)):
                r[key + "_us"], r[key + "_timing"] = time_us(f, a.iters, a.reps)
            r["bf16/fused"] = r["bf16_us"] / r["fused_us"]
            r["deq/fused"] = r["deq_us"] / r["fused_us"]
            r["fused_GBps"] = fp4_bytes / r["fused_us"] / 1e3
            r["bf16_GBps"] = bf16_bytes / r["bf16_us"] / 1e3
            r["deq_GBps"] = fp4_bytes / r["deq_us"] / 1e3
            rows.append(r)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    lines = [
        f"device: {name}; hidden={a.hidden}, top_k={a.topk}, {a.scoring}; GPU time per call in us (CUDA graph of "
        f"{a.iters} calls, median of {a.reps} replays; modes in the json); "
        "GB/s = weight bytes the path reads / time (FP4+scales for fused and deq, bf16 for bf16)",
        "",
        "| T | E | fused (splits) | fused, no split-K | fused+quant | bf16 GEMM+topk | deq+GEMM+topk | bf16/fused | deq/fused | fused GB/s | bf16 GB/s | deq GB/s |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        lines.append(f"| {r['T']} | {r['E']} | {r['fused_us']:.1f} ({r['splits']}) | {r['fused_nosplit_us']:.1f} | "
                     f"{r['fused+quant_us']:.1f} | {r['bf16_us']:.1f} | "
                     f"{r['deq_us']:.1f} | {r['bf16/fused']:.2f} | {r['deq/fused']:.2f} | {r['fused_GBps']:.0f} | "
                     f"{r['bf16_GBps']:.0f} | {r['deq_GBps']:.0f} |")
    md = "\n".join(lines)
    print(md)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "router_bench.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(a.out, "router_bench.json"), "w") as f:
        json.dump({"device": name, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
