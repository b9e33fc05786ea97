"""`ProbeBatch`: a batch of token-id prompts with the positions that the probes and ablations score.

Everything is token ids: no implicit BOS is ever added, and `has_bos` says whether position 0 is a
BOS token (docs/methods.md#checkpoints-and-loading).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Int


@dataclass(frozen=True)
class ProbeBatch:
    name: str  # "retrieval", "repeated", "natural", ...
    tokens: Int[torch.Tensor, "batch pos"]
    has_bos: bool
    seed: int
    query_pos: Int[torch.Tensor, " batch"]  # position whose next-token prediction is scored
    target_token: Int[torch.Tensor, " batch"] | None = None  # the token that should be predicted there (B)
    a_pos: Int[torch.Tensor, " batch"] | None = None  # position of the earlier A of the [A, B] pair
    meta: dict = field(default_factory=dict)  # generator settings, recorded as provenance

    @property
    def n(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]
