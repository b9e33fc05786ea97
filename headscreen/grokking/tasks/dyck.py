"""Dyck-1 depth prediction: balanced bracket strings, the nesting depth after each token as the label.

Tokens: '(' = 0, ')' = 1. Every sequence has exactly `n_ctx` tokens (n_ctx even) and is balanced (the
depth never goes below 0 and ends at 0). Label at position i = the depth after token i, so the classes
are 0..max_depth and `n_classes = max_depth + 1` (13 for the default context 24, max depth 12).

Two generators (`DyckSpec.generator`; docs/methods.md "Grokking II: Dyck-1 and SCAN"):

- `distinct` (ours, the default): every string has exactly n_ctx brackets; at each position open with
  probability `p_open` where both moves keep the string completable within n_ctx and max_depth, otherwise
  take the only legal move. Strings are drawn until `n_train + n_test` distinct ones are found; the first
  n_train go to training, so train and test never share a string.
- `published` (the early-warning study's definition): a string has 2m brackets with m uniform on
  1..max_depth (so it may be shorter than n_ctx: the rest is PAD, id 2, label IGNORE); while fewer than m
  brackets have been opened and the depth is positive, open with probability `p_open` (0.55 there),
  otherwise take the only legal move. `n_train + n_test` strings are drawn independently (duplicates
  allowed, train and test may share strings) from Python's random.Random(data_seed), shuffled by a
  torch.randperm seeded with data_seed, and the first n_train go to training: the study's own strings.

`data_seed` (None: the run's seed) fixes the dataset independently of the model seed, as the study does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from headscreen.config.core import ConfigError
from headscreen.grokking.tasks.modular import SplitTable

OPEN, CLOSE, PAD = 0, 1, 2
VOCAB = ("(", ")")
IGNORE = -100  # the label of a PAD position: no loss, no accuracy
GENERATORS = ("distinct", "published")
ACCURACIES = ("sequence", "token")


def depth_labels(text: str) -> list[int]:
    """The depth after each bracket of `text` (e.g. '(())' -> [1, 2, 1, 0]); ValueError if unbalanced."""
    depth, out = 0, []
    for i, ch in enumerate(text):
        if ch not in VOCAB:
            raise ValueError(f"character {ch!r} at position {i} of {text!r} is not a bracket; use only '(' and ')'")
        depth += 1 if ch == "(" else -1
        if depth < 0:
            raise ValueError(f"{text!r} closes more brackets than it opened at position {i}")
        out.append(depth)
    if depth != 0:
        raise ValueError(f"{text!r} leaves {depth} bracket(s) open; a Dyck-1 string must be balanced")
    return out


@dataclass(frozen=True)
class DyckSpec:
    n_ctx: int = 24
    max_depth: int = 12
    n_train: int = 50
    n_test: int = 5000
    generator: str = "distinct"
    p_open: float = 0.5
    data_seed: int | None = None  # None: the run's seed
    accuracy: str = "sequence"  # exact match per string, or "token": the share of depths right

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ConfigError(f"dyck.generator = {self.generator!r} is unknown; use one of {', '.join(GENERATORS)}")
        if self.accuracy not in ACCURACIES:
            raise ConfigError(f"dyck.accuracy = {self.accuracy!r} is unknown; use one of {', '.join(ACCURACIES)}")
        if isinstance(self.p_open, bool) or not isinstance(self.p_open, int | float) or not 0 < self.p_open < 1:
            raise ConfigError(f"dyck.p_open = {self.p_open!r} is invalid: use a probability in (0, 1), e.g. 0.5")
        if self.data_seed is not None and (isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int)
                                           or self.data_seed < 0):
            raise ConfigError(f"dyck.data_seed = {self.data_seed!r} is invalid: use an integer >= 0 or null")
        if isinstance(self.n_ctx, bool) or not isinstance(self.n_ctx, int) or self.n_ctx < 2 or self.n_ctx % 2:
            raise ConfigError(f"dyck.n_ctx = {self.n_ctx!r} is invalid: use an even context length >= 2 (e.g. 24)")
        if not isinstance(self.max_depth, int) or self.max_depth < 1:
            raise ConfigError(f"dyck.max_depth = {self.max_depth!r} is invalid: use a positive integer")
        if self.max_depth > self.n_ctx // 2:
            raise ConfigError(f"dyck.max_depth = {self.max_depth} cannot fit the context n_ctx = {self.n_ctx}: "
                              f"a balanced string of {self.n_ctx} brackets nests at most {self.n_ctx // 2} deep; "
                              f"use max_depth <= {self.n_ctx // 2} or a longer context")
        for name in ("n_train", "n_test"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"dyck.{name} = {v!r} is invalid: use a positive integer")

    @property
    def n_classes(self) -> int:
        return self.max_depth + 1

    @property
    def vocab(self) -> int:
        """Input ids: '(' and ')', plus PAD for the published generator's shorter strings."""
        return 3 if self.generator == "published" else 2


@dataclass(frozen=True)
class DyckData(SplitTable):
    spec: DyckSpec
    inputs: Int[Tensor, "N T"]  # bracket ids
    labels: Int[Tensor, "N T"]  # depth after each token (IGNORE at PAD positions)
    train_idx: Int[Tensor, " n_train"]
    test_idx: Int[Tensor, " n_test"]


def sample_sequence(rng: np.random.Generator, n_ctx: int, max_depth: int, p_open: float = 0.5) -> list[int]:
    out, depth = [], 0
    for i in range(n_ctx):
        remaining = n_ctx - i - 1  # tokens after this one
        can_open = depth + 1 <= min(max_depth, remaining)
        can_close = depth > 0
        move = OPEN if can_open and (not can_close or rng.random() < p_open) else CLOSE
        depth += 1 if move == OPEN else -1
        out.append(move)
    return out


def sample_published(rng: random.Random, max_pairs: int, p_open: float) -> list[int]:
    """One string of the published generator: m = rng.randint(1, max_pairs) pairs; at each bracket, when
    both moves are legal (fewer than m opened and depth > 0) open iff rng.random() < p_open, else take the
    legal move. Python's `random.Random` stream, so a data seed gives the study's own strings."""
    m = rng.randint(1, max_pairs)
    out, opened, depth = [], 0, 0
    for _ in range(2 * m):
        can_open, can_close = opened < m, depth > 0
        move = OPEN if can_open and (not can_close or rng.random() < p_open) else CLOSE
        opened += move == OPEN
        depth += 1 if move == OPEN else -1
        out.append(move)
    return out


def _published(spec: DyckSpec, seed: int) -> tuple[Tensor, Tensor]:
    """n_train + n_test strings from random.Random(seed), PAD-filled to n_ctx, then shuffled by
    torch.randperm under a generator seeded with `seed` (the study's order: its first n_train are training)."""
    rng = random.Random(seed)
    n = spec.n_train + spec.n_test
    inputs = torch.full((n, spec.n_ctx), PAD, dtype=torch.long)
    for i in range(n):
        seq = sample_published(rng, spec.max_depth, spec.p_open)
        inputs[i, : len(seq)] = torch.tensor(seq)
    steps = torch.where(inputs == PAD, 0, 1 - 2 * inputs)
    labels = torch.cumsum(steps, dim=1).masked_fill(inputs == PAD, IGNORE)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return inputs[perm], labels[perm]


def make_dyck(spec: DyckSpec, seed: int) -> DyckData:
    """The dataset of `spec` drawn from `spec.data_seed` (None: `seed`), with its depth labels."""
    data_seed = seed if spec.data_seed is None else spec.data_seed
    need = spec.n_train + spec.n_test
    if spec.generator == "published":
        # DyckSpec keeps max_depth <= n_ctx / 2, so the longest string (2 * max_depth brackets) fits
        inputs, labels = _published(spec, data_seed)
        idx = torch.arange(need)
        return DyckData(spec, inputs, labels, idx[: spec.n_train], idx[spec.n_train:])
    rng = np.random.default_rng([data_seed, 0xD7C])
    seen: dict[tuple[int, ...], None] = {}
    tries = 0
    while len(seen) < need:
        seen.setdefault(tuple(sample_sequence(rng, spec.n_ctx, spec.max_depth, spec.p_open)), None)
        tries += 1
        if tries > 50 * need:
            raise ConfigError(f"dyck: only {len(seen)} distinct strings of length {spec.n_ctx} (max depth "
                              f"{spec.max_depth}) found for n_train + n_test = {need}; lower n_test or lengthen n_ctx")
    inputs = torch.tensor(list(seen), dtype=torch.long)
    labels = torch.cumsum(1 - 2 * inputs, dim=1)
    idx = torch.arange(need)
    return DyckData(spec, inputs, labels, idx[: spec.n_train], idx[spec.n_train:])
