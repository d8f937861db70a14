"""Layer debugger: where in an NVFP4 MoE block does the error blow up?

``python -m kernels.debug --help`` runs it on a seeded synthetic block.
"""

from .layer_debugger import (
    DEFAULT_LOCAL_THRESHOLDS,
    DEFAULT_THRESHOLDS,
    LayerDebugReport,
    StageReport,
    debug_layer,
    forward_layer,
    nan_fault,
    noise_fault,
    reference_weights,
    scale_fault,
)
from .moe import (
    STAGES,
    MoEConfig,
    MoEWeights,
    Nvfp4MoEBlock,
    reference_moe_forward,
    synthetic_moe_weights,
    synthetic_tokens,
)

__all__ = [name for name in dir() if not name.startswith("_")]
