"""Probe only: a one-warp kernel that does nothing but let its programmatic dependent start.

Launched in place of the activation quantizer (``probe --after-quant trigger``), it measures the
floor of the hand-off to the router: the launch, the grid's completion and ``griddepcontrol.wait``
in the router, with no work before them.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute


class TriggerKernel:
    """``trigger``: execute ``griddepcontrol.launch_dependents`` (SM90+), else nothing at all."""

    def __init__(self, trigger: bool):
        self.trigger = trigger

    @cute.jit
    def __call__(self, mX: cute.Tensor, stream):
        self.kernel(mX).launch(grid=[1, 1, 1], block=[32, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mX: cute.Tensor):
        if cutlass.const_expr(self.trigger):
            cute.arch.griddepcontrol_launch_dependents()
