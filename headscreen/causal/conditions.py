"""Ablation conditions of a circuit (docs/methods.md#causal-validation): which heads each condition ablates.

A circuit is a list of (layer, head). The conditions are

- `circuit`: the circuit's heads;
- `matched_random` (draws 0..n-1): in each of the circuit's layers, as many heads as the circuit
  has there, drawn uniformly from that layer's non-circuit heads (never overlapping the circuit);
  distinct sets, seeded (default 123), so a seed fixes every draw; all of them when fewer exist;
- `upper_bound`: every head of the circuit's layers;
- `head_L{l}H{h}`: each circuit head alone.

The clean baseline ablates nothing and is evaluated without any intervention.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from headscreen.heads import Head
from headscreen.heads import head_label as _label


@dataclass(frozen=True)
class Condition:
    name: str  # "circuit", "matched_random", "upper_bound", "head_L1H3", ...
    heads: tuple[Head, ...]
    draw: int = 0


def normalize_circuit(circuit: Iterable[Sequence[int]], n_layers: int, n_heads: int) -> tuple[Head, ...]:
    """Sorted, de-duplicated (layer, head) tuples; raises if a head is outside the model."""
    heads = sorted({(int(h[0]), int(h[1])) for h in circuit})
    if not heads:
        raise ValueError("circuit is empty; pass at least one (layer, head)")
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"circuit head ({layer}, {head}) is outside the model ({n_layers} layers x {n_heads} heads); "
                f"heads are 0-indexed (layer, head)"
            )
    return tuple(heads)


def single_head_condition_name(head: Head) -> str:
    """The name of the condition that ablates one head alone: "head_L<layer>H<head>"."""
    return f"head_{_label(head)}"


def upper_bound(circuit: Sequence[Head], n_heads: int) -> tuple[Head, ...]:
    layers = sorted({layer for layer, _ in circuit})
    return tuple((layer, h) for layer in layers for h in range(n_heads))


def matched_set_count(circuit: Sequence[Head], n_heads: int) -> int:
    """How many distinct matched-random head sets exist: the product over layers of C(free, count)."""
    counts = Counter(layer for layer, _ in circuit)
    in_circuit = set(circuit)
    total = 1
    for layer, count in counts.items():
        total *= math.comb(sum((layer, h) not in in_circuit for h in range(n_heads)), count)
    return total


def matched_random_draws(circuit: Sequence[Head], n_heads: int, n_draws: int, seed: int = 123) -> list[tuple[Head, ...]]:
    """`n_draws` distinct head sets, each with the circuit's per-layer counts and no circuit head.

    Distinct, so that the null's p-value means what it says: when fewer than `n_draws` matched sets
    exist (`matched_set_count`), every one of them is returned once, in a seeded order, and the null
    is exact (its p-value cannot go below 1 / (1 + that count)). Otherwise sets are drawn without
    replacement. Deterministic given (circuit, n_heads, n_draws, seed): a torch CPU generator seeded
    with `seed` draws, per draw and per layer in increasing order, a random permutation of that
    layer's free heads and keeps the first `count`; a set drawn before is drawn again.
    """
    if n_draws < 1:
        raise ValueError(f"n_draws={n_draws} must be >= 1")
    counts = Counter(layer for layer, _ in circuit)
    in_circuit = set(circuit)
    free: dict[int, list[int]] = {}
    for layer, count in sorted(counts.items()):
        free[layer] = [h for h in range(n_heads) if (layer, h) not in in_circuit]
        if len(free[layer]) < count:
            raise ValueError(
                f"layer {layer} has {count} circuit heads but only {len(free[layer])} other heads: no matched-random "
                f"control exists; drop some layer-{layer} heads from the circuit or skip the null test"
            )
    gen = torch.Generator().manual_seed(int(seed))
    n_sets = matched_set_count(circuit, n_heads)
    if n_sets <= n_draws:  # the whole null, each set once, in a seeded order
        per_layer = [[tuple((layer, h) for h in hs) for hs in itertools.combinations(free[layer], count)]
                     for layer, count in sorted(counts.items())]
        every = [tuple(h for part in combo for h in part) for combo in itertools.product(*per_layer)]
        return [every[int(i)] for i in torch.randperm(len(every), generator=gen)]
    draws: list[tuple[Head, ...]] = []
    seen: set[tuple[Head, ...]] = set()
    while len(draws) < n_draws:
        heads: list[Head] = []
        for layer, count in sorted(counts.items()):
            pick = torch.randperm(len(free[layer]), generator=gen)[:count]
            heads.extend((layer, free[layer][int(i)]) for i in sorted(pick.tolist()))
        key = tuple(heads)
        if key not in seen:
            seen.add(key)
            draws.append(key)
    return draws


def standard_conditions(circuit: Sequence[Head], n_heads: int) -> list[Condition]:
    """circuit, upper_bound and each head alone (the matched-random draws come separately)."""
    conds = [Condition("circuit", tuple(circuit)), Condition("upper_bound", upper_bound(circuit, n_heads))]
    conds.extend(Condition(single_head_condition_name(h), (h,)) for h in circuit)
    return conds


def null_conditions(circuit: Sequence[Head], n_heads: int, n_draws: int, seed: int = 123) -> list[Condition]:
    return [
        Condition("matched_random", heads, draw=i)
        for i, heads in enumerate(matched_random_draws(circuit, n_heads, n_draws, seed))
    ]
