"""Vectors in parameter space: the one implementation of what every trajectory analysis repeats.

* `flatten` / `flatten_rows`: named tensors (or a stack of them) as one vector [P] (rows [W, P]), the
  tensors in the order given, cast to `dtype` after concatenation (the same numbers as casting each
  tensor first: a cast is exact or rounds once either way); `split_flat` cuts such a vector back.
* `top_right_singular`: the top-k right singular vectors of a stack of vectors (uncentered), computed
  in float64 (`torch.linalg.svd`, reduced), as orthonormal rows [k, P].
* `random_orthonormal`: a seeded random orthonormal k-basis of ℝ^P (columns [P, k]): the QR factor Q of
  a Gaussian [P, k] drawn from `generator` in `dtype` (the draw consumes the generator as
  `torch.randn(P, k, dtype=dtype)` does, so a caller's later draws see the same stream).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor


def flatten(tensors: Iterable[Tensor], dtype: torch.dtype | None = None) -> Float[Tensor, " P"]:
    """The tensors (detached) flattened and concatenated in the order given; cast to `dtype` when given."""
    vec = torch.cat([t.detach().reshape(-1) for t in tensors])
    return vec if dtype is None else vec.to(dtype)


def flatten_rows(tensors: Iterable[Tensor], dtype: torch.dtype | None = None) -> Float[Tensor, "W P"]:
    """Stacks [W, *shape_i] (one per name, the same W) as rows [W, Σ numel(shape_i)], in the order given."""
    parts = [t.detach() for t in tensors]
    rows = torch.cat([t.reshape(t.shape[0], -1) for t in parts], 1)
    return rows if dtype is None else rows.to(dtype)


def split_flat(vector: Float[Tensor, "*lead P"], shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """Cut the last axis of a flat vector (or rows [*lead, P]) back into named tensors [*lead, *shape], in
    the order of `shapes`; the inverse of `flatten` / `flatten_rows`."""
    out, i = {}, 0
    lead = tuple(vector.shape[:-1])
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = vector[..., i : i + n].reshape(*lead, *shape)
        i += n
    if i != vector.shape[-1]:
        raise ValueError(f"the vector has {vector.shape[-1]} entries but the named tensors hold {i}")
    return out


def top_right_singular(rows: Float[Tensor, "W P"], k: int) -> Float[Tensor, "k P"]:
    """The top-k right singular vectors of `rows` (float64, orthonormal rows, largest singular value first)."""
    if not 1 <= k <= min(rows.shape):
        raise ValueError(f"k={k} must lie in [1, min(W, P)] = [1, {min(rows.shape)}]")
    _, _, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    return vh[:k]


def random_orthonormal(p: int, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float64,
                       batch: tuple[int, ...] = ()) -> Float[Tensor, "*batch P k"]:
    """A random orthonormal k-basis of ℝ^p as columns (per `batch` entry): Q of QR(N(0, 1)^{p×k})."""
    return torch.linalg.qr(torch.randn(*batch, p, k, generator=generator, dtype=dtype))[0]


def random_orthonormal_bases(p: int, k: int, n: int, seed: int,
                             dtype: torch.dtype = torch.float64) -> list[Float[Tensor, "P k"]]:
    """`n` random orthonormal k-bases of ℝ^p drawn in turn from one generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    return [random_orthonormal(p, k, g, dtype) for _ in range(n)]


__all__ = ["flatten", "flatten_rows", "random_orthonormal", "random_orthonormal_bases", "split_flat",
           "top_right_singular"]
