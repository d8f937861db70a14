"""``Nvfp4Linear``: a linear layer with NVFP4 weights (and, by default, NVFP4 activations)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .quantize import (
    ScaleLike,
    compute_global_scale,
    dequantize_nvfp4,
    quantize_activation_nvfp4,
    quantize_to_nvfp4,
)
from .registry import find_kernel
from .swizzle import swizzle_scales, unswizzle_scales

logger = logging.getLogger("kernels.nvfp4")


@dataclass(frozen=True)
class ErrorStats:
    """Error of ``actual`` against ``expected``."""

    max_abs: float  #: max |actual - expected|
    rel_fro: float  #: ||actual - expected||_F / ||expected||_F (0 when both are 0; inf when only expected is 0)

    def __str__(self) -> str:
        return f"max_abs={self.max_abs:.4g} rel_fro={self.rel_fro:.4g}"


def error_stats(actual: torch.Tensor, expected: torch.Tensor) -> ErrorStats:
    """Max-abs and relative-Frobenius error, computed in float32.  NaN/Inf in ``actual`` give ``inf``."""
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    a = actual.detach().float()
    e = expected.detach().float()
    if not bool(torch.isfinite(a).all()):
        return ErrorStats(float("inf"), float("inf"))
    d = a - e
    max_abs = float(d.abs().max()) if d.numel() else 0.0
    num = float(torch.linalg.vector_norm(d))
    den = float(torch.linalg.vector_norm(e))
    if den == 0.0:
        rel = 0.0 if num == 0.0 else float("inf")
    else:
        rel = num / den
    return ErrorStats(max_abs, rel)


@dataclass(frozen=True)
class Nvfp4LinearComparison:
    path: str  #: which path produced the output ("reference" or "kernel:<name>")
    vs_bf16: ErrorStats  #: against the unquantized layer (bf16 weights, fp32 math)
    vs_nvfp4: ErrorStats  #: against the NVFP4-GEMM reference (quantized activations x quantized weights)


class Nvfp4Linear(torch.nn.Module):
    """``y = x @ W^T (+ b)`` with ``W`` stored as NVFP4.

    Built from a bf16 weight ``[out_features, in_features]`` (``in_features`` a
    multiple of 16).  :meth:`finalize_weights` quantizes it once into

    * ``_mat_b``          uint8 ``[N, K/2]``: packed E2M1, low nibble = even k,
    * ``_scale_b``        float8_e4m3fn ``[Np, Kp]``: block scales swizzled into the
      128x4-atom layout (see :mod:`kernels.nvfp4.swizzle`),
    * ``_global_scale_b`` float32 scalar: ``amax(W) / (6*448)``.

    ``forward`` runs a registered kernel for the input's device when there is one
    (:mod:`kernels.nvfp4.registry`), else the PyTorch reference path, and logs
    which path it took once per instance (logger ``kernels.nvfp4``).  The
    reference path is the NVFP4-GEMM reference: activations are quantized to NVFP4
    with ``input_global_scale`` (or, if that is None, a dynamic scale from the
    input's amax), both operands dequantized, then multiplied in float32.  With
    ``quantize_activations=False`` only the weight is quantized.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        input_global_scale: Optional[ScaleLike] = None,
        quantize_activations: bool = True,
        name: Optional[str] = None,
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out_features, in_features], got {tuple(weight.shape)}")
        if weight.shape[1] % 16:
            raise ValueError(f"in_features must be a multiple of 16, got {weight.shape[1]}")
        self.out_features, self.in_features = weight.shape
        self.name = name
        self.quantize_activations = quantize_activations
        self.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
        if bias is not None:
            self.bias = torch.nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.input_global_scale = input_global_scale
        self.register_buffer("_mat_b", None)
        # float8 buffers would be converted by module.to(dtype); keep the bytes as uint8.
        self.register_buffer("_scale_b_bytes", None)
        self.register_buffer("_global_scale_b", None)
        self.last_path: Optional[str] = None
        self._announced: set = set()

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, **kwargs) -> "Nvfp4Linear":
        return cls(linear.weight, linear.bias, **kwargs)

    # ----------------------------------------------------------------- weights
    @property
    def finalized(self) -> bool:
        return self._mat_b is not None

    @property
    def _scale_b(self) -> Optional[torch.Tensor]:
        b = self._scale_b_bytes
        return None if b is None else b.view(torch.float8_e4m3fn)

    def finalize_weights(self) -> "Nvfp4Linear":
        """Quantize the weight (once; later calls do nothing)."""
        if self.finalized:
            return self
        q = quantize_to_nvfp4(self.weight)
        self._mat_b = q.data
        self._scale_b_bytes = swizzle_scales(q.scales).view(torch.uint8)
        self._global_scale_b = q.global_scale
        return self

    def weight_scales(self) -> torch.Tensor:
        """Row-major block scales ``[N, K/16]`` recovered from the swizzled ``_scale_b``."""
        self.finalize_weights()
        return unswizzle_scales(self._scale_b, self.out_features, self.in_features // 16)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W`` as the kernel sees it, from ``_mat_b``/``_scale_b``/``_global_scale_b``."""
        self.finalize_weights()
        return dequantize_nvfp4(self._mat_b, self.weight_scales(), self._global_scale_b, dtype=dtype)

    # ------------------------------------------------------------ references
    def activation_global_scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_global_scale is not None:
            g = self.input_global_scale
            return g.to(x.device, torch.float32) if isinstance(g, torch.Tensor) else torch.tensor(float(g), device=x.device)
        return compute_global_scale(x)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input [..., {self.in_features}], got {tuple(x.shape)}")

    def bf16_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Unquantized layer: bf16 weight and input, float32 math; float32 result."""
        self._check_input(x)
        b = None if self.bias is None else self.bias.float()
        return F.linear(x.to(torch.bfloat16).float(), self.weight.float(), b)

    def nvfp4_gemm_reference(self, x: torch.Tensor, *, quantize_activations: bool = True) -> torch.Tensor:
        """Quantized activations x quantized weights (dequantized, float32 math); float32 result."""
        self._check_input(x)
        xf = x.float()
        if quantize_activations:
            # no finiteness check: NaN/Inf propagate into the output as they would in a kernel
            xq = quantize_activation_nvfp4(xf, self.activation_global_scale(xf), check_finite=False)
            xf = dequantize_nvfp4(xq)
        b = None if self.bias is None else self.bias.float()
        return F.linear(xf, self.dequantized_weight(), b)

    # ---------------------------------------------------------------- forward
    def _announce(self, path: str) -> None:
        if path in self._announced:
            return
        self._announced.add(path)
        who = self.name or f"Nvfp4Linear({self.in_features}->{self.out_features})"
        if path == "reference":
            logger.warning("%s: no NVFP4 kernel registered for this device; using the PyTorch reference path "
                           "(dequantize + matmul)", who)
        else:
            logger.info("%s: using NVFP4 %s", who, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        self.finalize_weights()
        kernel = find_kernel(x.device)
        if kernel is not None:
            path = f"kernel:{kernel.name}"
            out = kernel.fn(self, x)
        else:
            path = "reference"
            out = self.nvfp4_gemm_reference(x, quantize_activations=self.quantize_activations).to(x.dtype)
        self.last_path = path
        self._announce(path)
        return out

    def compare(self, x: torch.Tensor) -> Nvfp4LinearComparison:
        """Run ``forward(x)`` and measure it against both references."""
        return compare_with_references(self, x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"finalized={self.finalized}, quantize_activations={self.quantize_activations}")


def compare_with_references(layer: Nvfp4Linear, x: torch.Tensor) -> Nvfp4LinearComparison:
    """Errors of ``layer(x)`` against the BF16 reference and the NVFP4-GEMM reference."""
    with torch.no_grad():
        out = layer(x)
        ref_bf16 = layer.bf16_reference(x)
        ref_fp4 = layer.nvfp4_gemm_reference(x)
    return Nvfp4LinearComparison(
        path=layer.last_path or "?",
        vs_bf16=error_stats(out, ref_bf16),
        vs_nvfp4=error_stats(out, ref_fp4),
    )
