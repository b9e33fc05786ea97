"""Read buffers recycled between checkpoints.

Reading a checkpoint's attention tensors into freshly allocated memory costs a page fault per 4 kB
(the kernel maps and zeroes every page: 9,216 faults for the 36 MB of a 100M model, about as long as
the read itself). A `BufferPool` hands out a buffer again once nothing else holds its memory, so a
series read checkpoint after checkpoint (the sketcher keeping only θ_{t−1}) settles on two sets of
buffers that are reused. Whether anything else holds a buffer is told by the reference count of its
storage; where torch does not expose that count, nothing is reused (a fresh buffer each time).
"""

from __future__ import annotations

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)


class BufferPool:
    """Buffers by (shape, dtype): at most `per_kind` of each are kept for reuse."""

    def __init__(self, per_kind: int = 2) -> None:
        self.per_kind = per_kind
        self._held: dict[tuple, list[torch.Tensor]] = {}

    @staticmethod
    def _free(t: torch.Tensor) -> bool:
        if _use_count is None:
            return False
        storage = t.untyped_storage()
        return _use_count(storage._cdata) <= 2  # the pool's tensor and `storage` itself: no view, no copy

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A buffer of `shape` and `dtype` (uninitialised) that nothing else references."""
        held = self._held.setdefault((tuple(shape), dtype), [])
        for t in held:
            if self._free(t):
                return t
        t = torch.empty(shape, dtype=dtype)
        if len(held) < self.per_kind:
            held.append(t)
        return t
