"""Modular-arithmetic tasks a ∘ b mod p: the full p × p table, split into train and test by a seed.

Input format: every example is the token sequence [a, b, '='] with a, b in 0..p-1 and the '='
token id p, so the input vocabulary has p + 1 ids and the output has p classes. A multi-task
dataset shares the inputs and carries one label per task: labels are [N, n_tasks] (one column for a
single task).

Operations (definitions in docs/methods.md, "Grokking: toy tasks and models"):
    add  (a + b) mod p        sub  (a − b) mod p        mul  (a · b) mod p        sq  (a² + b²) mod p
    x2_xy_y2  (a² + ab + b²) mod p                      x3_xy  (a³ + ab) mod p
Splits: `torch_permutation` (default: a seeded torch permutation, rows sorted) or `python_shuffle` (the
published study's: sampling.python_shuffle_split; `mul` then leaves out the pairs with a or b = 0).
`mul` needs a field (p prime), as any division would; the others only need p >= 3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from headscreen.config.core import ConfigError

OPERATIONS: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "sq": lambda a, b, p: (a * a + b * b) % p,
    # the published study's two operations that do not grok (a² + ab + b², a³ + ab)
    "x2_xy_y2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "x3_xy": lambda a, b, p: (a * a * a + a * b) % p,
}
SPLITS = ("torch_permutation", "python_shuffle")
NEEDS_FIELD = frozenset({"mul"})  # tasks whose table is only a group/field table when p is prime


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def check_task(tasks: Sequence[str], p: int, train_frac: float) -> None:
    """Raise ConfigError naming the bad value and the fix."""
    if not tasks:
        raise ConfigError("tasks: give at least one of " + ", ".join(OPERATIONS))
    for t in tasks:
        if t not in OPERATIONS:
            raise ConfigError(f"task {t!r} is unknown; use one of {', '.join(OPERATIONS)}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks {list(tasks)} lists a task twice; give each task once")
    if isinstance(p, bool) or not isinstance(p, int) or p < 3:
        raise ConfigError(f"p = {p!r} is invalid: the modulus must be an integer >= 3 (e.g. 59, 97, 113)")
    field_tasks = [t for t in tasks if t in NEEDS_FIELD]
    if field_tasks and not is_prime(p):
        raise ConfigError(f"p = {p} is not prime, but task(s) {field_tasks} need a field (Z/pZ with p prime); "
                          "use a prime such as 59, 97 or 113")
    if not 0.0 < float(train_frac) < 1.0:
        raise ConfigError(f"train_frac = {train_frac!r} is invalid: use a fraction strictly between 0 and 1 (e.g. 0.3)")


class SplitTable:
    """The train/test views of a table of examples (`inputs`, `labels`) split by `train_idx`/`test_idx`;
    the base of every task's data (modular, Dyck, SCAN)."""

    inputs: Tensor
    labels: Tensor
    train_idx: Tensor
    test_idx: Tensor

    def train(self) -> tuple[Tensor, Tensor]:
        return self.inputs[self.train_idx], self.labels[self.train_idx]

    def test(self) -> tuple[Tensor, Tensor]:
        return self.inputs[self.test_idx], self.labels[self.test_idx]


@dataclass(frozen=True)
class ModularData(SplitTable):
    """The full table of one or more tasks and its train/test split (index tensors into it)."""

    tasks: tuple[str, ...]
    p: int
    inputs: Int[Tensor, "N 3"]  # [a, b, p]; N = p²
    labels: Int[Tensor, "N tasks"]
    train_idx: Int[Tensor, " n_train"]
    test_idx: Int[Tensor, " n_test"]

    @property
    def eq_token(self) -> int:
        return self.p

    @property
    def vocab_size(self) -> int:
        return self.p + 1



def make_dataset(tasks: str | Sequence[str], p: int, train_frac: float, seed: int,
                 split: str = "torch_permutation") -> ModularData:
    """The p² examples of `tasks`, split by a permutation drawn from `seed` (the same seed always
    gives the same split); round(train_frac · p²) examples go to the training set (at least 1 each).
    split="python_shuffle": the published split instead (module docstring)."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    check_task(tasks, p, train_frac)
    if split not in SPLITS:
        raise ConfigError(f"split = {split!r} is unknown; use one of {', '.join(SPLITS)}")
    a = torch.arange(p).repeat_interleave(p)  # [p²]: a varies slowest
    b = torch.arange(p).repeat(p)
    inputs = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = torch.stack([OPERATIONS[t](a, b, p) for t in tasks], dim=1)
    if split == "python_shuffle":
        from headscreen.grokking.tasks.sampling import python_shuffle_split

        train_idx, test_idx = python_shuffle_split(p, train_frac, seed, restrict_nonzero="mul" in tasks)
        return ModularData(tasks, p, inputs, labels, train_idx, test_idx)
    n = p * p
    n_train = min(max(round(train_frac * n), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ModularData(tasks, p, inputs, labels, perm[:n_train].sort().values, perm[n_train:].sort().values)
