"""Next-token metrics at the query position (docs/methods.md#causal-validation), per example.

All functions take the logits at the query position only, [batch, vocab], and the target token
(B of the retrieval probe) per example:

- `cross_entropy`: -log softmax(logits)[target]
- `top1`, `top5`: 1.0 if fewer than k *other* tokens have a logit >= the target's, else 0.0 (ties
  count against the target, so constant logits never score a hit and the rank is deterministic)
- `target_logit`: logit(target)
- `logit_diff`: LD = logit(target) - mean over the vocabulary of the logits

A metric *drop* is signed so that positive means the model got worse: ablated - clean for
cross-entropy, clean - ablated for the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

METRICS = ("cross_entropy", "top1", "top5", "target_logit", "logit_diff")
LOWER_IS_BETTER = frozenset({"cross_entropy"})


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 2 or target.shape != (logits.shape[0],):
        raise ValueError(
            f"want query-position logits [batch, vocab] and targets [batch], got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}; index the logits at query_pos first"
        )


def target_logit(logits: Float[torch.Tensor, "batch vocab"], target: Int[torch.Tensor, " batch"]) -> torch.Tensor:
    _check(logits, target)
    return logits.gather(1, target.to(logits.device, torch.long)[:, None])[:, 0]


def logit_diff(logits: Float[torch.Tensor, "batch vocab"], target: Int[torch.Tensor, " batch"]) -> torch.Tensor:
    """LD = logit(target) - mean logit, per example [batch]."""
    return target_logit(logits, target) - logits.mean(1)


def query_metrics(
    logits: Float[torch.Tensor, "batch vocab"], target: Int[torch.Tensor, " batch"]
) -> dict[str, Float[torch.Tensor, " batch"]]:
    """Every metric of `METRICS`, per example, in float32."""
    logits = logits.float()
    t_logit = target_logit(logits, target)
    rank = (logits >= t_logit[:, None]).sum(1) - 1  # other tokens at or above the target
    return {
        "cross_entropy": F.cross_entropy(logits, target.to(logits.device, torch.long), reduction="none"),
        "top1": (rank < 1).float(),
        "top5": (rank < 5).float(),
        "target_logit": t_logit,
        "logit_diff": t_logit - logits.mean(1),
    }


def metric_drop(metric: str, clean: float | torch.Tensor, ablated: float | torch.Tensor):
    """Degradation from clean to ablated, positive = worse (works on floats and tensors)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    return ablated - clean if metric in LOWER_IS_BETTER else clean - ablated
