"""The published study's data split and batch stream, for the `published` preset (docs/methods.md,
"Reproducing the published grokking results").

* `python_shuffle_split`: the pairs (a, b) in a-major order (for `mul`, a, b ≠ 0), shuffled by Python's
  `random.Random(seed)`; the first int(frac · N) are the training set, in that shuffled order. Returned
  as row indices into the project's a-major table (row = a·p + b).
* `ReplacementStream`: one legacy NumPy RandomState(seed) stream shared by the training batches and the
  defect batches, every batch drawn with replacement (`randint(0, n_train, size=batch)`), in the order
  the training loop consumes them: at a measured step, the defect's 2K batches (A₁, B₁, A₂, B₂, ...),
  then the step's training batch. Its draws depend on what was drawn before, so it is replayed from
  the start on resume (`advance_to`): cheap (one integer draw per example).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor


def python_shuffle_split(p: int, frac: float, seed: int, restrict_nonzero: bool = False) -> tuple[Tensor, Tensor]:
    """(train rows, test rows) of the a-major p × p table; train rows in the shuffled order."""
    lo = 1 if restrict_nonzero else 0
    pairs = [(a, b) for a in range(lo, p) for b in range(lo, p)]
    random.Random(seed).shuffle(pairs)
    n = int(frac * len(pairs))
    rows = torch.tensor([a * p + b for a, b in pairs], dtype=torch.long)
    return rows[:n], rows[n:]


class ReplacementStream:
    """Batches with replacement from one RandomState(seed), consumed strictly in training-loop order."""

    def __init__(self, seed: int, n_train: int, batch_size: int, *, defect_every: int, defect_pairs: int,
                 defect_batch_size: int):
        self.rs = np.random.RandomState(seed)
        self.n, self.bs = n_train, batch_size
        self.defect_every, self.k, self.dbs = defect_every, defect_pairs, defect_batch_size
        self.step, self.defect_taken = 0, False  # the next step whose draws are due

    def _draw(self, size: int) -> Tensor:
        return torch.from_numpy(self.rs.randint(0, self.n, size=size))

    def _measured(self, step: int) -> bool:
        return bool(self.defect_every) and step % self.defect_every == 0

    def _check(self, step: int) -> None:
        if step != self.step:
            raise RuntimeError(f"the replacement stream is at step {self.step}, asked for step {step}: its draws "
                               "must be taken in training order (call advance_to on resume)")

    def defect_indices(self, step: int) -> list[tuple[Tensor, Tensor]]:
        """The K (A, B) index pairs of the defect at `step` (due before that step's training batch)."""
        self._check(step)
        if self.defect_taken or not self._measured(step):
            raise RuntimeError(f"no defect draws are due at step {step}")
        self.defect_taken = True
        return [(self._draw(self.dbs), self._draw(self.dbs)) for _ in range(self.k)]

    def train_indices(self, step: int) -> Tensor:
        """Rows of the training set for update step+1."""
        self._check(step)
        if self._measured(step) and not self.defect_taken:
            self.defect_indices(step)  # a step whose defect was measured before (resume) still draws it
        self.step, self.defect_taken = step + 1, False
        return self._draw(self.bs)

    def advance_to(self, step: int) -> None:
        """Replay the draws of every step before `step` (a run resuming at `step`)."""
        while self.step < step:
            self.train_indices(self.step)
