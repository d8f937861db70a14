"""``python -m kernels.debug [--fault STAGE[:scale=F|:noise=R|:nan]] [--seed N] [--device D] [--plain]``.

Exit status: 0 when every stage is within its threshold, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import STAGES, MoEConfig, debug_layer, nan_fault, noise_fault, scale_fault


def _parse_fault(spec: str):
    stage, _, kind = spec.partition(":")
    if stage not in STAGES:
        raise argparse.ArgumentTypeError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    kind = kind or "scale=10"
    if kind == "nan":
        return stage, nan_fault()
    key, _, val = kind.partition("=")
    if key == "scale":
        return stage, scale_fault(float(val))
    if key == "noise":
        return stage, noise_fault(float(val))
    raise argparse.ArgumentTypeError(f"unknown fault kind {kind!r} (scale=F, noise=R or nan)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.debug", description=__doc__)
    p.add_argument("--fault", action="append", type=_parse_fault, default=[], help="plant a fault (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threshold", type=float, default=None, help="one chained threshold for every stage")
    p.add_argument("--local-threshold", type=float, default=None, help="one local threshold for every stage")
    p.add_argument("--plain", action="store_true", help="plain table even if rich is installed")
    p.add_argument("-v", "--verbose", action="store_true", help="show Nvfp4Linear path messages")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.ERROR, format="%(name)s: %(message)s")
    cfg = MoEConfig(num_experts=a.experts, top_k=a.top_k)
    report = debug_layer(config=cfg, seed=a.seed, tokens=a.tokens, device=a.device, faults=dict(a.fault),
                         threshold=a.threshold, local_threshold=a.local_threshold, use_rich=False if a.plain else None)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
