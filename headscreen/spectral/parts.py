"""A checkpoint's head vectors as the fused pass walks them (headscreen.spectral.fused): per-layer parts
(views of W_Q, W_K, W_V, W_O or of an [L, H, P] tensor, never stacked), their layout, and each part's
storage as the compiled loop reads it (the whole buffer as numpy, half precision as bit patterns; loop
order = the memory order of θ_t)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .segments import PARTS

#: half-precision tensors are handed to the compiled loop as their bit patterns, fp16 as uint16 and bf16
#: as int16, so that the loop is compiled once per kind with the right conversion (no branch per element)
_BITS = {torch.float16: np.uint16, torch.bfloat16: np.int16}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Part = tuple[tuple[Tensor, ...], int]  # (per-layer [G, A, B] views, first column of the part in the head vector)


def head_parts(weights) -> list[Part]:
    """The parts of one checkpoint's head vectors, per layer, as views (no copy): W_Q, W_K, W_V, W_O at
    columns 0, n, 2n, 3n (n = d_model·d_head; K/V with their own number of heads) of a `HeadWeights`,
    or of a `LayeredHeadWeights` (one record per layer, walked without stacking), or an [L, H, P]
    tensor as one part [H, 1, P] per layer."""
    if isinstance(weights, Tensor):
        return [(tuple(weights.unsqueeze(2).unbind(0)), 0)]
    n = weights.d_model * weights.d_head
    layers = getattr(weights, "layers", None)
    if layers is not None:
        return [(tuple(getattr(lw, name)[0] for lw in layers), i * n) for i, name in enumerate(PARTS)]
    return [(tuple(getattr(weights, name).unbind(0)), i * n) for i, name in enumerate(PARTS)]


def parts_layout(parts: list[Part]) -> tuple:
    """What must agree between θ_t and θ_{t−1} for a part-by-part difference: layers, shapes and columns."""
    return tuple((len(ts), tuple(ts[0].shape), col) for ts, col in parts)


def as_vectors(parts: list[Part], n_heads: int) -> Tensor:
    """The [L, H, P] head vectors of `parts` (a copy; for a series that mixes input kinds)."""
    dtype = parts[0][0][0].dtype
    for ts, _ in parts:
        dtype = torch.promote_types(dtype, ts[0].dtype)
    return torch.cat([torch.stack(ts).repeat_interleave(n_heads // ts[0].shape[0], dim=1).flatten(2).to(dtype)
                      for ts, _ in parts], -1)


def as_parts(vectors: Tensor) -> list[Part]:
    return [(tuple(vectors.unsqueeze(2).unbind(0)), 0)]


def flat_storage(t: Tensor) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """(the whole storage as a 1-D numpy array, offset, strides) of a float tensor (half precision as
    bit patterns, see _BITS)."""
    if t.dtype not in _FLOATS:
        raise ValueError(f"head weights must be float16/bfloat16/float32/float64; got {t.dtype}")
    t = t.detach()
    n = t.untyped_storage().nbytes() // t.element_size()
    whole = torch.as_strided(t, (n,), (1,), 0)
    if t.dtype in _BITS:
        return whole.view(torch.int16).numpy().view(_BITS[t.dtype]), t.storage_offset(), tuple(t.stride())
    return whole.numpy(), t.storage_offset(), tuple(t.stride())


def loop_order(t: Tensor, prev: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
    """The part (and θ_{t−1}'s) as [L, G, outer, inner] with the inner dim the one of smaller stride in
    θ_t, so the loop walks memory in order; True when (a, b) were swapped to get there."""
    if t.shape[2] > 1 and t.shape[3] > 1 and t.stride(2) < t.stride(3):
        return t.transpose(2, 3), None if prev is None else prev.transpose(2, 3), True
    return t, prev, False
