"""`SpectralConfig`: every knob of the spectral layer in one frozen, validated dataclass.

The defaults follow docs/methods.md#update-gram-and-spectral-edge and docs/methods.md#per-head-update-gram-fingerprint: window W = 10 updates, the weighted edge
restricted to σ_j ≥ 0.05·σ_1, collapse at r23 < 1.20. The sketch defaults to a CountSketch of
d = 50·W = 500 dimensions (docs/methods.md#sketches: the published Gaussian sketch of d = 10·W = 100 misses
the published ≤ 5.7% gap-ratio error on our series; a CountSketch costs the same at any d, so d = 500 meets
it at the speed target); `sketch_kind="gaussian"` restores the published Gaussian sketch of d = 10·W.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

#: Columns of Φ drawn from one seeded generator. Part of Φ's *definition*: changing it changes Φ.
DEFAULT_BLOCK_SIZE = 16_384
#: Default budget for caching Φ blocks between calls (bytes; Φ is cached as float32).
DEFAULT_CACHE_BYTES = 256 * 2**20

BaselineMode = Literal["robust", "leading"]
RelScope = Literal["network", "layer"]
ProjectionDtype = Literal["float32", "float64"]
GramEstimator = Literal["raw", "norm_corrected"]
SketchKind = Literal["gaussian", "countsketch"]
PROJECTION_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: sketch_dim=None resolves to this many dimensions per window update, by sketch kind: 10 is the published
#: d = 10·W of the Gaussian sketch; 50 gives the CountSketch default d = 500 at W = 10, the smallest of the
#: measured d that meets ≤ 5.7% gap-ratio error (benchmarks/bench_sketch_accuracy.py, docs/methods.md#sketches).
DEFAULT_DIM_PER_WINDOW = {"countsketch": 50, "gaussian": 10}


def _bad(field: str, value, why: str, fix: str) -> ValueError:
    return ValueError(f"SpectralConfig.{field}={value!r} {why}; {fix}")


@dataclass(frozen=True)
class SpectralConfig:
    """Settings of the rolling update-Gram fingerprint.

    window:            W, updates per rolling window (W ≥ 3 so that σ_2/σ_3 exists).
    sketch_dim:        d of the sketch; None → DEFAULT_DIM_PER_WINDOW[sketch_kind]·W (countsketch: 50·W,
                       gaussian: 10·W, the published d). Ignored when `exact`.
    seed:              seed of the projection Φ (blocks are seeded from (seed, block index)).
    exact:             identity "sketch" (d = P): for toy models / small heads.
    sketch_kind:       "countsketch" (default: one ±1 per column, P additions per vector whatever d; the
                       Gaussian sketch's variance for dense vectors, worse for spiky ones) or "gaussian"
                       (docs/methods.md#sketches, the published kind: dense N(0, 1/d) Φ, 2·d flops per
                       parameter). Ignored when `exact`.
    min_sigma_frac:    weighted k* only considers j with σ_j ≥ min_sigma_frac·σ_1 (§6b); 0 disables.
    zero_tol:          σ below zero_tol·σ_1 count as numerically zero in the ratios; None → sqrt(W·eps)
                       of the Gram's dtype.
    block_size:        columns of Φ per seeded block (part of Φ's definition, recorded as provenance).
    cache_bytes:       at most this many bytes of Φ (float32) are kept between calls; 0 disables.
    compute_dtype:     dtype of the Gram arithmetic (float64 by default: the rolling statistics difference
                       the stored sketches s_t ≈ Φθ_t, so they must not lose δ_t to rounding).
    projection_dtype:  "float32" (default) or "float64": dtype of the Gaussian sketch's matmul Φδ_t
                       (the CountSketch's fused pass always sums in float64). The sketcher
                       projects the exact update δ_t = θ_t − θ_{t−1} (formed from the weights, so
                       no cancellation) and accumulates s_t = s_{t−1} + Φδ_t in float64; float32 is
                       then accurate to ~1e-6 relative *of δ_t* and 2× cheaper than float64.
    gram_estimator:    "norm_corrected" (default): sketched cosines with the exact update norms
                       n_i = ‖δ_i‖ (from `HeadSketcher`), G̃_ij = Ĝ_ij·n_i n_j/(n̂_i n̂_j); "raw": the
                       Gram of the sketched updates, Ĝ = (ΦX)(ΦX)ᵀ. The correction only applies where
                       exact norms are given (`update_norms=`; the screen always has them), otherwise
                       the raw Gram is used; in exact mode both are the same. Measured
                       (bench_sketch_accuracy.py, d = 100): gap-ratio error 4–9% lower than raw on all
                       six series tried (e.g. 7.17% → 6.73% on the demo series).
    transient_windows: windows left out of each head's z-score baseline (early-training transient);
                       None → W.
    baseline:          "robust" = median and 1.4826·MAD over all windows after the transient;
                       "leading" = the same over only the `baseline_windows` windows after the transient.
    baseline_windows:  only for "leading" (None → W).
    rel_scope:         "network" or "layer": the heads whose median at the same window `<metric>_rel`
                       divides by.
    collapse_threshold: collapse = first window after the r23 peak with r23 below this (§1).
    """

    window: int = 10
    sketch_dim: int | None = None
    seed: int = 0
    exact: bool = False
    sketch_kind: SketchKind = "countsketch"
    min_sigma_frac: float = 0.05
    zero_tol: float | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    cache_bytes: int = DEFAULT_CACHE_BYTES
    compute_dtype: torch.dtype = torch.float64
    projection_dtype: ProjectionDtype = "float32"
    gram_estimator: GramEstimator = "norm_corrected"
    transient_windows: int | None = None
    baseline: BaselineMode = "robust"
    baseline_windows: int | None = None
    rel_scope: RelScope = "network"
    collapse_threshold: float = 1.20

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 3:
            raise _bad("window", self.window, "is too small: σ_2/σ_3 needs at least 3 updates per window",
                       "use an integer window >= 3 (published default 10)")
        if self.sketch_dim is not None and (not isinstance(self.sketch_dim, int) or self.sketch_dim < self.window):
            raise _bad("sketch_dim", self.sketch_dim, f"is below the window ({self.window}): the sketched Gram "
                       "would be rank-deficient", "use sketch_dim >= window (default None -> 50*window for countsketch, 10*window for gaussian)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise _bad("seed", self.seed, "is not a non-negative integer", "pass e.g. seed=0")
        if not 0.0 <= self.min_sigma_frac < 1.0:
            raise _bad("min_sigma_frac", self.min_sigma_frac, "is outside [0, 1)",
                       "use 0.05 (the published value) or 0 to disable the restriction")
        if self.zero_tol is not None and not 0.0 <= self.zero_tol < 1.0:
            raise _bad("zero_tol", self.zero_tol, "is outside [0, 1)", "use None (automatic) or e.g. 1e-6")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise _bad("block_size", self.block_size, "is not a positive integer",
                       f"use the default {DEFAULT_BLOCK_SIZE} (it is part of the definition of Φ)")
        if not isinstance(self.cache_bytes, int) or self.cache_bytes < 0:
            raise _bad("cache_bytes", self.cache_bytes, "is not a non-negative integer",
                       "use 0 to disable the Φ cache or a byte budget such as 256 * 2**20")
        if self.compute_dtype not in (torch.float32, torch.float64):
            raise _bad("compute_dtype", self.compute_dtype, "is not float32 or float64",
                       "use torch.float64 (default) or torch.float32")
        if self.sketch_kind not in ("gaussian", "countsketch"):
            raise _bad("sketch_kind", self.sketch_kind, "is unknown",
                       "use 'countsketch' (default: sparse, cost independent of d) or 'gaussian' (published)")
        if self.projection_dtype not in PROJECTION_DTYPES:
            raise _bad("projection_dtype", self.projection_dtype, "is unknown",
                       "use 'float32' (default: Φδ_t is accurate in float32) or 'float64'")
        if self.gram_estimator not in ("raw", "norm_corrected"):
            raise _bad("gram_estimator", self.gram_estimator, "is unknown",
                       "use 'raw' (sketched Gram) or 'norm_corrected' (sketched cosines, exact norms)")
        if self.transient_windows is not None and (
            not isinstance(self.transient_windows, int) or self.transient_windows < 0
        ):
            raise _bad("transient_windows", self.transient_windows, "is not a non-negative integer",
                       "use None (= window) or 0 to keep every window in the baseline")
        if self.baseline not in ("robust", "leading"):
            raise _bad("baseline", self.baseline, "is unknown", "use 'robust' or 'leading'")
        if self.baseline_windows is not None and (
            not isinstance(self.baseline_windows, int) or self.baseline_windows < 3
        ):
            raise _bad("baseline_windows", self.baseline_windows, "is too small to estimate a spread",
                       "use None (= window) or an integer >= 3")
        if self.rel_scope not in ("network", "layer"):
            raise _bad("rel_scope", self.rel_scope, "is unknown", "use 'network' or 'layer'")
        if not self.collapse_threshold > 1.0:
            raise _bad("collapse_threshold", self.collapse_threshold, "is not above 1 (σ_2/σ_3 >= 1 always)",
                       "use 1.20 (the published value)")

    @property
    def dim(self) -> int | None:
        """Resolved sketch dimension: None in exact mode (d = P), else sketch_dim or 10·W."""
        if self.exact:
            return None
        return self.sketch_dim if self.sketch_dim is not None else DEFAULT_DIM_PER_WINDOW[self.sketch_kind] * self.window

    @property
    def projection_torch_dtype(self) -> torch.dtype:
        return PROJECTION_DTYPES[self.projection_dtype]

    @property
    def transient(self) -> int:
        return self.window if self.transient_windows is None else self.transient_windows

    @property
    def n_baseline(self) -> int:
        return self.window if self.baseline_windows is None else self.baseline_windows

    def to_dict(self) -> dict:
        """JSON-able provenance (dtype as its string name)."""
        d = asdict(self)
        d["compute_dtype"] = str(self.compute_dtype).removeprefix("torch.")
        d["resolved_sketch_dim"] = self.dim
        return d


@dataclass(frozen=True)
class OnsetSettings:
    """Spectral onset per head (model config section `onsets`): the first window where `metric` (a
    z-score column of the fingerprints) exceeds `margin`, for `consecutive` windows in a row."""

    metrics: tuple[str, ...] = ("update_norm_z", "ratio_12_z")
    margin: float = 3.0
    consecutive: int = 1

    def __post_init__(self) -> None:
        if not self.metrics or not all(isinstance(m, str) for m in self.metrics):
            raise _bad("metrics", self.metrics, "is not a non-empty list of metric names",
                       "use e.g. [update_norm_z, ratio_12_z] (z-score columns of fingerprints.parquet)")
        if not self.margin > 0:
            raise _bad("margin", self.margin, "is not positive", "use a z-score margin such as 3.0")
        if not isinstance(self.consecutive, int) or self.consecutive < 1:
            raise _bad("consecutive", self.consecutive, "is not a positive integer", "use 1 (default) or more")
