"""The two-kernel reference of the fused router: NVFP4 GEMM reference, then ``torch.topk``.

Semantics every kernel here follows:

* logits = ``Nvfp4Linear.nvfp4_gemm_reference(x)`` (activations quantized to NVFP4 with the
  layer's ``input_global_scale`` or a dynamic one, both operands dequantized, float32 math);
* experts are chosen by the *logits* (softmax and sigmoid are monotonic, so this is the same
  as choosing by scores), descending, ties to the lower expert id;
* weights: ``softmax`` -- the softmax over all E logits, taken at the chosen experts
  (``renormalize=True``: renormalised over the k chosen); ``sigmoid`` -- ``sigmoid(logit)``
  renormalised over the k chosen (``renormalize=False``: plain sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

SCORINGS = ("softmax", "sigmoid")


def default_renormalize(scoring: str) -> bool:
    check_scoring(scoring)
    return scoring == "sigmoid"


def check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


def weights_for_ids(logits: torch.Tensor, ids: torch.Tensor, scoring: str, renormalize: Optional[bool] = None) -> torch.Tensor:
    """Routing weights of experts ``ids`` [T, k] given all logits [T, E] (float32)."""
    if renormalize is None:
        renormalize = default_renormalize(scoring)
    check_scoring(scoring)
    logits = logits.float()
    chosen = logits.gather(1, ids.long())
    if scoring == "softmax":
        if renormalize:
            w = torch.softmax(chosen, dim=-1)
        else:
            w = torch.softmax(logits, dim=-1).gather(1, ids.long())
    else:
        w = torch.sigmoid(chosen)
        if renormalize:
            w = w / w.sum(dim=-1, keepdim=True)
    return w


def topk_from_logits(logits: torch.Tensor, top_k: int, scoring: str = "softmax", renormalize: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` on the logits and the weights for them: ``(ids int32 [T,k], weights fp32 [T,k])``."""
    check_scoring(scoring)
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be in 1..{logits.shape[-1]}, got {top_k}")
    _, ids = torch.topk(logits.float(), top_k, dim=-1, largest=True, sorted=True)
    return ids.to(torch.int32), weights_for_ids(logits, ids, scoring, renormalize)


def router_logits_reference(x: torch.Tensor, linear) -> torch.Tensor:
    """Logits [T, E] in float32 from the NVFP4 GEMM reference of ``linear`` (an ``Nvfp4Linear``)."""
    linear.finalize_weights()
    with torch.no_grad():
        return linear.nvfp4_gemm_reference(x.reshape(-1, x.shape[-1]))


def reference_router(x: torch.Tensor, linear, top_k: int = 6, scoring: str = "softmax", renormalize: Optional[bool] = None):
    """The two-kernel path: NVFP4 GEMM reference + ``torch.topk``."""
    return topk_from_logits(router_logits_reference(x, linear), top_k, scoring, renormalize)


@dataclass(frozen=True)
class RoutingComparison:
    rows: int
    id_mismatches: int  #: (row, slot) positions whose expert differs from the reference
    exact_ties: int  #: ... of which the two experts' reference logits are exactly equal
    near_ties: int  #: ... of which they differ by at most ``tie_tol`` (summation order), not exactly
    real_mismatches: int  #: ... the rest: a wrong expert
    max_weight_err: float  #: max |weight - reference weight of the expert the kernel chose|
    tie_tol: float

    @property
    def ok(self) -> bool:
        return self.real_mismatches == 0

    def as_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


def compare_routing(ids: torch.Tensor, weights: torch.Tensor, ref_logits: torch.Tensor, top_k: int, scoring: str,
                    renormalize: Optional[bool] = None, tie_rel: float = 1e-5) -> RoutingComparison:
    """Compare a kernel's ``(ids, weights)`` with the reference logits.

    Position by position (both lists are sorted descending), a differing expert is a tie when
    the reference logits of the two experts are equal (exact) or within ``tie_tol`` =
    ``tie_rel * max|logit|`` of the row (near: a float32 sum over K in another order moves a
    logit by about that much).  Weights are checked against the reference weights *of the
    experts the kernel chose*, so a tie swap does not count twice.
    """
    ref_logits = ref_logits.float().cpu()
    ids = ids.cpu().long()
    weights = weights.cpu().float()
    ref_ids, _ = topk_from_logits(ref_logits, top_k, scoring, renormalize)
    ref_ids = ref_ids.long()
    if ids.shape != ref_ids.shape:
        raise ValueError(f"ids shape {tuple(ids.shape)} != reference {tuple(ref_ids.shape)}")
    valid = (ids >= 0) & (ids < ref_logits.shape[1])
    safe_ids = torch.where(valid, ids, torch.zeros_like(ids))
    got = ref_logits.gather(1, safe_ids)
    want = ref_logits.gather(1, ref_ids)
    tol_row = tie_rel * ref_logits.abs().amax(dim=1, keepdim=True)
    differ = ids != ref_ids
    delta = (got - want).abs()
    exact = differ & valid & (delta == 0)
    near = differ & valid & (delta > 0) & (delta <= tol_row)
    real = differ & ~(exact | near)
    # a kernel that returns the same expert twice is wrong even if its logit ties
    dup = torch.zeros_like(differ)
    for j in range(1, top_k):
        dup[:, j] = (ids[:, j:j + 1] == ids[:, :j]).any(dim=1)
    real = real | dup
    ref_w = weights_for_ids(ref_logits, safe_ids, scoring, renormalize)
    werr = float((weights - ref_w).abs().max()) if weights.numel() else 0.0
    if not bool(torch.isfinite(weights).all()):
        werr = float("inf")
    return RoutingComparison(
        rows=ids.shape[0], id_mismatches=int(differ.sum()), exact_ties=int(exact.sum()), near_ties=int(near.sum()),
        real_mismatches=int(real.sum()), max_weight_err=werr, tie_tol=float(tol_row.max()) if ids.numel() else 0.0,
    )
