"""Validate the fused NVFP4 router kernel against the two-kernel reference on a GPU.

    python bench/router_validate.py [--out DIR] [--tokens 1 7 128 4096] [--experts 256 384] [--topk 6 8]

For every (T, E, k, scoring) it runs ``run_nvfp4_fused_router`` and compares it with the NVFP4
GEMM reference + ``torch.topk`` (``kernels.router.compare_routing``): ids must be identical except
where the two experts' reference logits tie (exactly, or within ``tie_rel * max|logit|``: the
kernel sums K=7168 products in another order), weights within ``--weight-tol``.
Prints a markdown table, writes ``router_validation.{md,json}`` to ``--out``; exit 1 on a failure.
Not a test: it needs a CUDA GPU and nvidia-cutlass-dsl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from kernels.nvfp4 import Nvfp4Linear  # noqa: E402
from kernels import router  # noqa: E402


def make_layer(e: int, hidden: int, seed: int, device) -> Nvfp4Linear:
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(e, hidden, generator=g) / hidden ** 0.5
    return Nvfp4Linear(w.to(device)).finalize_weights()


def make_tokens(t: int, hidden: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(t, hidden, generator=g).to(device, torch.bfloat16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 7, 128, 4096])
    p.add_argument("--experts", type=int, nargs="+", default=[256, 384])
    p.add_argument("--topk", type=int, nargs="+", default=[6, 8])
    p.add_argument("--scorings", nargs="+", default=["softmax", "sigmoid"])
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--path", default=None, help="force a path (portable, sm100, reference)")
    p.add_argument("--split-k", choices=["auto", "off", "both"], default="both",
                   help="portable path: the kernel the router picks (auto), the mma.sync kernel without split-K "
                        "(off), or both")
    p.add_argument("--kernel", default=None, help="portable path: force gemv, swapab, staged, tile or mma")
    p.add_argument("--weight-tol", type=float, default=1e-4)
    p.add_argument("--tie-rel", type=float, default=1e-5)
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)} cc={torch.cuda.get_device_capability(dev)} torch {torch.__version__}")
    rows = []
    failed = 0
    for e in a.experts:
        layer = make_layer(e, a.hidden, seed=e, device=dev)
        for t in a.tokens:
            x = make_tokens(t, a.hidden, seed=1000 + t, device=dev)
            ref_logits = router.router_logits_reference(x, layer)
            modes = {"auto": [None], "off": [False], "both": [None, False]}[a.split_k]
            for k, scoring, split in [(k, s, m) for k in a.topk for s in a.scorings for m in modes]:
                t0 = time.time()
                ids, w = router.run_nvfp4_fused_router(x, layer, k, scoring, path=a.path, split_k=split,
                                                      kernel=None if split is False else a.kernel)
                torch.cuda.synchronize()
                dt = time.time() - t0
                c = router.compare_routing(ids, w, ref_logits, k, scoring, tie_rel=a.tie_rel)
                ok = c.ok and c.max_weight_err <= a.weight_tol
                failed += not ok
                path = router.last_path
                if path == "portable" and router.last_kernel == "swapab":
                    from kernels.router.launch import pick_swapab

                    sc = pick_swapab(t, layer, dev)
                    path = (f"swapab nt={sc.nt} ksplit={sc.ksplit} mw={sc.mw} uw={sc.uw} warps={sc.warps}"
                            f" spread={sc.spread} pair={int(sc.pair)}")
                elif path == "portable" and router.last_kernel == "staged":
                    from kernels.router.staged import pick_staged

                    em, tn, ks = pick_staged(t, e, a.hidden)
                    path = f"staged {em}x{tn} ksplit={ks}"
                elif path == "portable" and router.last_kernel == "gemv":
                    from kernels.router.gemv import pick_gemv

                    tm, rb = pick_gemv(t, e)
                    path = f"gemv tm={tm} rb={rb}"
                elif path == "portable" and router.last_kernel == "tile":
                    from kernels.router.tile import device_tile_grid

                    kind, g1, g2 = device_tile_grid(t, e, a.hidden, dev)
                    path = f"tile stream-K ctas={g1} slots={g2}" if kind == "stream_k" else f"tile splits={g1}"
                elif path == "portable":
                    from kernels.router.launch import plan_portable

                    bm, _, splits, _ = plan_portable(t, a.hidden, split_k=split, experts=e)
                    path = f"mma bm={bm} splits={splits}"
                row = {"T": t, "E": e, "k": k, "scoring": scoring, "path": path, "quantizer": router.last_quantizer,
                       **c.as_dict(),
                       "pass": ok, "first_call_s": round(dt, 2)}
                rows.append(row)
                print(f"T={t:5d} E={e} k={k} {scoring:8s} path={path} quant={router.last_quantizer} mism={c.id_mismatches} "
                      f"exact_ties={c.exact_ties} near_ties={c.near_ties} real={c.real_mismatches} "
                      f"max_w_err={c.max_weight_err:.2e} {'PASS' if ok else 'FAIL'} ({dt:.1f}s)", flush=True)
    head = ("| T | E | k | scoring | path | quantizer | id mismatches | exact ties | near ties | wrong ids "
            "| max weight err | result |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['T']} | {r['E']} | {r['k']} | {r['scoring']} | {r['path']} | {r['quantizer']} | {r['id_mismatches']} | "
                     f"{r['exact_ties']} | {r['near_ties']} | {r['real_mismatches']} | {r['max_weight_err']:.2e} | "
                     f"{'pass' if r['pass'] else 'FAIL'} |")
    md = "\n".join(lines)
    print(md)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "router_validation.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(a.out, "router_validation.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(dev), "rows": rows}, f, indent=1)
    print(f"{len(rows) - failed}/{len(rows)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
