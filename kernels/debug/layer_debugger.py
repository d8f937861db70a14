"""Stage-by-stage comparison of the NVFP4 MoE block against the plain BF16 reference.

For every stage two errors are measured against the reference's output of that stage:

* ``error`` (chained): the NVFP4 block run end to end on its own outputs;
* ``local``: the stage alone, fed the *reference's* outputs of the earlier stages.

Each has its own threshold.  Chained thresholds allow for the NVFP4 noise that
accumulates along the block; local thresholds are tight for stages that do no
quantization (a correct norm, routing, add or residual reproduces the reference
from the reference's inputs).  The report names the first stage (in forward order)
where either crosses: if the local error crosses, the stage itself computes
wrongly; if only the chained error does, the error accumulated upstream.  Errors
are relative Frobenius (``||out - ref|| / ||ref||``); NaN/Inf count as infinite.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, TextIO

import torch

from ..nvfp4.linear import ErrorStats, error_stats
from .moe import (
    STAGES,
    Fault,
    MoEConfig,
    MoEWeights,
    Nvfp4MoEBlock,
    State,
    reference_moe_forward,
    synthetic_moe_weights,
    synthetic_tokens,
)

#: Chained thresholds: about 2x the largest error NVFP4 itself causes on the synthetic
#: block (max over 30 seeds, 32 tokens: router_logits 0.19, routing 0.37 from top-k
#: flips, routed_experts 0.52, shared_expert 0.27, moe_out 0.39, residual 0.33).
DEFAULT_THRESHOLDS: Dict[str, float] = {
    "rmsnorm": 0.02,  # no quantization here: only bf16 rounding
    "router_logits": 0.35,
    "routing": 0.7,
    "routed_experts": 0.9,
    "shared_expert": 0.5,
    "moe_out": 0.7,
    "residual": 0.6,
}

#: Local thresholds (stage fed the reference's inputs).  Measured maxima over 30 seeds:
#: router_logits 0.19, routed_experts 0.33, shared_expert 0.27; the other stages 0.
DEFAULT_LOCAL_THRESHOLDS: Dict[str, float] = {
    "rmsnorm": 0.02,
    "router_logits": 0.35,
    "routing": 0.02,
    "routed_experts": 0.6,
    "shared_expert": 0.5,
    "moe_out": 0.02,
    "residual": 0.02,
}


def forward_layer(block: Nvfp4MoEBlock, x: torch.Tensor, faults: Optional[Mapping[str, Fault]] = None) -> State:
    """Forward of the NVFP4 MoE block keeping every stage's output (``"residual"`` is the layer output)."""
    with torch.no_grad():
        return block.forward_stages(x, faults)


# ----------------------------------------------------------------------------- faults
def scale_fault(factor: float) -> Fault:
    """Multiply the stage output by ``factor`` (e.g. a wrong global scale)."""
    return lambda t: t * factor


def noise_fault(rel_std: float, seed: int = 0) -> Fault:
    """Add Gaussian noise with ``rel_std`` times the output's RMS (e.g. a wrong scale-factor layout)."""

    def f(t: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(seed)
        n = torch.randn(t.shape, generator=g).to(t.device)
        rms = t.float().pow(2).mean().sqrt()
        return (t.float() + rel_std * rms * n).to(t.dtype)

    return f


def nan_fault(index: int = 0) -> Fault:
    """Set one element to NaN."""

    def f(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[index] = float("nan")
        return t

    return f


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class StageReport:
    name: str
    shape: tuple
    error: ErrorStats  #: chained
    local: ErrorStats  #: stage alone on reference inputs
    threshold: float  #: for ``error``
    local_threshold: float  #: for ``local``

    @staticmethod
    def _over(e: ErrorStats, thr: float) -> bool:
        return math.isnan(e.rel_fro) or e.rel_fro > thr

    @property
    def crossed(self) -> bool:
        """Chained error over its threshold."""
        return self._over(self.error, self.threshold)

    @property
    def local_crossed(self) -> bool:
        """Local error over its threshold: the stage itself is wrong."""
        return self._over(self.local, self.local_threshold)

    @property
    def bad(self) -> bool:
        return self.crossed or self.local_crossed


@dataclass
class LayerDebugReport:
    stages: List[StageReport]
    output: torch.Tensor
    reference_output: torch.Tensor

    def __getitem__(self, name: str) -> StageReport:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def first_bad_stage(self) -> Optional[str]:
        """First stage (in forward order) whose chained or local error crosses its threshold."""
        return next((s.name for s in self.stages if s.bad), None)

    @property
    def culprit(self) -> Optional[str]:
        """First stage that is wrong on its own (local error crosses), or None."""
        return next((s.name for s in self.stages if s.local_crossed), None)

    @property
    def ok(self) -> bool:
        return self.first_bad_stage is None

    def summary(self) -> str:
        first = self.first_bad_stage
        if first is None:
            return "all stages within threshold"
        if self[first].local_crossed:
            return f"first stage over threshold: {first} (its own computation is wrong: local error crosses)"
        where = f"; first stage wrong on its own: {self.culprit}" if self.culprit else ""
        return f"first stage over threshold: {first} (local error is fine: drift accumulated upstream{where})"

    # ---------------------------------------------------------------- tables
    _HEAD = ("stage", "shape", "max_abs", "rel_fro", "thr", "local_rel_fro", "local_thr", "status")

    def _rows(self):
        first = self.first_bad_stage
        for s in self.stages:
            flags = [f for f, on in ((">THR", s.crossed), (">LOCAL", s.local_crossed)) if on]
            status = "OK" if not flags else ("FIRST " if s.name == first else "") + " ".join(flags)
            yield (s.name, "x".join(map(str, s.shape)), f"{s.error.max_abs:.4g}", f"{s.error.rel_fro:.4g}",
                   f"{s.threshold:.3g}", f"{s.local.rel_fro:.4g}", f"{s.local_threshold:.3g}", status)

    def plain_table(self) -> str:
        rows = [self._HEAD, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
        return "\n".join(lines + [self.summary()])

    def render(self, use_rich: Optional[bool] = None, width: int = 120) -> str:
        """The table as text: rich when available (or asked for), else plain."""
        if use_rich is None or use_rich:
            try:
                from rich.console import Console
                from rich.table import Table
            except ImportError:
                if use_rich:
                    raise
            else:
                table = Table(title="NVFP4 MoE layer vs BF16 reference (rel_fro = ||out-ref||/||ref||)")
                for h in self._HEAD:
                    table.add_column(h, justify="left" if h in ("stage", "shape", "status") else "right")
                for r in self._rows():
                    style = None if r[-1] == "OK" else ("bold red" if r[-1].startswith("FIRST") else "red")
                    table.add_row(*r, style=style)
                buf = io.StringIO()
                Console(file=buf, width=width, force_terminal=False, color_system=None).print(table)
                return buf.getvalue().rstrip("\n") + "\n" + self.summary()
        return self.plain_table()

    def print(self, file: Optional[TextIO] = None, use_rich: Optional[bool] = None) -> None:
        print(self.render(use_rich), file=file or sys.stdout)


# ----------------------------------------------------------------------------- driver
def reference_weights(block: Nvfp4MoEBlock) -> MoEWeights:
    """The bf16 weights the block was built from (Nvfp4Linear keeps its bf16 weight)."""
    return MoEWeights(
        norm=block.norm_weight.detach(),
        router=block.router.weight.detach(),
        gate_up=torch.stack([e.gate_up.weight.detach() for e in block.experts]),
        down=torch.stack([e.down.weight.detach() for e in block.experts]),
        shared_gate_up=block.shared_expert.gate_up.weight.detach(),
        shared_down=block.shared_expert.down.weight.detach(),
    )


def debug_layer(
    block: Optional[Nvfp4MoEBlock] = None,
    x: Optional[torch.Tensor] = None,
    *,
    config: Optional[MoEConfig] = None,
    seed: int = 0,
    tokens: int = 32,
    device="cpu",
    faults: Optional[Mapping[str, Fault]] = None,
    threshold: Optional[float] = None,
    thresholds: Optional[Mapping[str, float]] = None,
    local_threshold: Optional[float] = None,
    local_thresholds: Optional[Mapping[str, float]] = None,
    verbose: bool = True,
    use_rich: Optional[bool] = None,
    file: Optional[TextIO] = None,
) -> LayerDebugReport:
    """Run :func:`forward_layer` and the BF16 reference stage by stage; print and return the report.

    Without ``block`` a seeded synthetic block is built (``config``, ``seed``, ``device``);
    without ``x``, ``tokens`` seeded tokens.  The reference runs with ``config``, or the
    block's own config when none is given.  ``faults`` maps stage names to functions
    applied to that stage's output in the NVFP4 path (planting a bug).  ``threshold``
    sets one chained threshold for all stages, ``thresholds`` overrides single stages;
    ``local_threshold`` / ``local_thresholds`` do the same for the local errors.
    """
    if block is None:
        config = config or MoEConfig()
        block = Nvfp4MoEBlock(synthetic_moe_weights(config, seed, device), config)
    config = config or block.config  # the reference's config (the block may carry a wrong one)
    dev = block.norm_weight.device
    if x is None:
        x = synthetic_tokens(config, tokens, seed + 1, dev)
    def merged(defaults, one, per_stage):
        out = {k: float(one) for k in defaults} if one is not None else dict(defaults)
        unknown = set(per_stage or ()) - set(STAGES)
        if unknown:
            raise KeyError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
        out.update(per_stage or {})
        return out

    thr = merged(DEFAULT_THRESHOLDS, threshold, thresholds)
    local_thr = merged(DEFAULT_LOCAL_THRESHOLDS, local_threshold, local_thresholds)

    with torch.no_grad():
        ref = reference_moe_forward(reference_weights(block), x, config)
        got = forward_layer(block, x, faults)
        ref_in: State = {"x": x, **ref}
        reports = []
        for name in STAGES:
            local = block.run_stage(name, ref_in, faults)
            reports.append(StageReport(name, tuple(got[name].shape), error_stats(got[name], ref[name]),
                                       error_stats(local, ref[name]), thr[name], local_thr[name]))
    report = LayerDebugReport(reports, got["residual"], ref["residual"])
    if verbose:
        report.print(file=file, use_rich=use_rich)
    return report
