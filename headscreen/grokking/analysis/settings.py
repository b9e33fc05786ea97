"""`AnalysisSettings`: every knob of a grok run's analysis (headscreen.grokking.analysis.analyse), in a leaf module so
that the run-lifecycle code (headscreen.grokking.training.lifecycle) can compare a grok.json's settings with the
defaults without importing the analysis. Defaults and their sources: docs/methods.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from headscreen.grokking.analysis.detect import GROK_THRESHOLD, MEMORISATION_THRESHOLD
from headscreen.grokking.analysis.edge import GapRule
from headscreen.grokking.analysis.fourier import KEY_FACTOR
from headscreen.spectral import SpectralConfig

ONSET_RULES = ("ratio", "z")


@dataclass(frozen=True)
class AnalysisSettings:
    """Every knob of `analyse_run` (defaults: docs/methods.md)."""

    grok_threshold: float = GROK_THRESHOLD
    memorisation_threshold: float = MEMORISATION_THRESHOLD
    onset_rule: str = "ratio"  # which rule gives grok.json's defect_onset_step; both are reported
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    gap: GapRule = field(default_factory=GapRule)
    transient: str | int = "memorisation"  # windows skipped: 'memorisation' or a fixed count
    key_factor: float = KEY_FACTOR
    pca_exact_max: int = 20_000_000  # exact trunk PCA up to T·P elements, the trunk sketches above
    progress_measures: bool = True  # restricted/excluded loss (1-layer model, single add/sub task; forwards)
    window_analyses: bool = True  # edge-direction modes and centroid coupling at the trunk r23 peak window

    def __post_init__(self) -> None:
        if not 0 < self.grok_threshold <= 1 or not 0 < self.memorisation_threshold <= 1:
            raise ValueError(f"grok_threshold={self.grok_threshold} and memorisation_threshold="
                             f"{self.memorisation_threshold} must lie in (0, 1]; defaults 0.95 and 0.99")
        if self.onset_rule not in ONSET_RULES:
            raise ValueError(f"onset_rule={self.onset_rule!r} is unknown; use one of {ONSET_RULES}")
        if not (self.transient == "memorisation" or (isinstance(self.transient, int) and self.transient >= 0)):
            raise ValueError(f"transient={self.transient!r} must be 'memorisation' or a window count >= 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["spectral"] = self.spectral.to_dict()
        return d
