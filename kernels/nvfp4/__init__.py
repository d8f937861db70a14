"""NVFP4: E2M1 values, FP8-E4M3 scales per 16 elements along K, a float32 global scale.

See ``kernels/README.md`` for conventions.
"""

from .format import (
    BLOCK_SIZE,
    E2M1_MAGNITUDES,
    E2M1_MAX,
    E2M1_VALUES,
    E4M3_MAX,
    decode_e2m1,
    encode_e2m1,
    pack_fp4,
    unpack_fp4,
)
from .linear import ErrorStats, Nvfp4Linear, Nvfp4LinearComparison, compare_with_references, error_stats
from .quantize import (
    Nvfp4Tensor,
    block_scales,
    compute_global_scale,
    dequantize_nvfp4,
    fake_quantize_nvfp4,
    quantize_activation_nvfp4,
    quantize_to_nvfp4,
)
from .registry import (
    RegisteredKernel,
    cuda_capability_is,
    find_kernel,
    register_kernel,
    registered_kernels,
    unregister_kernel,
)
from .swizzle import (
    SF_ATOM_COLS,
    SF_ATOM_ROWS,
    SF_ATOM_SIZE,
    padded_scale_shape,
    swizzle_scales,
    swizzled_offset,
    unswizzle_scales,
)

__all__ = [name for name in dir() if not name.startswith("_")]
