"""In-context copying on the repeated-tokens probe, with or without canonical induction heads.

In feasibility runs on small synthetic models the second-copy loss fell while no head had an
offset-based induction score: the screen must report the loss gap and flag copying
that no head over the induction threshold explains.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def copy_losses(
    token_losses: Float[Tensor, "b pos_minus_1"], span: int, first_start: int
) -> tuple[float, float]:
    """Mean loss on the first copy (r_2..r_n) and on the second copy (r_2..r_n again).

    `token_losses[:, j]` is the loss of predicting the token at j+1. r_1 of each copy is left out:
    nothing in context predicts it.
    """
    s1, s2 = first_start, first_start + span
    if token_losses.shape[1] < s2 + span - 1:
        raise ValueError(
            f"token_losses covers {token_losses.shape[1] + 1} positions, fewer than the probe's {s2 + span}"
        )
    first = token_losses[:, s1 : s1 + span - 1]  # predicts r_2..r_n of the first copy
    second = token_losses[:, s2 : s2 + span - 1]  # predicts r_2..r_n of the second copy
    return float(first.mean()), float(second.mean())


def copying_row(
    loss_first: float,
    loss_second: float,
    max_induction_selectivity: float,
    *,
    gap_min: float,
    induction_min: float,
) -> dict:
    """One `copying.parquet` row (without `step`): the flag is a large gap that no induction head explains."""
    gap = loss_first - loss_second
    return {
        "loss_first": loss_first,
        "loss_second": loss_second,
        "loss_gap": gap,
        "max_induction_selectivity": max_induction_selectivity,
        "noncanonical_copying": bool(gap >= gap_min and not max_induction_selectivity >= induction_min),
    }
