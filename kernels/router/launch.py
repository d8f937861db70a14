"""Torch tensors -> CuTe tensors (``mark_layout_dynamic``) and the kernel launches.

The weight operands are the processed buffers of ``Nvfp4Linear.finalize_weights()``:
``_mat_b`` (packed E2M1, read as int32 words) and ``_scale_b`` (swizzled E4M3, read as bytes).
"""

from __future__ import annotations

from typing import Tuple

import torch

from .runtime import alpha_of as _alpha
from .runtime import counters as _counters
from .runtime import current_stream, lut as _lut
from .runtime import polled_workspace
from .runtime import to_cute as _cute

__all__ = ["current_stream", "gemv_args", "plan_portable", "portable_args", "run_gemv", "run_portable", "run_sm100"]


def portable_args(activation, linear, top_k: int, splits: int = 1, k_per_split: int = 0, bm: int = 16):
    """CuTe arguments of the portable kernel, and the output tensors.  ``splits > 1``: split-K with an
    fp32 workspace ``[splits, T, E]`` and per-row-tile semaphores."""
    a_data, a_scales = activation[0], activation[1]
    t = a_data.shape[0]
    dev = a_data.device
    if splits > 1:
        ws = torch.empty((splits, t, linear.out_features), dtype=torch.float32, device=dev)
        cnt = _counters(dev, -(-t // bm))
    else:
        ws = torch.empty((1, 1, 1), dtype=torch.float32, device=dev)
        cnt = _counters(dev, 1)
    alpha = _alpha(activation, linear, dev)
    ids = torch.empty((t, top_k), dtype=torch.int32, device=dev)
    w = torch.empty((t, top_k), dtype=torch.float32, device=dev)
    args = (
        _cute(a_data.contiguous().view(torch.int32)),
        _cute(a_scales.contiguous()),
        _cute(linear._mat_b.contiguous().view(torch.int32)),
        _cute(linear._scale_b.contiguous().view(torch.uint8).reshape(-1)),
        _cute(alpha),
        _cute(_lut(dev)),
        _cute(ids),
        _cute(w),
        _cute(ws),
        _cute(cnt),
        int(k_per_split),
        current_stream(dev),
    )
    return args, ids, w


def plan_portable(num_tokens: int, hidden: int, config=None, split_k=None, experts: int = 256):
    """(bm, threads, splits, k_per_split) for a problem; ``split_k=False`` forces one CTA per row tile."""
    from .portable import BK, BN, pick_config, pick_splits

    bm, threads = config or pick_config(num_tokens)
    splits, per = pick_splits(num_tokens, hidden // BK, bm, experts // BN)
    if split_k is False:
        splits, per = 1, hidden // BK
    return bm, threads, splits, per


def run_portable(activation, linear, top_k: int, scoring: str, renormalize: bool, config=None,
                 split_k=None) -> Tuple[torch.Tensor, torch.Tensor]:
    from .portable import compile_portable

    bm, threads, splits, per = plan_portable(activation[0].shape[0], linear.in_features, config, split_k,
                                             linear.out_features)
    args, ids, w = portable_args(activation, linear, top_k, splits, per, bm)
    fn = compile_portable(top_k, scoring, renormalize, bm, threads, args, split_k=splits > 1)
    fn(*args)
    return ids, w


def run_sm100(activation, linear, top_k: int, scoring: str, renormalize: bool):
    from .sm100 import run_sm100_router

    return run_sm100_router(activation, linear, top_k, scoring, renormalize)


def gemv_args(activation, linear, top_k: int, tm: int = 1):
    """CuTe arguments of the GEMV (decode) kernel, and the output tensors.  Workspace: the float32
    logits [T, E], sentinel-filled (the kernel's routing CTA polls it and refills it).  The
    weight's scales row-major (:func:`row_major_scales`)."""
    a_data = activation[0]
    return _gemv_call_args(a_data.contiguous().view(torch.int32), activation[1].contiguous(),
                           _alpha(activation, linear, a_data.device), linear, top_k)


def row_major_scales(linear):
    """The weight's E4M3 scales unswizzled, ``[rows (padded to 128), K / 16]`` row-major, for the
    GEMV kernel (its lanes read consecutive bytes of one row).  Made once per layer and kept on
    it (made again if the scales are replaced or modified in place), as a prepacked weight is."""
    sb = linear._scale_b
    try:
        key = (sb.data_ptr(), sb._version)
    except RuntimeError:  # an inference tensor keeps no version counter
        key = (sb.data_ptr(), None)
    kept = getattr(linear, "_router_row_major_scales", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    k_tiles = linear.in_features // 64  # the kernels' K-tiles (K / 64)
    # [row / 128, K-tile, row % 32, row % 128 // 32, block]
    #   -> [row / 128, row % 128 // 32, row % 32, K-tile, block], i.e. [row, K / 16]
    atoms = sb.contiguous().view(torch.uint8).reshape(-1, k_tiles, 32, 4, 4)
    rm = atoms.permute(0, 3, 2, 1, 4).contiguous().reshape(-1)
    if not (rm.is_cuda and torch.cuda.is_current_stream_capturing()):
        # made inside a CUDA graph capture, the copy is one of the graph's nodes (correct, made on
        # every replay) and its memory the graph's: kept only when made outside one
        linear._router_row_major_scales = (key, rm)
    return rm


def _gemv_call_args(a_words, a_scales, alpha, linear, top_k: int):
    """The GEMV kernel's argument tuple around its activation operands: the activation words, its
    block scales and ``alpha``; the quantizing GEMV passes bf16 words, the activation global scale
    and ``g_b`` in those places."""
    t = a_words.shape[0]
    dev = a_words.device
    logits = polled_workspace(dev, (1, t, linear.out_features))
    ids = torch.empty((t, top_k), dtype=torch.int32, device=dev)
    w = torch.empty((t, top_k), dtype=torch.float32, device=dev)
    args = (
        _cute(a_words),
        _cute(a_scales),
        _cute(linear._mat_b.contiguous().view(torch.int32)),
        _cute(row_major_scales(linear)),
        _cute(alpha),
        _cute(_lut(dev)),
        _cute(logits),
        _cute(ids),
        _cute(w),
        current_stream(dev),
    )
    return args, ids, w


def run_gemv(activation, linear, top_k: int, scoring: str, renormalize: bool, config=None, variant: str = "",
             pdl: bool = False):
    """The GEMV kernel; ``variant``: the probe's route forms (``GemvRouterKernel``), for tests;
    ``pdl``: launched as a programmatic dependent of the kernel that wrote ``activation``."""
    from .gemv import compile_gemv, pick_gemv

    t = activation[0].shape[0]
    tm, rb = config or pick_gemv(t, linear.out_features)
    args, ids, w = gemv_args(activation, linear, top_k, tm)
    fn = compile_gemv(top_k, scoring, renormalize, linear.out_features, tm, rb, args, variant, pdl=pdl)
    fn(*args)
    return ids, w


def gemv_quant_args(x, linear, top_k: int, tm: int = 1):
    """CuTe arguments of the GEMV kernel that quantizes its bf16 activations itself
    (``GemvRouterKernel(quant=...)``): ``x`` [T, K] bf16 as int32 words, the layer's calibrated
    activation scale (or a placeholder for the dynamic one) and ``g_b`` in place of the activation
    scales and ``alpha``.  Returns ``(args, ids, w, quant mode)``."""
    from .quant import _one, device_scalar

    dev = x.device
    static = getattr(linear, "input_global_scale", None)
    g, mode = (_one(dev), "dynamic") if static is None else (device_scalar(static, dev, (1,)), "static")
    gb = device_scalar(linear._global_scale_b, dev, (1,))
    args, ids, w = _gemv_call_args(x.contiguous().view(torch.int32), g, gb, linear, top_k)
    return args, ids, w, mode


def gemv_quant_problem(x, linear) -> str | None:
    """Why the GEMV kernel cannot quantize ``x`` [T, K] itself (None when it can): one token group
    (its global scale is the whole tensor's), one 32-wide chunk per thread, bf16 as the fused
    quantizer reads it."""
    from .gemv import THREADS, WARPS
    from .quant import fused_quant_problem

    t, k = x.shape
    if t > WARPS:
        return f"{t} tokens: more than one token group"
    if k % 128 or k > 32 * THREADS:
        return f"K={k}: not a multiple of 128 up to {32 * THREADS}"
    return fused_quant_problem(x)


def run_gemv_quant(x, linear, top_k: int, scoring: str, renormalize: bool, config=None, variant: str = "",
                   form: str | None = None):
    """Route bf16 ``x`` [T, K] (T <= 8) with the GEMV kernel quantizing in the same launch: the
    answers of ``prepare_activation`` + :func:`run_gemv`, bit for bit, without the quantizer's launch.
    ``form`` (``gemv.GEMV_QUANT_FORMS``): the configuration and variant ``gemv.pick_gemv_quant``
    gives that form on this device; otherwise ``config`` and ``variant`` (the kernel's probe
    variants, ``GemvRouterKernel``; "table": the calibrated scale's thresholds from a per-CTA table),
    for tests."""
    from .gemv import compile_gemv, pick_gemv, pick_gemv_quant

    t = x.shape[0]
    if form is not None:
        props = torch.cuda.get_device_properties(x.device)
        config, variant = pick_gemv_quant(t, linear.out_features, form,
                                          getattr(linear, "input_global_scale", None) is not None,
                                          props.major, props.multi_processor_count)
    tm, rb = config or pick_gemv(t, linear.out_features)
    if tm < t:
        raise ValueError(f"tm={tm} < T={t}: in-kernel quantization needs one token group")
    args, ids, w, mode = gemv_quant_args(x, linear, top_k, tm)
    fn = compile_gemv(top_k, scoring, renormalize, linear.out_features, tm, rb, args, variant, quant=mode)
    fn(*args)
    return ids, w


def _token_args(activation, linear, quant_x, scale_words: bool):
    """``(device, token words, token scales, alpha)`` of the tensor-core kernels: the codes as int32
    words, their E4M3 scales (bytes, or with ``scale_words`` int32 words) and ``alpha``; or, for a
    kernel quantizing ``quant_x`` [T, K] itself, its bf16 words, the layer's calibrated scale and
    ``g_b``."""
    if quant_x is not None:
        from .quant import device_scalar

        dev = quant_x.device
        return (dev, quant_x.contiguous().view(torch.int32), device_scalar(linear.input_global_scale, dev, (1,)),
                device_scalar(linear._global_scale_b, dev, (1,)))
    dev = activation[0].device
    a_scales = activation[1].contiguous()
    if scale_words:
        a_scales = a_scales.view(torch.uint8).view(torch.int32)
    return dev, activation[0].contiguous().view(torch.int32), a_scales, _alpha(activation, linear, dev)


def mma_gemv_args(activation, linear, top_k: int, nt: int = 1, ksplit: int = 1, poll: bool = False,
                  scale_words: bool = False, quant_x=None):
    """CuTe arguments of the tensor-core decode kernel: partial logits ``[ksplit, T, E]`` (``poll``:
    sentinel-filled), one semaphore per 8 tokens; E4M3 scales as bytes (``scale_words``: int32 words).
    ``quant_x``: the bf16 tokens ``[T, K]`` the kernel quantizes itself (``activation`` unused), with
    the layer's calibrated scale and ``g_b`` in place of the activation scales and ``alpha``."""
    dev, a_words, a_scales, alpha = _token_args(activation, linear, quant_x, scale_words)
    t = a_words.shape[0]
    e = linear.out_features
    shape = (ksplit, t, e)
    ws = polled_workspace(dev, shape) if poll else torch.empty(shape, dtype=torch.float32, device=dev)
    cnt = _counters(dev, -(-t // (8 * nt)) * nt)
    ids = torch.empty((t, top_k), dtype=torch.int32, device=dev)
    w = torch.empty((t, top_k), dtype=torch.float32, device=dev)
    args = (
        _cute(a_words),
        _cute(a_scales),
        _cute(linear._mat_b.contiguous().view(torch.int32)),
        _cute(linear._scale_b.contiguous().view(torch.uint8).reshape(-1)
              .view(torch.int32 if scale_words else torch.uint8)),
        _cute(alpha),
        _cute(ws),
        _cute(ids),
        _cute(w),
        _cute(cnt),
        current_stream(dev),
    )
    return args, ids, w


def run_mma_gemv(activation, linear, top_k: int, scoring: str, renormalize: bool, config=None, variant: str = "",
                 pdl: bool = False):
    """The swap-AB kernel; ``config``: ``(nt, ksplit[, mw[, uw[, warps, spread, pair]]])`` (default:
    :func:`pick_swapab`); ``variant``: the probe's route forms (``MmaGemvRouterKernel``; "poll",
    "wait" and "count" force that route), for tests; ``pdl`` as in :func:`run_gemv`."""
    from .gemv import SwapabConfig

    t = activation[0].shape[0]
    cfg = pick_swapab(t, linear, activation[0].device) if config is None else \
        SwapabConfig.of(config, linear.in_features)
    fn, args, ids, w = compile_swapab(activation, linear, top_k, scoring, renormalize, cfg, variant, pdl)
    fn(*args)
    return ids, w


def compile_swapab(activation, linear, top_k: int, scoring: str, renormalize: bool, cfg, variant: str = "",
                   pdl: bool = False, quant_x=None):
    """``(compiled kernel, its arguments, ids, weights)`` of the swap-AB launch ``cfg``
    (:class:`kernels.router.gemv.SwapabConfig`): a polled workspace where it polls (one K split, a
    probe variant forcing it, or the cluster pairs).  ``quant_x``: the bf16 tokens, quantized by
    the kernel itself (:func:`run_mma_gemv_quant`)."""
    from .gemv import compile_mma_gemv, swapab_polls

    poll = cfg.pair or swapab_polls(cfg.ksplit, variant)
    args, ids, w = mma_gemv_args(activation, linear, top_k, cfg.nt, cfg.ksplit, poll, quant_x=quant_x)
    operands = quant_x is None and is_operand_form(activation)
    fn = compile_mma_gemv(top_k, scoring, renormalize, linear.out_features, cfg.nt, cfg.ksplit, args, poll, variant,
                          mw=cfg.mw, uw=cfg.uw, pdl=pdl, warps=cfg.warps, spread=cfg.spread, pair=cfg.pair,
                          quant=quant_x is not None, operands=operands)
    return fn, args, ids, w


def is_operand_form(activation) -> bool:
    """Whether ``activation`` (``prepare_activation``'s tuple) holds the tokens as the swap-AB
    kernel's fp16 operands (``quantize_activation_fused(operands=True)``: int32 ``[T, K/2]``)
    rather than packed codes (uint8 ``[T, K/2]``)."""
    return activation[0].dtype == torch.int32


def swapab_quant_problem(x, linear, cfg=None) -> str | None:
    """Why the swap-AB kernel cannot quantize ``x`` [T, K] itself (None when it can): the layer's
    calibrated activation scale (the dynamic one is the whole tensor's max, which no CTA sees),
    SM90+ (bf16x2 compares), whole 16-element blocks per lane (K units of 2 or 4 words), bf16 as
    the fused quantizer reads it."""
    from .quant import fused_quant_problem

    if getattr(linear, "input_global_scale", None) is None:
        return "no calibrated activation scale (input_global_scale)"
    if x.is_cuda and torch.cuda.get_device_capability(x.device)[0] < 9:
        return "bf16x2 compares need SM90 or later"
    if cfg is not None and cfg.uw == 1:
        return "K units of one word split a 16-element block over two lanes"
    return fused_quant_problem(x)


def run_mma_gemv_quant(x, linear, top_k: int, scoring: str, renormalize: bool, config=None, variant: str = ""):
    """Route bf16 ``x`` [T, K] with the swap-AB kernel quantizing it in the same launch (the layer's
    calibrated scale): the answers of ``prepare_activation`` + :func:`run_mma_gemv`, bit for bit,
    without the quantizer's launch.  ``config`` and ``variant`` as in :func:`run_mma_gemv`."""
    from .gemv import SwapabConfig

    t = x.shape[0]
    cfg = pick_swapab_quant(t, linear, x.device) if config is None else SwapabConfig.of(config, linear.in_features)
    why = swapab_quant_problem(x, linear, cfg)
    if why:
        raise ValueError(f"the swap-AB kernel cannot quantize these tokens: {why}")
    fn, args, ids, w = compile_swapab(None, linear, top_k, scoring, renormalize, cfg, variant, quant_x=x)
    fn(*args)
    return ids, w


def pick_swapab(num_tokens: int, linear, device=None):
    """The swap-AB launch :func:`kernels.router.gemv.pick_mma_gemv` picks for this device (None or
    not CUDA: its defaults, an H200's)."""
    from .gemv import pick_mma_gemv

    if device is None or device.type != "cuda":
        return pick_mma_gemv(num_tokens, linear.out_features, linear.in_features)
    props = torch.cuda.get_device_properties(device)
    return pick_mma_gemv(num_tokens, linear.out_features, linear.in_features, sm=10 * props.major + props.minor,
                         sms=props.multi_processor_count)


def pick_swapab_quant(num_tokens: int, linear, device=None):
    """The swap-AB launch for the kernel quantizing its own tokens: :func:`pick_swapab`'s, with 32
    experts per CTA (half the CTAs, each quantizing its K range once for twice the experts) where
    16 would put more CTAs than SMs on the grid.  H200, T=7: E=384 (168 -> 84 CTAs) 6.60 against
    7.18 us; E=256 (112 CTAs) 5.94 against 6.26 with 32."""
    cfg = pick_swapab(num_tokens, linear, device)
    sms = 132
    if device is not None and device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    gx = linear.out_features // (16 * cfg.mw)
    ctas = gx * cfg.ksplit * -(-num_tokens // (8 * cfg.nt))
    if cfg.mw == 1 and gx % 2 == 0 and ctas > sms and not cfg.pair and cfg.warps == 8:
        cfg = cfg._replace(mw=2)
    return cfg


def pdl_helps(kernel: str, num_tokens: int, linear, device=None) -> bool:
    """Whether ``kernel`` launches as the fused quantizer's programmatic dependent (``device``: the
    one whose swap-AB pick counts; None: an H200's).  H200, quantize-and-route against the plain
    launch: the GEMV (T=1: 5.9 / 6.3 against 7.2 / 7.7 us), the counted swap-AB route (T=7: 8.5 /
    9.4 against 9.7 / 10.5), the one-CTA-per-SM swap-AB forms, polled route included (T=128,
    2026-12-04, calibrated scale: E=256 9.69 against 10.72, E=384 cluster pairs 11.66 against
    12.75); the tile kernel is unchanged.  Not the swap-AB kernel's polled route in grids of two
    CTAs per SM (one K split, past one wave; T=128, E=256 with 8 warps measured slower so: 17.3
    against 14.8 us, an earlier harness)."""
    if kernel == "swapab":
        from .gemv import swapab_polls

        cfg = pick_swapab(num_tokens, linear, device)
        return cfg.pair or cfg.warps > 8 or not swapab_polls(cfg.ksplit)
    return kernel in ("gemv", "tile")


def staged_args(activation, linear, top_k: int, tn: int, ksplit: int):
    """CuTe arguments of the staged-decode kernel (``kernels.router.staged``): the swap-AB kernel's,
    with the scales as int32 words (its ``cp.async`` copies whole words)."""
    return mma_gemv_args(activation, linear, top_k, tn // 8, ksplit, False, scale_words=True)


def run_staged(activation, linear, top_k: int, scoring: str, renormalize: bool, config=None):
    """The staged-decode swap-AB kernel; ``config`` = ``(em, tn, ksplit[, stages])``."""
    from .staged import compile_staged, pick_staged

    t = activation[0].shape[0]
    em, tn, ksplit, *rest = config or pick_staged(t, linear.out_features, linear.in_features)
    args, ids, w = staged_args(activation, linear, top_k, tn, ksplit)
    fn = compile_staged(top_k, scoring, renormalize, linear.out_features, em, tn, ksplit, args, "", *rest)
    fn(*args)
    return ids, w


def tile_args(activation, linear, top_k: int, splits: int, k_per_split: int, quant_x=None):
    """CuTe arguments of the pipelined tile kernel (``kernels.router.tile``): packed codes and
    scales as int32 words, an fp32 workspace ``[splits, T rounded up to 128, E]`` of partial logits
    and one semaphore per 128-token row tile.  ``quant_x``: the bf16 tokens ``[T, K]`` the kernel
    quantizes itself (``activation`` unused), with the layer's calibrated scale and ``g_b`` in place
    of the activation scales and ``alpha``."""
    from .tile import BM

    dev, a_words, a_scales, alpha = _token_args(activation, linear, quant_x, scale_words=True)
    t = a_words.shape[0]
    m_tiles = -(-t // BM)
    ws = torch.empty((splits, m_tiles * BM, linear.out_features), dtype=torch.float32, device=dev)
    cnt = _counters(dev, m_tiles)
    ids = torch.empty((t, top_k), dtype=torch.int32, device=dev)
    w = torch.empty((t, top_k), dtype=torch.float32, device=dev)
    args = (
        _cute(a_words),
        _cute(a_scales),
        _cute(linear._mat_b.contiguous().view(torch.int32)),
        _cute(linear._scale_b.contiguous().view(torch.uint8).reshape(-1).view(torch.int32)),
        _cute(alpha),
        _cute(ids),
        _cute(w),
        _cute(ws),
        _cute(cnt),
        int(k_per_split),
        current_stream(dev),
    )
    return args, ids, w


def tile_launcher(activation, linear, top_k: int, scoring: str, renormalize: bool, config=None,
                  route_in_kernel: bool = False, stages=None, stream_k=None, pdl: bool = False, quant_x=None,
                  ahead: int = 0, quant_warps: int = 0, mma_regs: int = 0):
    """``(launch, ids, weights)``: ``launch()`` runs the tile kernel and (unless ``route_in_kernel``)
    its route kernel on the current stream, with arguments prepared once (as a CUDA graph replays them).
    ``config``: ``(splits, k_tiles_per_split)`` of the split grid; ``stream_k``: ``(ctas, slots)`` of a
    stream-K grid; neither: ``pick_tile_grid`` for this device.  ``stages``: the cp.async ring depth
    (default: the deepest the device's SMEM per CTA allows).  ``pdl``: the tile kernel is a
    programmatic dependent of the kernel that wrote ``activation``.  (The route kernel as the
    tile kernel's dependent measured no faster on the H200: 65.7 / 101.9 us against 64.8 / 101.6
    at T=4096, E=256 / 384.)  ``quant_x``: the bf16 tokens, quantized by the tile kernel itself
    (:func:`run_tile_quant`; its two-slot rings, ``stages`` ignored).  ``ahead``: k-tiles loaded
    ahead of the one decoded (probe; default stages - 1, the quantizing form's 2).  ``quant_warps``
    (with ``quant_x``, probe): 4, a warpgroup of quantizing warps beside the MMA warps, the MMA
    warpgroup at ``mma_regs`` registers (default ``tile.MMA_REGS``)."""
    from .tile import BK, MMA_REGS, Q_STAGES, compile_split_route, compile_tile, device_stages, device_tile_grid

    quant = quant_x is not None
    t = (quant_x if quant else activation[0]).shape[0]
    dev = (quant_x if quant else activation[0]).device
    stages = Q_STAGES if quant else stages or device_stages(dev)
    # the route kernel unrolls E/32 columns per lane: past 2048 experts the in-kernel route
    route_in_kernel = route_in_kernel or linear.out_features > 2048
    if config is None and stream_k is None and not route_in_kernel:
        kind, a, b = device_tile_grid(t, linear.out_features, linear.in_features, dev, stages, quant)
        if kind == "stream_k":
            stream_k = (a, b)
        else:
            config = (a, b)
    if stream_k is not None:
        ctas, slots = stream_k
        args, ids, w = tile_args(activation, linear, top_k, slots, 0, quant_x)
        fn = compile_tile(top_k, scoring, renormalize, slots, args, stages=stages, stream_k_ctas=ctas, pdl=pdl,
                          quant=quant, ahead=ahead, quant_warps=quant_warps, mma_regs=mma_regs or MMA_REGS)
        route_sk = (linear.in_features // BK, ctas)
        splits = slots
    else:
        from .tile import pick_tile_splits

        splits, per = config or pick_tile_splits(t, linear.out_features, linear.in_features)
        args, ids, w = tile_args(activation, linear, top_k, splits, per, quant_x)
        fn = compile_tile(top_k, scoring, renormalize, splits, args, route_in_kernel=route_in_kernel, stages=stages,
                          pdl=pdl, quant=quant, ahead=ahead, quant_warps=quant_warps, mma_regs=mma_regs or MMA_REGS)
        route_sk = None
    if route_in_kernel:
        return (lambda: fn(*args[:-1], current_stream(dev))), ids, w
    rargs = (args[7], args[5], args[6], args[-1])  # workspace, ids, weights, stream
    route = compile_split_route(top_k, scoring, renormalize, linear.out_features, splits, rargs, route_sk)

    def launch():
        stream = current_stream(dev)
        fn(*args[:-1], stream)
        route(*rargs[:-1], stream)

    return launch, ids, w


def run_tile(activation, linear, top_k: int, scoring: str, renormalize: bool, config=None, pdl: bool = False):
    launch, ids, w = tile_launcher(activation, linear, top_k, scoring, renormalize, config, pdl=pdl)
    launch()
    return ids, w


def tile_quant_problem(x, linear) -> str | None:
    """Why the tile kernel cannot quantize ``x`` [T, K] itself (None when it can): the layer's
    calibrated activation scale (the dynamic one is the whole tensor's max, which no CTA sees
    before it quantizes), SM90+ (bf16x2 compares), two CTAs' rings in an SM's shared memory (not
    SM120's 100 KB), bf16 as the fused quantizer reads it."""
    from .quant import fused_quant_problem
    from .tile import Q_STAGES, tile_smem_bytes

    if getattr(linear, "input_global_scale", None) is None:
        return "no calibrated activation scale (input_global_scale)"
    if x.is_cuda:
        if torch.cuda.get_device_capability(x.device)[0] < 9:
            return "bf16x2 compares need SM90 or later"
        props = torch.cuda.get_device_properties(x.device)
        need = tile_smem_bytes(Q_STAGES, quant=True)
        have = getattr(props, "shared_memory_per_block_optin", 0)
        if have and need > have:
            return f"its rings need {need} bytes of shared memory per CTA, the device allows {have}"
    return fused_quant_problem(x)


def run_tile_quant(x, linear, top_k: int, scoring: str, renormalize: bool, config=None, stream_k=None,
                   quant_warps: int = 0, mma_regs: int = 0):
    """Route bf16 ``x`` [T, K] with the tile kernel quantizing its token rows itself (the layer's
    calibrated scale): the answers of ``prepare_activation`` + :func:`run_tile`, bit for bit, without
    the quantizer's launch.  ``config`` / ``stream_k`` / ``quant_warps`` / ``mma_regs`` as in
    :func:`tile_launcher`."""
    why = tile_quant_problem(x, linear)
    if why:
        raise ValueError(f"the tile kernel cannot quantize these tokens: {why}")
    launch, ids, w = tile_launcher(None, linear, top_k, scoring, renormalize, config, stream_k=stream_k, quant_x=x,
                                   quant_warps=quant_warps, mma_regs=mma_regs)
    launch()
    return ids, w
