"""A small MoE block in two forms: NVFP4 (the thing under test) and plain BF16 (the reference).

Block (one decoder MLP sub-layer)::

    h        = RMSNorm(x) * norm_weight                          stage "rmsnorm"
    logits   = h @ W_router^T                                    stage "router_logits"
    routing  = dense [T, E] top-k softmax weights (renormalized) stage "routing"
    routed   = sum_e routing[:, e] * Expert_e(h)                 stage "routed_experts"
    shared   = SharedExpert(h)                                   stage "shared_expert"
    moe      = routed + shared                                   stage "moe_out"
    out      = x + moe                                           stage "residual"

    Expert(h) = W_down @ (silu(h @ W_gate^T) * (h @ W_up^T)),  gate and up fused in one [2I, H] weight.

The NVFP4 block builds every projection (router included, unless
``router_nvfp4=False``) from :class:`~kernels.nvfp4.Nvfp4Linear`; activations
between stages are bf16.  Each stage is a method taking the dict of earlier stage
outputs, so the debugger can run one stage on the *reference's* inputs as well as
on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from ..nvfp4 import Nvfp4Linear

ROW_GAIN_SIGMA = 0.75

STAGES = ("rmsnorm", "router_logits", "routing", "routed_experts", "shared_expert", "moe_out", "residual")

State = Dict[str, torch.Tensor]
Fault = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MoEConfig:
    hidden: int = 128
    intermediate: int = 64  #: per routed expert
    shared_intermediate: int = 128
    num_experts: int = 8
    top_k: int = 2
    rms_eps: float = 1e-6
    router_nvfp4: bool = True

    def __post_init__(self) -> None:
        for f in ("hidden", "intermediate", "shared_intermediate"):
            if getattr(self, f) % 16:
                raise ValueError(f"{f} must be a multiple of 16 (NVFP4 block size), got {getattr(self, f)}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in [1, num_experts], got {self.top_k}")


@dataclass
class MoEWeights:
    """BF16 weights, ``[out_features, in_features]`` per projection."""

    norm: torch.Tensor  #: [H]
    router: torch.Tensor  #: [E, H]
    gate_up: torch.Tensor  #: [E, 2I, H]  (rows 0..I-1 gate, I..2I-1 up)
    down: torch.Tensor  #: [E, H, I]
    shared_gate_up: torch.Tensor  #: [2Is, H]
    shared_down: torch.Tensor  #: [H, Is]

    def to(self, device) -> "MoEWeights":
        return MoEWeights(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def synthetic_moe_weights(config: MoEConfig = MoEConfig(), seed: int = 0, device="cpu") -> MoEWeights:
    """Seeded weights (drawn on the CPU, so every device gets the same values)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    c = config

    def rnd(*shape, std):
        # log-normal gains per output row, as trained weights have: rows differ in magnitude,
        # so a scale factor read from the wrong row is a visible error
        w = torch.randn(*shape, generator=g) * std
        gains = torch.exp(ROW_GAIN_SIGMA * torch.randn(*shape[:-1], 1, generator=g) - ROW_GAIN_SIGMA**2 / 2)
        return (w * gains).to(torch.bfloat16)

    w = MoEWeights(
        norm=(1.0 + 0.1 * torch.randn(c.hidden, generator=g)).to(torch.bfloat16),
        # a wider router keeps the top-k decisions away from ties
        router=rnd(c.num_experts, c.hidden, std=2.0 / c.hidden**0.5),
        gate_up=rnd(c.num_experts, 2 * c.intermediate, c.hidden, std=1.0 / c.hidden**0.5),
        down=rnd(c.num_experts, c.hidden, c.intermediate, std=1.0 / c.intermediate**0.5),
        shared_gate_up=rnd(2 * c.shared_intermediate, c.hidden, std=1.0 / c.hidden**0.5),
        shared_down=rnd(c.hidden, c.shared_intermediate, std=1.0 / c.shared_intermediate**0.5),
    )
    return w.to(device)


def synthetic_tokens(config: MoEConfig = MoEConfig(), tokens: int = 32, seed: int = 1, device="cpu") -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tokens, config.hidden, generator=g).to(torch.bfloat16).to(device)


def _dense_topk_softmax(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    probs = torch.softmax(logits.float(), dim=-1)
    vals, idx = torch.topk(probs, top_k, dim=-1)
    vals = vals / vals.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, idx, vals)


# ----------------------------------------------------------------------------- reference
def reference_moe_forward(weights: MoEWeights, x: torch.Tensor, config: MoEConfig = MoEConfig()) -> State:
    """Plain PyTorch BF16 forward (norm statistics and softmax in fp32); every stage's output."""
    w = weights
    xb = x.to(torch.bfloat16)
    out: State = {}
    xf = xb.float()
    h = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + config.rms_eps)).to(torch.bfloat16) * w.norm
    out["rmsnorm"] = h
    logits = F.linear(h, w.router)
    out["router_logits"] = logits
    routing = _dense_topk_softmax(logits, config.top_k)
    out["routing"] = routing
    routed = torch.zeros_like(h, dtype=torch.float32)
    for e in range(config.num_experts):
        gu = F.linear(h, w.gate_up[e])
        gate, up = gu.chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, w.down[e])
        routed += routing[:, e : e + 1] * y.float()
    out["routed_experts"] = routed.to(torch.bfloat16)
    gu = F.linear(h, w.shared_gate_up)
    gate, up = gu.chunk(2, dim=-1)
    out["shared_expert"] = F.linear(F.silu(gate) * up, w.shared_down)
    out["moe_out"] = out["routed_experts"] + out["shared_expert"]
    out["residual"] = xb + out["moe_out"]
    return out


# ----------------------------------------------------------------------------- NVFP4 block
class SwiGLUExpert(torch.nn.Module):
    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, name: str) -> None:
        super().__init__()
        self.gate_up = Nvfp4Linear(gate_up, name=f"{name}.gate_up")
        self.down = Nvfp4Linear(down, name=f"{name}.down")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Nvfp4MoEBlock(torch.nn.Module):
    """The MoE block with NVFP4 projections.  ``forward(x)`` returns the residual output."""

    stages = STAGES

    def __init__(self, weights: MoEWeights, config: MoEConfig = MoEConfig()) -> None:
        super().__init__()
        self.config = config
        self.norm_weight = torch.nn.Parameter(weights.norm.clone(), requires_grad=False)
        if config.router_nvfp4:
            self.router = Nvfp4Linear(weights.router, name="router")
        else:
            self.router = torch.nn.Linear(config.hidden, config.num_experts, bias=False, dtype=torch.bfloat16,
                                          device=weights.router.device)
            self.router.weight.data.copy_(weights.router)
            self.router.weight.requires_grad_(False)
        self.experts = torch.nn.ModuleList(
            SwiGLUExpert(weights.gate_up[e], weights.down[e], f"experts.{e}") for e in range(config.num_experts)
        )
        self.shared_expert = SwiGLUExpert(weights.shared_gate_up, weights.shared_down, "shared_expert")
        for m in self.modules():
            if isinstance(m, Nvfp4Linear):
                m.finalize_weights()

    @classmethod
    def synthetic(cls, config: MoEConfig = MoEConfig(), seed: int = 0, device="cpu") -> "Nvfp4MoEBlock":
        return cls(synthetic_moe_weights(config, seed, device), config)

    # Each stage reads earlier outputs from ``s`` (a dict with at least "x").
    def stage_rmsnorm(self, s: State) -> torch.Tensor:
        x = s["x"].float()
        inv = 1.0 / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + self.config.rms_eps)
        return (x * inv).to(torch.bfloat16) * self.norm_weight

    def stage_router_logits(self, s: State) -> torch.Tensor:
        return self.router(s["rmsnorm"])

    def stage_routing(self, s: State) -> torch.Tensor:
        return _dense_topk_softmax(s["router_logits"], self.config.top_k)

    def stage_routed_experts(self, s: State) -> torch.Tensor:
        h, routing = s["rmsnorm"], s["routing"]
        out = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        for e, expert in enumerate(self.experts):
            tok = torch.nonzero(routing[:, e] > 0).flatten()
            if tok.numel() == 0:
                continue
            y = expert(h.index_select(0, tok)).float()
            out.index_add_(0, tok, routing[tok, e : e + 1] * y)
        return out.to(torch.bfloat16)

    def stage_shared_expert(self, s: State) -> torch.Tensor:
        return self.shared_expert(s["rmsnorm"])

    def stage_moe_out(self, s: State) -> torch.Tensor:
        return s["routed_experts"] + s["shared_expert"]

    def stage_residual(self, s: State) -> torch.Tensor:
        return s["x"].to(torch.bfloat16) + s["moe_out"]

    def run_stage(self, name: str, state: State, faults: Optional[Mapping[str, Fault]] = None) -> torch.Tensor:
        out = getattr(self, f"stage_{name}")(state)
        if faults and name in faults:
            out = faults[name](out)
        return out

    def forward_stages(self, x: torch.Tensor, faults: Optional[Mapping[str, Fault]] = None) -> State:
        """Chain every stage on its own outputs; returns all of them ("x" included)."""
        unknown = set(faults or ()) - set(STAGES)
        if unknown:
            raise KeyError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
        state: State = {"x": x}
        for name in STAGES:
            state[name] = self.run_stage(name, state, faults)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)["residual"]
