"""The lead-time law ℓ = t_grok − t_onset ∝ t_grok^α, with the two checks that say whether it is evidence
of early warning (docs/methods.md, "The lead-time law and its nulls").

* The fixed-onset null: the same fit with every onset replaced by the median onset of its group (by
  default one group: all runs). A detector that fires at a fixed step knows nothing of grokking, yet
  ℓ = t_grok − c is close to a power law of t_grok with α ≥ 1 whenever c is a sizeable part of t_grok.
  So an α is informative only beside its null.
* A threshold-free statistic: Spearman's rank correlation across runs of the onset step with the
  grokking step, with a permutation p-value (exact for up to 8 runs, else a seeded Monte Carlo). With
  `groups`, runs are permuted within their group only and the statistic is the run-weighted mean of the
  within-group correlations, so a setting that moves both steps (e.g. the learning rate) cannot make
  the correlation by itself.

The verdict sentence is built from the rank statistic (does the onset track grokking?) and the gap
between α and its null (does the exponent say more than a fixed detector would?).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from headscreen.grokking.analysis.detect import MIN_FIT_POINTS, PowerLaw, fit_power_law

EXACT_MAX_N = 8  # exact permutation p-value up to this many runs (8! = 40320 orderings)
MC_PERMUTATIONS = 20_000
MC_SEED = 0
P_SIGNIFICANT = 0.05


def _float(xs: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if x is None else float(x) for x in xs], dtype=np.float64)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their positions)."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(x.size, dtype=np.float64)
    r[order] = np.arange(1, x.size + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class RankTest:
    """Spearman ρ of onset with grokking step (pooled, or the mean within groups), its two-sided
    permutation p-value, the runs used and how the p-value was taken ('exact' or 'monte-carlo')."""

    rho: float
    p_value: float
    n: int
    method: str
    stratified: bool

    def to_dict(self) -> dict:
        return {"rho": self.rho, "p_value": self.p_value, "n": self.n, "method": self.method,
                "stratified": self.stratified}


def _stat(ranked: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Run-weighted mean of the within-group Pearson correlations of ranks (groups of ≥ 2 varying runs)."""
    num = den = 0.0
    for ra, rb in ranked:
        r = _pearson(ra, rb)
        if math.isfinite(r):
            num, den = num + r * ra.size, den + ra.size
    return num / den if den else float("nan")


def rank_correlation(onset: Sequence[float | None], t_grok: Sequence[float | None],
                     groups: Sequence[Hashable] | None = None) -> RankTest:
    """Spearman ρ(onset, t_grok) over runs where both are finite; see the module docstring."""
    o, t = _float(onset), _float(t_grok)
    if o.shape != t.shape:
        raise ValueError(f"onset and t_grok must have equal length; got {o.size} and {t.size}")
    g = np.zeros(o.size, dtype=np.int64) if groups is None else _group_ids(groups, o.size)
    ok = np.isfinite(o) & np.isfinite(t)
    o, t, g = o[ok], t[ok], g[ok]
    parts = [(o[g == k], t[g == k]) for k in np.unique(g)]
    parts = [(a, b) for a, b in parts if a.size >= 2 and np.ptp(a) > 0 and np.ptp(b) > 0]
    n = int(sum(a.size for a, _ in parts))
    if n < MIN_FIT_POINTS:
        raise ValueError(f"the rank correlation needs at least {MIN_FIT_POINTS} runs with an onset and a grokking "
                         f"step that vary within their group; got {n}: add runs")
    ranked = [(_ranks(a), _ranks(b)) for a, b in parts]
    rho = _stat(ranked)
    n_perm = math.prod(math.factorial(a.size) for a, _ in ranked)
    if n_perm <= math.factorial(EXACT_MAX_N):
        perms = itertools.product(*(itertools.permutations(range(a.size)) for a, _ in ranked))
        null = np.array([_stat([(ra, rb[list(p)]) for (ra, rb), p in zip(ranked, combo, strict=True)])
                         for combo in perms])
        p = float((np.abs(null) >= abs(rho) - 1e-12).mean())
        method = "exact"
    else:
        rng = np.random.default_rng(MC_SEED)
        hits = sum(abs(_stat([(ra, rng.permutation(rb)) for ra, rb in ranked])) >= abs(rho) - 1e-12
                   for _ in range(MC_PERMUTATIONS))
        p, method = (hits + 1) / (MC_PERMUTATIONS + 1), "monte-carlo"
    return RankTest(rho=rho, p_value=p, n=n, method=method, stratified=groups is not None)


def _group_ids(groups: Sequence[Hashable], n: int) -> np.ndarray:
    groups = list(groups)
    if len(groups) != n:
        raise ValueError(f"groups must give one label per run; got {len(groups)} labels for {n} runs")
    index: dict = {}
    return np.array([index.setdefault(x, len(index)) for x in groups], dtype=np.int64)


def fixed_onset_null(t_grok: Sequence[float | None], onset: Sequence[float | None],
                     groups: Sequence[Hashable] | None = None) -> PowerLaw:
    """The lead-time fit with every onset replaced by the median onset (over runs with an onset) of its
    group; one group of all runs when `groups` is None. Runs without an onset keep none."""
    t, o = _float(t_grok), _float(onset)
    if t.shape != o.shape:
        raise ValueError(f"t_grok and onset must have equal length; got {t.size} and {o.size}")
    g = np.zeros(o.size, dtype=np.int64) if groups is None else _group_ids(groups, o.size)
    fixed = np.full(o.size, np.nan)
    for k in np.unique(g):
        members = g == k
        have = members & np.isfinite(o)
        if have.any():
            fixed[have] = np.median(o[have])
    return fit_power_law(t, t - fixed)


@dataclass(frozen=True)
class LeadLaw:
    """The fit, its fixed-onset null, the rank statistic and the verdict in words."""

    fit: PowerLaw
    null: PowerLaw
    rank: RankTest
    verdict: str

    def to_dict(self) -> dict:
        return {"fit": self.fit.to_dict(), "null": self.null.to_dict(), "rank": self.rank.to_dict(),
                "verdict": self.verdict}


def verdict(fit: PowerLaw, null: PowerLaw, rank: RankTest) -> str:
    """One sentence: α beside the null, and whether the onset tracks the grokking time."""
    law = (f"lead-time law α = {fit.alpha:.2f} (R² {fit.r2:.2f}, n {fit.n}); a detector firing at the median "
           f"onset gives α = {null.alpha:.2f} (R² {null.r2:.2f})")
    within = " within groups" if rank.stratified else ""
    track = f"rank correlation{within} of onset with grokking step ρ = {rank.rho:.2f} (p = {rank.p_value:.3g}, n {rank.n})"
    if rank.p_value < P_SIGNIFICANT and rank.rho > 0:
        return f"{law}; {track}: the defect's onset tracks the grokking time, beyond a fixed detector."
    return (f"{law}; {track}: the onset does not track the grokking time, so the exponent is what a fixed "
            "detector would also give and is no evidence of early warning.")


def lead_law(t_grok: Sequence[float | None], onset: Sequence[float | None],
             groups: Sequence[Hashable] | None = None, *, null_groups: Sequence[Hashable] | None = None) -> LeadLaw:
    """The raw fit of t_grok − onset on t_grok, its fixed-onset null (median onset within `null_groups`,
    default one pooled group) and the rank statistic (within `groups`, default pooled)."""
    t, o = _float(t_grok), _float(onset)
    fit = fit_power_law(t, t - o)
    null = fixed_onset_null(t, o, null_groups)
    rank = rank_correlation(o, t, groups)
    return LeadLaw(fit=fit, null=null, rank=rank, verdict=verdict(fit, null, rank))
