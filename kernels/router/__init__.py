"""Fused NVFP4 MoE router: NVFP4 GEMM (tokens x hidden against the router weight) with top-k
selection fused into the epilogue.

``run_nvfp4_fused_router(x, linear, top_k=6, scoring="softmax")`` returns
``(topk_ids int32 [T, k], topk_weights float32 [T, k])``.  It picks the kernel by device:

* SM100/SM103 (``kernels.router.sm100``): tcgen05 block-scaled MMA.  Compiles for ``sm_100a``;
  never run here (no SM100 GPU), so the wrapper does not select it unless
  ``GPUREPRO_ROUTER_SM100=1``.
* SM80 and later, SM90 and SM120/SM121 included, three portable kernels (``choose_kernel``):
  ``GemvRouterKernel`` (``kernels.router.gemv``, CUDA cores) for one token,
  ``MmaGemvRouterKernel`` (same module, ``mma.sync`` with experts as M) up to
  ``SWAPAB_MAX_TOKENS``, both with the top-k in the same launch; above that
  ``kernels.router.tile`` (cp.async ring of packed operands, decode once per tile to fp16,
  ``ldmatrix`` + ``mma.sync``, split-K partials routed by a second launch);
  ``kernels.router.portable`` (the older ``mma.sync`` tile kernel) and ``kernels.router.staged``
  (swap-AB with each operand decoded once per CTA into shared memory: slower than swap-AB on the
  H200, see ``bench/results/h200/``) only when forced.
* anything else (CPU, no ``nvidia-cutlass-dsl``, shapes a kernel does not take): the
  two-kernel reference (``kernels.router.reference``), announced once on logger
  ``kernels.router``.

Importing this package imports torch but not cutlass; the kernels import it on first use.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

import torch

from .reference import (
    SCORINGS,
    RoutingComparison,
    check_scoring,
    compare_routing,
    default_renormalize,
    reference_router,
    router_logits_reference,
    topk_from_logits,
    weights_for_ids,
)
from .topk import global_expert_index, merge_topk, sorted_insert, topk_of

logger = logging.getLogger("kernels.router")
_announced: set = set()
last_path: Optional[str] = None  #: "portable", "sm100" or "reference: <why>" of the latest call
last_kernel: Optional[str] = None  #: "gemv", "swapab", "staged", "tile" or "mma" when the latest call took the portable path
last_quantizer: Optional[str] = None  #: "fused" (one-kernel quantizer), "torch" (latest prepare_activation) or "in-kernel" (the GEMV or swap-AB kernel quantized)
last_pdl: bool = False  #: the latest call launched its kernel as a programmatic dependent of the fused quantizer
last_operands: bool = False  #: the latest call handed the tokens over as the swap-AB kernel's fp16 operands
last_form: str = ""  #: the GEMV's quantizing form (``gemv.GEMV_QUANT_FORMS``) when the latest call took it

#: crossovers measured on the H200 (bench/results/h200/): the CUDA-core GEMV kernel is the fastest
#: for one token (3.9 / 4.4 us at E=256 / 384, swap-AB 4.8 / 5.3), the tensor-core "swap-AB" decode
#: kernel from 2 tokens up to SWAPAB_MAX_TOKENS (T=7: 5.2 us, GEMV 6.2; T=512: 25.8 / 36.6 us, the
#: pipelined tile kernel 39.6 / 40.7 with 4 splits), the pipelined tile kernel above (T=4096: 65 us
#: at E=256)
GEMV_MAX_TOKENS = 1
SWAPAB_MAX_TOKENS = 512


def choose_kernel(num_tokens: int, experts: int) -> str:
    """The portable kernel for a problem: "gemv" / "swapab" (decode sizes) or "tile" (the pipelined
    tensor-core kernel of ``kernels.router.tile``)."""
    if experts % 32 or experts > 2048:
        return "tile"
    if num_tokens <= GEMV_MAX_TOKENS:
        return "gemv"
    if num_tokens <= SWAPAB_MAX_TOKENS:
        return "swapab"
    return "tile"


def _announce(path: str) -> None:
    if path in _announced:
        return
    _announced.add(path)
    if path.startswith("reference"):
        logger.warning("fused NVFP4 router: %s", path)
    else:
        logger.info("fused NVFP4 router: using the %s kernel", path)


def cutlass_dsl_available() -> bool:
    try:
        import cutlass  # noqa: F401
        import cutlass.cute  # noqa: F401
    except Exception:
        return False
    return True


def shape_problem(linear, top_k: int) -> Optional[str]:
    """Why the kernels cannot take this layer (None when they can)."""
    n, k = linear.out_features, linear.in_features
    if n % 128:
        return f"E={n} is not a multiple of 128"
    if k % 64:
        return f"hidden={k} is not a multiple of 64"
    if not 1 <= top_k <= 16:
        return f"top_k={top_k} is outside 1..16"
    return None


def choose_path(x: torch.Tensor, linear, top_k: int) -> str:
    if x.device.type != "cuda":
        return f"reference: input on {x.device.type}, the kernels need CUDA"
    why = shape_problem(linear, top_k)
    if why:
        return f"reference: {why}"
    if not cutlass_dsl_available():
        return "reference: nvidia-cutlass-dsl is not installed"
    major, minor = torch.cuda.get_device_capability(x.device)
    if major == 10 and os.environ.get("GPUREPRO_ROUTER_SM100") == "1":
        return "sm100"
    if major >= 8:
        return "portable"
    return f"reference: compute capability {major}.{minor} is below 8.0"


#: the swap-AB kernel quantizes its own tokens (with the layer's calibrated scale) up to this many: one
#: 8-token n-tile, each lane quantizing the blocks of one token per K unit
SWAPAB_QUANT_MAX_TOKENS = 8


def inkernel_quant_mode() -> str:
    """``GPUREPRO_ROUTER_INKERNEL_QUANT``: where the kernel that routes quantizes bf16 activations
    in its own launch instead of after the fused quantizer's.

    * ``auto`` (default): the swap-AB kernel up to ``SWAPAB_QUANT_MAX_TOKENS`` tokens with the
      layer's calibrated activation scale (H200, 2026-12-05: T=7 5.94 / 6.60 us at E=256 / 384
      against 6.22 / 7.08 for the quantizer + the kernel as its dependent, 1.19x / 1.14x route alone);
    * ``1``: also the GEMV kernel at T=1 (measured no faster: 4.85-4.93 against 4.93 us at E=256,
      6.1-6.3 against 5.38 at E=384);
    * ``halves`` / ``quarters``: as ``1``, the GEMV quantizing with two / four threads per 32-element
      chunk (``gemv.pick_gemv_quant``; the calibrated scale only, the dynamic one takes ``1``'s form).
      Built 2026-12-05 without a device: not measured yet, so not in ``auto``;
    * ``0``: never.

    The tile kernel's own quantization (``launch.run_tile_quant``) is not among them: it measured
    slower than the quantizer + tile kernel (T=4096: 114.6 / 162.8 against 92.6 / 128.7 us)."""
    mode = os.environ.get("GPUREPRO_ROUTER_INKERNEL_QUANT", "auto")
    return mode if mode in ("0", "1", "halves", "quarters") else "auto"


def operand_handoff_enabled() -> bool:
    """``GPUREPRO_ROUTER_OPERAND_HANDOFF=1``: where the swap-AB kernel routes, the fused quantizer
    writes the tokens as that kernel's fp16 MMA operands (``[T, K/2]`` int32, 4x the codes' bytes)
    and the kernel loads them as they are, without decoding them (at T=128 the token decode is
    half of the swap-AB kernel's decode, and its loop is bound by its decode instructions).  Off
    by default: slower on the H200 (T=128, E=256 10.61 against 9.63 us) except in the E=384
    cluster pairs (11.21 against 11.64, one call)."""
    return os.environ.get("GPUREPRO_ROUTER_OPERAND_HANDOFF", "0") == "1"


def l2_prefetch_enabled() -> bool:
    """``GPUREPRO_ROUTER_L2_PREFETCH=1``: from bf16 (SM90+), the fused quantizer also pulls the
    router's weights into L2 while it runs (``quant.PrefetchingQuantKernel``): the kernel after it
    cannot start its own weight loads until the quantizer's CTAs leave the SMs it needs.  Off by
    default: no gain on the H200 (T=128, E=256 9.58 against 9.61 us; slower at T <= 7)."""
    return os.environ.get("GPUREPRO_ROUTER_L2_PREFETCH", "0") == "1"


def fused_quant_enabled() -> bool:
    """The fused activation quantizer is the default; ``GPUREPRO_ROUTER_FUSED_QUANT=0`` turns it off."""
    return os.environ.get("GPUREPRO_ROUTER_FUSED_QUANT", "1") != "0"


def prepare_activation(x: torch.Tensor, linear, fused: Optional[bool] = None, operands: bool = False,
                       prefetch: bool = False):
    """NVFP4 activations as the kernels read them: ``(packed uint8 [T, K/2], scales uint8 [T, K/16], g_a)``,
    plus ``alpha = g_a * g_b`` as a 4th element when the fused quantizer made them; with ``operands``
    (the fused quantizer only) the first element is the swap-AB kernel's fp16 operands instead
    (int32 ``[T, K/2]``, ``launch.is_operand_form``).

    ``fused`` (default: :func:`fused_quant_enabled`): bf16 CUDA input is quantized by the one-launch
    CuTe DSL kernel (``kernels.router.quant``, bit-identical to the PyTorch quantizer, global scale
    computed on the device); anything else, or ``fused=False``, by ``quantize_activation_nvfp4``
    (the reference, ~20 elementwise kernels).  ``prefetch`` (SM90+, the fused quantizer): it also
    pulls ``linear``'s weights into L2 (:func:`l2_prefetch_enabled`)."""
    global last_quantizer
    from kernels.nvfp4 import quantize_activation_nvfp4

    if fused is None:
        fused = fused_quant_enabled()
    if fused and cutlass_dsl_available():
        from .quant import fused_quant_problem, quantize_activation_fused

        x2 = x.reshape(-1, x.shape[-1])
        major = torch.cuda.get_device_capability(x2.device)[0] if x2.is_cuda else 0
        if fused_quant_problem(x2) is None and major >= 8:
            last_quantizer = "fused"
            pf = (linear._mat_b, linear._scale_b) if prefetch and major >= 9 else None
            return quantize_activation_fused(x2, getattr(linear, "input_global_scale", None), linear._global_scale_b,
                                             operands=operands, prefetch=pf)
    last_quantizer = "torch"
    xf = x.reshape(-1, x.shape[-1]).float()
    q = quantize_activation_nvfp4(xf, linear.activation_global_scale(xf), check_finite=False)
    return q.data.contiguous(), q.scales.view(torch.uint8).contiguous(), q.global_scale


def _route_quantizing(x: torch.Tensor, linear, top_k: int, scoring: str, renormalize: bool, kernel):
    """bf16 activations routed by the GEMV or swap-AB kernel quantizing them in the same launch
    (their bits are the fused quantizer's), where that is the kernel for these tokens: the
    quantizer's launch saved.  None where it does not apply."""
    global last_kernel, last_quantizer, last_form
    from .launch import gemv_quant_problem, run_gemv_quant, run_mma_gemv_quant, swapab_quant_problem

    x2 = x.reshape(-1, x.shape[-1])
    mode = inkernel_quant_mode()
    if not fused_quant_enabled() or mode == "0":
        return None
    chosen = kernel or choose_kernel(x2.shape[0], linear.out_features)
    if chosen == "gemv" and mode not in ("auto", "0") and gemv_quant_problem(x2, linear) is None:
        last_kernel = "gemv"
        last_quantizer = "in-kernel"
        # the parts forms quantize with the calibrated scale only
        last_form = mode if mode != "1" and getattr(linear, "input_global_scale", None) is not None else ""
        return run_gemv_quant(x2, linear, top_k, scoring, renormalize, form=last_form)
    if chosen == "swapab" and x2.shape[0] <= SWAPAB_QUANT_MAX_TOKENS:
        from .launch import pick_swapab_quant

        cfg = pick_swapab_quant(x2.shape[0], linear, x2.device)
        if swapab_quant_problem(x2, linear, cfg) is None:
            last_kernel = "swapab"
            last_quantizer = "in-kernel"
            return run_mma_gemv_quant(x2, linear, top_k, scoring, renormalize, cfg)
    return None


def run_nvfp4_fused_router(x: torch.Tensor, linear, top_k: int = 6, scoring: str = "softmax",
                           renormalize: Optional[bool] = None, *, path: Optional[str] = None,
                           activation=None, split_k: Optional[bool] = None,
                           kernel: Optional[str] = None, tile_config=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Route tokens ``x`` [..., hidden] with the router ``linear`` (an ``Nvfp4Linear`` [E, hidden]).

    ``path`` forces "portable", "sm100" or "reference".  ``activation`` may pass the already
    quantized activations (the tuple of :func:`prepare_activation`) to time the kernel alone.
    ``split_k`` (True / False) forces the mma.sync kernel with / without its K split (False: one
    CTA per row tile, no workspace); ``kernel`` forces "gemv", "swapab", "staged", "tile" or "mma" on the portable
    path; ``tile_config`` = ``(splits, k_tiles_per_split)`` overrides the tile kernel's split-K.
    """
    global last_path, last_kernel, last_pdl, last_operands, last_form
    last_pdl = False
    last_form = ""
    last_operands = False
    check_scoring(scoring)
    if renormalize is None:
        renormalize = default_renormalize(scoring)
    linear.finalize_weights()
    chosen = path or choose_path(x, linear, top_k)
    last_path = chosen
    _announce(chosen)
    if chosen.startswith("reference"):
        return reference_router(x, linear, top_k, scoring, renormalize)
    if activation is None and chosen == "portable" and split_k is None and tile_config is None:
        routed = _route_quantizing(x, linear, top_k, scoring, renormalize, kernel)
        if routed is not None:
            return routed
    # the fused quantizer lets the kernel after it start early (programmatic dependent launch):
    # the router's weight loads overlap the quantizer, its activation loads wait for it
    t = x.reshape(-1, x.shape[-1]).shape[0] if activation is None else activation[0].shape[0]
    portable_kernel = kernel or ("mma" if split_k is not None else choose_kernel(t, linear.out_features))
    pdl = False
    if activation is None:
        # the operand hand-off where the swap-AB kernel routes (GPUREPRO_ROUTER_OPERAND_HANDOFF=1)
        operands = chosen == "portable" and portable_kernel == "swapab" and operand_handoff_enabled()
        activation = prepare_activation(x, linear, operands=operands,
                                        prefetch=chosen == "portable" and l2_prefetch_enabled())
        if operands:
            from .launch import is_operand_form

            last_operands = is_operand_form(activation)
        if last_quantizer == "fused" and chosen == "portable":
            from .runtime import pdl_available

            pdl = pdl_available(x.device)
    if chosen == "portable":
        from .launch import run_gemv, run_mma_gemv, run_portable, run_tile

        last_kernel = portable_kernel
        if pdl:
            from .launch import pdl_helps

            pdl = pdl_helps(last_kernel, t, linear, x.device)
        last_pdl = pdl
        if last_kernel == "gemv":
            return run_gemv(activation, linear, top_k, scoring, renormalize, pdl=pdl)
        if last_kernel == "swapab":
            return run_mma_gemv(activation, linear, top_k, scoring, renormalize, pdl=pdl)
        if last_kernel == "tile":
            return run_tile(activation, linear, top_k, scoring, renormalize, config=tile_config, pdl=pdl)
        if last_kernel == "staged":
            from .launch import run_staged

            return run_staged(activation, linear, top_k, scoring, renormalize)
        return run_portable(activation, linear, top_k, scoring, renormalize,
                            split_k=None if split_k is True else split_k)
    if chosen == "sm100":
        from .launch import run_sm100

        return run_sm100(activation, linear, top_k, scoring, renormalize)
    raise ValueError(f"unknown router path {chosen!r}")


__all__ = [
    "GEMV_MAX_TOKENS", "SCORINGS", "RoutingComparison", "check_scoring", "choose_kernel", "choose_path", "compare_routing", "cutlass_dsl_available",
    "default_renormalize", "fused_quant_enabled", "global_expert_index", "inkernel_quant_mode", "l2_prefetch_enabled", "merge_topk",
    "operand_handoff_enabled", "prepare_activation", "reference_router",
    "router_logits_reference", "run_nvfp4_fused_router", "shape_problem", "sorted_insert", "topk_from_logits",
    "topk_of", "weights_for_ids",
]
