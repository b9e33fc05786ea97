"""`HeadWeights`: the attention weights of one checkpoint, split per head.

Shapes follow TransformerLens conventions (`bridge.W_Q` etc.) so that a record read lazily from
safetensors can be compared 1:1 with a booted `TransformerBridge`:

    W_Q [n_layers, n_heads,    d_model, d_head]
    W_K [n_layers, n_kv_heads, d_model, d_head]     (GQA: fewer K/V heads, NOT expanded)
    W_V [n_layers, n_kv_heads, d_model, d_head]
    W_O [n_layers, n_heads,    d_head,  d_model]
    b_Q [n_layers, n_heads, d_head] | None,  b_K/b_V [n_layers, n_kv_heads, d_head] | None,  b_O [n_layers, d_model] | None

Per-head vectors (for spectral fingerprints) give every query head its own W_Q and W_O slices and
the K/V slices of its group (query head h uses K/V head h // (n_heads // n_kv_heads)), so under GQA
the heads of one group share part of their vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float

from headscreen.heads import kv_head, kv_heads
from headscreen.series.finite import require_finite


@dataclass(frozen=True)
class HeadWeights:
    W_Q: Float[torch.Tensor, "layer head d_model d_head"]
    W_K: Float[torch.Tensor, "layer kv_head d_model d_head"]
    W_V: Float[torch.Tensor, "layer kv_head d_model d_head"]
    W_O: Float[torch.Tensor, "layer head d_head d_model"]
    b_Q: Float[torch.Tensor, "layer head d_head"] | None = None
    b_K: Float[torch.Tensor, "layer kv_head d_head"] | None = None
    b_V: Float[torch.Tensor, "layer kv_head d_head"] | None = None
    b_O: Float[torch.Tensor, "layer d_model"] | None = None

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[2]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[3]

    @property
    def head_vector_size(self) -> int:
        """Length P of one head's flattened concat(W_Q, W_K, W_V, W_O)."""
        return 4 * self.d_model * self.d_head

    def kv_group(self, head: int) -> int:
        """The K/V head that query head `head` reads under GQA."""
        return kv_head(head, self.n_heads, self.n_kv_heads)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            name: tuple(t.shape)
            for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
            if (t := getattr(self, name)) is not None
        }

    def head_vectors(self, dtype: torch.dtype = torch.float32) -> Float[torch.Tensor, "layer head P"]:
        """Flattened concat(W_Q[h], W_K[g(h)], W_V[g(h)], W_O[h]) for every head; P = 4 * d_model * d_head."""
        group = kv_heads(self.n_heads, self.n_kv_heads)  # [head]
        parts = (
            self.W_Q,
            self.W_K[:, group],
            self.W_V[:, group],
            self.W_O,
        )
        return torch.cat([rearrange(p, "l h a b -> l h (a b)").to(dtype) for p in parts], dim=-1)


class LayeredHeadWeights:
    """A checkpoint's head weights as one `HeadWeights` per layer ([1, ...] each), not stacked: what the
    as-stored read gives when it maps the checkpoint's files (`read_head_weights(dtype=None)`), since
    the layers' tensors lie at unrelated places in the files and stacking them would copy them all.

    The fused sketch pass (headscreen/spectral/fused.py) walks the layers as they are. Anything else
    reads `W_Q` … `b_O` or `head_vectors` as for a `HeadWeights`: the layers are then stacked once (a
    copy, kept for later reads).

    `unchecked`: where the weights came from ("<checkpoint>: layer"), when their W_Q … W_O have not been
    checked for NaN/Inf yet (`read_head_weights(check=False)`: the fused sketch pass reads every value
    anyway and checks its float64 sums instead of a separate pass over the pages). Whoever reads the
    values otherwise calls `check_finite()` first; stacking does."""

    def __init__(self, layers: tuple[HeadWeights, ...], *, unchecked: str | None = None) -> None:
        if not layers or any(hw.n_layers != 1 for hw in layers):
            raise ValueError("LayeredHeadWeights takes one HeadWeights of n_layers 1 per layer")
        self.layers = layers
        self._stacked: HeadWeights | None = None
        self._unchecked = unchecked

    @property
    def checked(self) -> bool:
        """True once W_Q … W_O are known to be finite."""
        return self._unchecked is None

    def check_finite(self) -> None:
        """Raise `NonFiniteWeights` naming the checkpoint, layer and part of the first NaN/Inf in W_Q … W_O
        (a no-op once checked; biases are checked when read)."""
        if self._unchecked is None:
            return
        for layer, lw in enumerate(self.layers):
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                require_finite(getattr(lw, name), f"{self._unchecked} {layer} {name}")
        self._unchecked = None

    def stacked(self) -> HeadWeights:
        """The layers stacked into one `HeadWeights` (a copy, made once; checked first)."""
        self.check_finite()
        if self._stacked is None:
            names = [n for n in _NAMES if getattr(self.layers[0], n) is not None]
            self._stacked = HeadWeights(**{n: torch.cat([getattr(lw, n) for lw in self.layers]) for n in names})
        return self._stacked

    # the stacked record's tensors and methods (stacked on first use)
    W_Q = property(lambda self: self.stacked().W_Q)
    W_K = property(lambda self: self.stacked().W_K)
    W_V = property(lambda self: self.stacked().W_V)
    W_O = property(lambda self: self.stacked().W_O)
    b_Q = property(lambda self: self.stacked().b_Q)
    b_K = property(lambda self: self.stacked().b_K)
    b_V = property(lambda self: self.stacked().b_V)
    b_O = property(lambda self: self.stacked().b_O)

    def head_vectors(self, dtype: torch.dtype = torch.float32) -> Float[torch.Tensor, "layer head P"]:
        return self.stacked().head_vectors(dtype)

    def kv_group(self, head: int) -> int:
        return self.layers[0].kv_group(head)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    # the geometry: every layer's record has the same
    n_heads = property(lambda self: self.layers[0].n_heads)
    n_kv_heads = property(lambda self: self.layers[0].n_kv_heads)
    d_model = property(lambda self: self.layers[0].d_model)
    d_head = property(lambda self: self.layers[0].d_head)
    head_vector_size = property(lambda self: self.layers[0].head_vector_size)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """As `HeadWeights.shapes` of the stacked record, without stacking (every layer must agree)."""
        per_layer = {tuple(sorted(lw.shapes().items())) for lw in self.layers}
        if len(per_layer) != 1:
            raise ValueError("the layers' attention tensors differ in shape; a checkpoint must keep one geometry")
        return {name: (len(self.layers), *shape[1:]) for name, shape in self.layers[0].shapes().items()}


_NAMES = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
