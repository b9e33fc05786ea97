"""`OptimizerSettings`: the Adam(W) settings that the three trainers' configs share (TrainConfig of the
synthetic series, GrokConfig, Li2Config), with their rules written once. Each config keeps its fields flat
(its YAML section and its to_dict are unchanged) and checks them here, in its own words (`of`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from headscreen.config.core import ConfigError


@dataclass(frozen=True)
class OptimizerSettings:
    """lr: learning rate in (0, 1); betas: Adam's two betas, each in [0, 1); weight_decay >= 0 (decoupled
    AdamW for train and grok, coupled L2 for Li2: the trainer decides); grad_clip: a max global gradient norm
    > 0, or None for no clipping (Li2 never clips)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        def fail(name: str, fix: str) -> None:
            raise ConfigError(f"field {name!r} = {getattr(self, name)!r} is invalid: {fix}")

        if not 0.0 < self.lr < 1.0:
            fail("lr", "use a learning rate in (0, 1), e.g. 0.001")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            fail("betas", "use two Adam betas in [0, 1), e.g. [0.9, 0.99]")
        if self.weight_decay < 0:
            fail("weight_decay", "use a value >= 0 (0 switches weight decay off)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            fail("grad_clip", "use a positive max norm, or null for no clipping")

    @classmethod
    def of(cls, config, section: str) -> OptimizerSettings:
        """The optimizer fields of `config` (any object with lr, betas, weight_decay and maybe grad_clip),
        checked; an error names the section's field ("grok config field 'lr' = 2.0 is invalid: ...")."""
        try:
            return cls(lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
                       grad_clip=getattr(config, "grad_clip", None))
        except ConfigError as e:
            raise ConfigError(f"{section} config {e}") from None


LR_DECAYS = ("none", "linear", "cosine")


def scheduled_lr(lr: float, step: int, *, steps: int, warmup: int = 0, decay: str = "none", decay_start: int = 0,
                 final: float = 0.0) -> float:
    """The learning rate of update step + 1 (`step` counts from 0) of a `steps`-update run: `lr` times a linear
    warm-up over the first `warmup` updates; with `decay` "linear" or "cosine", from update `decay_start` on
    it falls from `lr` towards `final`, which it would reach at update `steps` (warm-up, stable, decay)."""
    rate = lr
    if decay != "none" and step >= decay_start:
        done = (step - decay_start) / (steps - decay_start)  # in [0, 1)
        left = 1.0 - done if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
        rate = final + (lr - final) * left
    return rate * min(1.0, (step + 1) / warmup) if warmup else rate
