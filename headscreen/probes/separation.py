"""How well one score per head separates a set of heads from the rest, against a within-layer label null.

Used by the pre-identification analysis (preid.py); pure numpy, no tables.

* `average_ranks`: ranks 1..N (N = heads) with ties averaged; NaN scores share the lowest ranks.
* `auc_from_ranks`: the ROC AUC of the labelled heads against the rest (Mann-Whitney U / (k·(N−k))),
  for many label vectors at once.
* `precision_at_k`: the expected share of labelled heads among the top k, ties split at random.
* `layer_permutations`: label vectors with the same number of labelled heads in every layer as the
  observed one; a head never moves to another layer (the circuit's layers are no free hint). All
  of them when there are at most `n_perm`, else `n_perm` seeded draws.
* `permutation_p`: the one-sided p-value of the observed AUC under those label vectors.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """[..., N] -> [..., N] float ranks (1 = lowest); ties get their mean rank; NaN ranks lowest (tied)."""
    x = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=float))
    n = x.shape[-1]
    less = (x[..., None, :] < x[..., :, None]).sum(-1)  # how many heads score strictly below each head
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)  # including itself
    return less + (equal + 1) / 2.0 if n else np.zeros_like(x)


def auc_from_ranks(ranks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of labelled heads against the rest. ranks [S, N] (one row per step), labels [P, N] bool
    (one row per label vector, each with the same count k, 0 < k < N) -> [P, S]."""
    labels = np.atleast_2d(labels).astype(float)
    k = labels[0].sum()
    n = labels.shape[1]
    if not 0 < k < n:
        raise ValueError(f"the AUC needs 0 < labelled heads < heads; got {int(k)} of {n}")
    return (labels @ np.atleast_2d(ranks).T - k * (k + 1) / 2.0) / (k * (n - k))


def precision_at_k(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[S, N] scores, [N] bool labels (k = labels.sum()) -> [S] expected precision@k (ties split at random)."""
    x = np.where(np.isnan(scores), -np.inf, np.atleast_2d(np.asarray(scores, dtype=float)))
    k = int(labels.sum())
    greater = (x[:, None, :] > x[:, :, None]).sum(-1)  # heads strictly above each head
    equal = (x[:, None, :] == x[:, :, None]).sum(-1)
    p_in_top = np.clip(k - greater, 0, equal) / equal
    return (p_in_top * labels[None, :]).sum(-1) / k


def n_labelings(layers: np.ndarray, labels: np.ndarray) -> int:
    """How many label vectors keep the per-layer counts of `labels`: the product of C(n_l, k_l)."""
    return math.prod(math.comb(int((layers == layer).sum()), int(labels[layers == layer].sum()))
                     for layer in np.unique(layers))


def layer_permutations(layers: np.ndarray, labels: np.ndarray, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """([P, N] bool label vectors, exact). Every vector has labels[layers == l].sum() labelled heads in
    each layer l, all within that layer. exact: all n_labelings(...) vectors (then P = that number, the
    observed one among them) when it is <= n_perm; else n_perm draws from numpy's PCG64(seed)."""
    layers, labels = np.asarray(layers), np.asarray(labels, dtype=bool)
    groups = [(np.flatnonzero(layers == layer), int(labels[layers == layer].sum())) for layer in np.unique(layers)]
    total = n_labelings(layers, labels)
    if total <= n_perm:
        per_layer = [list(itertools.combinations(idx, k)) for idx, k in groups]
        out = np.zeros((total, labels.size), dtype=bool)
        for row, choice in enumerate(itertools.product(*per_layer)):
            for picked in choice:
                out[row, list(picked)] = True
        return out, True
    rng = np.random.default_rng(seed)
    out = np.zeros((n_perm, labels.size), dtype=bool)
    for idx, k in groups:
        if k == 0:
            continue
        keys = rng.random((n_perm, idx.size))
        picked = idx[np.argsort(keys, axis=1)[:, :k]]  # k distinct heads of this layer per draw
        np.put_along_axis(out, picked, True, axis=1)
    return out, False


def permutation_p(observed: np.ndarray, null: np.ndarray, exact: bool) -> np.ndarray:
    """One-sided p of observed [S] under null [P, S]: exact -> #{null >= obs} / P (the observed labelling is
    one of the P); drawn -> (1 + #{null >= obs}) / (1 + P). NaN where the observed value is NaN."""
    tol = 1e-12  # AUCs are sums of ranks: equal values must count as ties
    hits = (null >= observed[None, :] - tol).sum(0)
    p = hits / null.shape[0] if exact else (1 + hits) / (1 + null.shape[0])
    return np.where(np.isnan(observed), np.nan, p)
