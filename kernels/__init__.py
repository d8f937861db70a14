"""GPU-kernel building blocks with PyTorch references.

Subpackages (each imports torch lazily, on first import of the subpackage):

* :mod:`kernels.nvfp4` -- NVFP4 (E2M1 + FP8-E4M3 block scales) quantization,
  the SM100/SM120 block-scaled scale-factor layout, and :class:`Nvfp4Linear`.
* :mod:`kernels.debug` -- stage-by-stage debugger for a small NVFP4 MoE block.
* :mod:`kernels.router` -- fused NVFP4 MoE router (NVFP4 GEMM + top-k in one kernel, CuTe DSL),
  with its two-kernel PyTorch reference; cutlass is imported only when a kernel runs.

Importing ``kernels`` itself does not import torch.
"""

__all__ = ["nvfp4", "debug", "router"]
