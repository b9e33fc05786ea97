"""Head labels: "L<layer>H<head>" (as "L1H3"), the one spelling the package writes and reads."""

from __future__ import annotations

import re
from collections.abc import Iterable

Head = tuple[int, int]

_LABEL = re.compile(r"^\s*L(\d+)\s*[.:_ ]?\s*H(\d+)\s*$", re.IGNORECASE)


def head_label(head: Head | Iterable[int]) -> str:
    """(layer, head) -> "L<layer>H<head>"."""
    layer, h = head
    return f"L{int(layer)}H{int(h)}"


def heads_label(heads: Iterable[Head], sep: str = ", ", empty: str = "none") -> str:
    """Several heads, joined by `sep`; `empty` when there are none."""
    out = sep.join(head_label(h) for h in heads)
    return out or empty


def parse_head_label(text: str) -> Head | None:
    """"L1H3" (also "l1h3", "L1.H3", "L1 H3") -> (1, 3); None when `text` is not a head label."""
    m = _LABEL.match(text) if isinstance(text, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def kv_head(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The K/V head that query head `head` reads under grouped-query attention (GQA; MHA: itself).

    Query heads are grouped in order: with G = n_heads // n_kv_heads, heads [0, G) read K/V head 0, etc.
    """
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}; check the model config")
    return head // (n_heads // n_kv_heads)


def kv_heads(n_heads: int, n_kv_heads: int):
    """`kv_head` of every query head, as a LongTensor [n_heads] (an index into the K/V head axis)."""
    import torch

    return torch.tensor([kv_head(h, n_heads, n_kv_heads) for h in range(n_heads)], dtype=torch.long)
