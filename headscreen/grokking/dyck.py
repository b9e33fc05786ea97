"""Dyck-1 depth prediction: balanced bracket strings, the nesting depth after each token as the label.

Tokens: '(' = 0, ')' = 1. Every sequence has exactly `n_ctx` tokens (n_ctx even) and is balanced (the
depth never goes below 0 and ends at 0). Label at position i = the depth after token i, so the classes
are 0..max_depth and `n_classes = max_depth + 1` (13 for the default context 24, max depth 12).

Sampling (seeded, docs/methods.md "Grokking II: Dyck-1 and SCAN"): at each position open with
probability 1/2 where both moves keep the string completable within n_ctx and max_depth, otherwise
take the only legal move. Sequences are drawn until `n_train + n_test` distinct strings are found;
the first n_train go to training, so train and test never share a string.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from headscreen.config import ConfigError
from headscreen.grokking.tasks import SplitTable

OPEN, CLOSE = 0, 1
VOCAB = ("(", ")")


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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class DyckData(SplitTable):
    spec: DyckSpec
    inputs: Int[Tensor, "N T"]  # bracket ids
    labels: Int[Tensor, "N T"]  # depth after each token
    train_idx: Int[Tensor, " n_train"]
    test_idx: Int[Tensor, " n_test"]


def sample_sequence(rng: np.random.Generator, n_ctx: int, max_depth: int) -> list[int]:
    out, depth = [], 0
    for i in range(n_ctx):
        remaining = n_ctx - i - 1  # tokens after this one
        can_open = depth + 1 <= min(max_depth, remaining)
        can_close = depth > 0
        move = OPEN if can_open and (not can_close or rng.random() < 0.5) else CLOSE
        depth += 1 if move == OPEN else -1
        out.append(move)
    return out


def make_dyck(spec: DyckSpec, seed: int) -> DyckData:
    """`spec.n_train + spec.n_test` distinct balanced strings drawn from `seed`, with their depth labels."""
    rng = np.random.default_rng([seed, 0xD7C])
    need = spec.n_train + spec.n_test
    seen: dict[tuple[int, ...], None] = {}
    tries = 0
    while len(seen) < need:
        seen.setdefault(tuple(sample_sequence(rng, spec.n_ctx, spec.max_depth)), None)
        tries += 1
        if tries > 50 * need:
            raise ConfigError(f"dyck: only {len(seen)} distinct strings of length {spec.n_ctx} (max depth "
                              f"{spec.max_depth}) found for n_train + n_test = {need}; lower n_test or lengthen n_ctx")
    inputs = torch.tensor(list(seen), dtype=torch.long)
    labels = torch.cumsum(1 - 2 * inputs, dim=1)
    idx = torch.arange(need)
    return DyckData(spec, inputs, labels, idx[: spec.n_train], idx[spec.n_train:])
