"""Seeded sketches of long parameter vectors: Gaussian Johnson–Lindenstrauss (published) and CountSketch (the default).

Φ ∈ ℝ^{d×P} has i.i.d. entries N(0, 1/d), so E[ΦᵀΦ] = I and ⟨Φx, Φy⟩ ≈ ⟨x, y⟩: the update Gram
of sketches approximates the exact one. Φ is linear, so the sketches of the parameters θ_t and of
the updates δ_t = θ_t − θ_{t−1} determine each other (Φθ_t − Φθ_{t−1} = Φδ_t); `HeadSketcher`
projects δ_t and records the running sum s_t = s_{t−1} + Φδ_t (= Φθ_t in exact arithmetic).

Definition of Φ (stable across runs, machines, chunkings and library versions):
* columns are cut into blocks of `block_size`; block b covers columns [b·B, (b+1)·B);
* block b is drawn from numpy's PCG64 seeded by SeedSequence([seed, b]) as
  `standard_normal((cols, d), float32)`, transposed to [d, cols] and divided by sqrt(d). Drawing
  column-major makes Φ for P' < P the first P' columns of Φ for P.
  `project` multiplies by the unscaled block in the projector's dtype and divides the [.., d] result
  by sqrt(d) (equal to x·Φᵀ up to rounding, and no scaled copy of Φ is ever made).
Numpy's bit generator is used (not torch's) because its streams are documented as stable.

Memory: Φ is never held whole unless it fits `cache_bytes` (d·P·4 bytes as float32); otherwise at
most `cache_bytes` of blocks are cached and the rest are regenerated on each call (drawing one
16384×100 block costs ~12 ms here, as much as projecting 20M parameters, so the cache matters).
A float32 call needs no temporary beyond the [batch, d] result when x is float32; a float64 call
converts one block of Φ and one [batch, block_size] slice of x.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .config import DEFAULT_BLOCK_SIZE, DEFAULT_CACHE_BYTES, SpectralConfig


@runtime_checkable
class Projector(Protocol):
    """Maps [..., P] vectors to [..., dim] sketches; linear."""

    in_dim: int
    dim: int

    def project(self, x: Float[Tensor, "... P"]) -> Float[Tensor, "... d"]: ...


def _check_x(x: Tensor, in_dim: int, col_offset: int) -> None:
    if x.ndim < 1:
        raise ValueError("x must have a last dim of parameters; got a scalar")
    n = x.shape[-1]
    if col_offset < 0 or col_offset + n > in_dim:
        raise ValueError(
            f"columns [{col_offset}, {col_offset + n}) fall outside the projector's P={in_dim}; "
            "build the projector with the full head-vector length P and pass col_offset for a slice"
        )


class _SeededBlocks:
    """Shared settings of the seeded, column-blocked sketches: P = in_dim columns cut into blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        seed: int = 0,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if in_dim < 1:
            raise ValueError(f"in_dim={in_dim} must be the (positive) vector length P")
        if dim < 1:
            raise ValueError(f"dim={dim} must be positive; use e.g. 10 * window")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be positive; use {DEFAULT_BLOCK_SIZE}")
        if seed < 0:
            raise ValueError(f"seed={seed} must be a non-negative integer")
        self.in_dim, self.dim, self.seed = int(in_dim), int(dim), int(seed)
        self.block_size, self.cache_bytes, self.dtype = int(block_size), int(cache_bytes), dtype
        self.n_blocks = -(-self.in_dim // self.block_size)

    def project(
        self, x: Float[Tensor, "... P"], *, col_offset: int = 0, dtype: torch.dtype | None = None
    ) -> Float[Tensor, "... d"]:
        """x Sᵀ for the columns [col_offset, col_offset + n) of S, n = x.shape[-1] (default: all of P).

        Block by block for the whole batch (e.g. all heads [L, H, P] at once), accumulated in block
        order in the projector's dtype (or `dtype` for this call). Slices of one vector may be
        projected separately (col_offset) and summed: equal to the whole projection up to rounding.
        """
        _check_x(x, self.in_dim, col_offset)
        dtype = dtype or self.dtype
        n = x.shape[-1]
        lead = x.shape[:-1]
        flat = x.reshape(-1, n)
        out = torch.zeros(flat.shape[0], self._acc_width, dtype=dtype)
        lo, hi = col_offset, col_offset + n
        for b in range(lo // self.block_size, -(-hi // self.block_size)):
            b_lo = b * self.block_size
            c_lo, c_hi = max(lo, b_lo), min(hi, b_lo + self.block_size)
            self._accumulate(out, flat[:, c_lo - lo : c_hi - lo].to(dtype), b, c_lo - b_lo, c_hi - b_lo)
        return self._finish(out).reshape(*lead, self.dim)

    @property
    def _acc_width(self) -> int:
        """Columns of the accumulator that `_accumulate` adds into and `_finish` turns into [batch, d]."""
        return self.dim

    def _accumulate(self, out: Tensor, xs: Tensor, b: int, c0: int, c1: int) -> None:
        """out [batch, acc] += xs [batch, c1 - c0] times columns [c0, c1) of block b, transposed."""
        raise NotImplementedError

    def _finish(self, out: Tensor) -> Tensor:
        return out


class GaussianSketch(_SeededBlocks):
    """Seeded Gaussian JL projection Φ [dim, in_dim], generated in fixed column blocks."""

    def __init__(self, in_dim: int, dim: int, seed: int = 0, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(in_dim, dim, seed, block_size=block_size, cache_bytes=cache_bytes, dtype=dtype)
        self._cache: dict[int, Tensor] = {}
        self._cached_bytes = 0

    @classmethod
    def from_config(cls, config: SpectralConfig, in_dim: int) -> GaussianSketch:
        if config.exact:
            raise ValueError("config.exact=True asks for the identity; use make_projector(config, P)")
        return cls(in_dim, config.dim, config.seed, block_size=config.block_size,
                   cache_bytes=config.cache_bytes, dtype=config.projection_torch_dtype)

    def _draw(self, b: int) -> Tensor:  # [dim, cols] float32, unscaled N(0, 1)
        lo = b * self.block_size
        cols = min(self.block_size, self.in_dim - lo)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, b])))
        z = rng.standard_normal((cols, self.dim), dtype=np.float32)
        # copied into torch's (64-byte aligned) memory: BLAS results can depend on the alignment of
        # the operands, and numpy's is not fixed, which would make projections differ in the last bit
        return torch.empty(cols, self.dim).copy_(torch.from_numpy(z)).T

    def raw_block(self, b: int) -> Float[Tensor, "d cols"]:
        """Unscaled N(0,1) block b (float32), from the cache when present."""
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"block {b} outside [0, {self.n_blocks})")
        z = self._cache.get(b)
        if z is None:
            z = self._draw(b)
            nbytes = z.numel() * z.element_size()
            if self._cached_bytes + nbytes <= self.cache_bytes:
                self._cache[b] = z
                self._cached_bytes += nbytes
        return z

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def block(self, b: int) -> Float[Tensor, "d cols"]:
        """Block b of Φ (columns [b·B, min((b+1)·B, P))) in the projector's dtype."""
        return self.raw_block(b).to(self.dtype) / self.dim**0.5

    def matrix(self, max_bytes: int = 512 * 2**20) -> Float[Tensor, "d P"]:
        """Φ whole: for tests and small P only (refuses above `max_bytes`)."""
        nbytes = self.dim * self.in_dim * torch.finfo(self.dtype).bits // 8
        if nbytes > max_bytes:
            raise MemoryError(f"Φ would take {nbytes} bytes > max_bytes={max_bytes}; use project() instead")
        return torch.cat([self.block(b) for b in range(self.n_blocks)], dim=1)

    def _accumulate(self, out: Tensor, xs: Tensor, b: int, c0: int, c1: int) -> None:
        z_t = self.raw_block(b)[:, c0:c1].T  # [cols, d], rows contiguous
        out.addmm_(xs, z_t.to(out.dtype))  # one matmul per block for the whole batch

    def _finish(self, out: Tensor) -> Tensor:
        return out.div_(self.dim**0.5)  # the 1/sqrt(d) of Φ, applied once to the result

    def provenance(self) -> dict:
        return {"kind": "gaussian_jl", "in_dim": self.in_dim, "dim": self.dim, "seed": self.seed,
                "block_size": self.block_size, "generator": "numpy PCG64(SeedSequence([seed, block]))",
                "dtype": str(self.dtype).removeprefix("torch.")}


class CountSketch(_SeededBlocks):
    """Seeded CountSketch S [dim, in_dim]: each column j has a single ±1, in row h(j).

    E[SᵀS] = I, so ⟨Sx, Sy⟩ is an unbiased estimate of ⟨x, y⟩ with, for dense vectors, the variance
    of the Gaussian sketch ((‖x‖²‖y‖² + ⟨x,y⟩²)/d), but projecting costs P additions per vector
    instead of 2·d·P flops. Worse than Gaussian for sparse or spiky vectors (a few large coordinates
    collide in one bucket with probability ~1/d each). The default `kind` (at d = 50·W); the published
    method (docs/methods.md#sketches) uses the Gaussian sketch.

    Definition (stable like GaussianSketch's): columns are cut into blocks of `block_size`; block b
    draws from numpy's PCG64(SeedSequence([seed, b, 1])) `integers(0, dim, block_size)` (the rows h)
    and then `integers(0, 2, block_size)` (sign = 2·bit − 1), both cut to the block's columns.
    Projection: the columns of a block go to 2·d bins, bin 2·h(j) for sign +1 and 2·h(j)+1 for −1,
    with one `index_add_` over the column range for the whole batch (no multiply, no padded gather
    table, and a cost that does not grow with d); the result is the even bins minus the odd ones.
    Memory: 20 bytes per column (h, sign, bin), cached within `cache_bytes`.
    """

    def __init__(self, in_dim: int, dim: int, seed: int = 0, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(in_dim, dim, seed, block_size=block_size, cache_bytes=cache_bytes, dtype=dtype)
        self._cache: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self._cached_bytes = 0

    @classmethod
    def from_config(cls, config: SpectralConfig, in_dim: int) -> CountSketch:
        return cls(in_dim, config.dim, config.seed, block_size=config.block_size,
                   cache_bytes=config.cache_bytes, dtype=config.projection_torch_dtype)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def hashes(self, b: int) -> tuple[Tensor, Tensor]:
        """(rows h [cols] int64, signs [cols] float32) of block b."""
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"block {b} outside [0, {self.n_blocks})")
        return self._block(b)[:2]

    def _block(self, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """(h, sign, bin) of block b; bin = 2·h + (sign < 0), the accumulator column of each column."""
        hit = self._cache.get(b)
        if hit is not None:
            return hit
        lo = b * self.block_size
        cols = min(self.block_size, self.in_dim - lo)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, b, 1])))
        # whole blocks are drawn, then cut: S for P' < P is the first P' columns of S for P
        h = torch.from_numpy(rng.integers(0, self.dim, self.block_size, dtype=np.int64)[:cols].copy())
        sign = torch.from_numpy(rng.integers(0, 2, self.block_size, dtype=np.int64)[:cols].astype(np.float32) * 2 - 1)
        entry = (h, sign, 2 * h + (sign < 0).long())
        if self._cached_bytes + 20 * cols <= self.cache_bytes:
            self._cache[b] = entry
            self._cached_bytes += 20 * cols
        return entry

    def signed_bins(self) -> np.ndarray:
        """[P] int32: the accumulator column 2·h(j) + [s(j) < 0] of every column j (the table the fused
        update pass of headscreen.spectral.fused reads; 4 bytes per column, held by the caller)."""
        return torch.cat([self._block(b)[2] for b in range(self.n_blocks)]).to(torch.int32).numpy()

    def matrix(self, max_bytes: int = 512 * 2**20) -> Float[Tensor, "d P"]:
        """S whole, dense: for tests and small P only (refuses above `max_bytes`)."""
        nbytes = self.dim * self.in_dim * torch.finfo(self.dtype).bits // 8
        if nbytes > max_bytes:
            raise MemoryError(f"S would take {nbytes} bytes > max_bytes={max_bytes}; use project() instead")
        out = torch.zeros(self.dim, self.in_dim, dtype=self.dtype)
        for b in range(self.n_blocks):
            h, sign = self.hashes(b)
            cols = torch.arange(b * self.block_size, b * self.block_size + h.numel())
            out[h, cols] = sign.to(self.dtype)
        return out

    @property
    def _acc_width(self) -> int:
        return 2 * self.dim  # [+1 bin, −1 bin] per row of S

    def _accumulate(self, out: Tensor, xs: Tensor, b: int, c0: int, c1: int) -> None:
        # a scatter-add of the columns into their signed bins, for the whole batch at once
        out.index_add_(1, self._block(b)[2][c0:c1], xs)

    def _finish(self, out: Tensor) -> Tensor:
        return out[:, 0::2] - out[:, 1::2]

    def provenance(self) -> dict:
        return {"kind": "countsketch", "in_dim": self.in_dim, "dim": self.dim, "seed": self.seed,
                "block_size": self.block_size, "generator": "numpy PCG64(SeedSequence([seed, block, 1]))",
                "dtype": str(self.dtype).removeprefix("torch.")}


class ExactProjector:
    """The identity behind the Projector interface (dim = P): exact Grams for toy models."""

    def __init__(self, in_dim: int, *, dtype: torch.dtype = torch.float64) -> None:
        if in_dim < 1:
            raise ValueError(f"in_dim={in_dim} must be the (positive) vector length P")
        self.in_dim = self.dim = int(in_dim)
        self.dtype = dtype

    def project(self, x: Float[Tensor, "... P"], *, col_offset: int = 0) -> Float[Tensor, "... P"]:
        _check_x(x, self.in_dim, col_offset)
        n = x.shape[-1]
        out = x.to(self.dtype)
        if n == self.in_dim:
            return out.clone() if out.data_ptr() == x.data_ptr() else out
        full = torch.zeros(*x.shape[:-1], self.in_dim, dtype=self.dtype)
        full[..., col_offset : col_offset + n] = out
        return full

    def provenance(self) -> dict:
        return {"kind": "exact", "in_dim": self.in_dim, "dim": self.dim,
                "dtype": str(self.dtype).removeprefix("torch.")}


def make_projector(config: SpectralConfig, in_dim: int) -> GaussianSketch | CountSketch | ExactProjector:
    """The projector a config asks for: identity when `config.exact`, else a d = config.dim sketch of
    `config.sketch_kind` ("gaussian", the published default, or "countsketch")."""
    if config.exact:
        return ExactProjector(in_dim, dtype=config.compute_dtype)
    if config.sketch_kind == "countsketch":
        return CountSketch.from_config(config, in_dim)
    return GaussianSketch.from_config(config, in_dim)
