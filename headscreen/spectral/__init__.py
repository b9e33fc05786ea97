"""Rolling update Grams, edge statistics, JL sketches, trajectory PCA: pure tensors in, numbers out.

No knowledge of models or files: the same code serves 1B-scale checkpoint screens and toy-model
grokking trajectories.
"""

from .config import SpectralConfig
from .fingerprint import (
    Fingerprint,
    compute_fingerprint,
    fingerprint,
    metric_names,
    onsets,
    rank_heads,
)
from .gram import (
    PHASE_NAMES,
    EdgePhases,
    GramStats,
    WindowStats,
    adiabatic,
    check_series_length,
    edge_phases,
    gram_stats,
    rolling_grams,
    rolling_window_stats,
    update_gram,
    window_stats,
)
from .sketch import CountSketch, ExactProjector, GaussianSketch, Projector, make_projector
from .sketcher import HeadSketcher, SketchStep
from .trajectory import Backbone, PC1Rotation, backbone, pc1_rotation

__all__ = [
    "PHASE_NAMES", "Backbone", "CountSketch", "EdgePhases", "ExactProjector", "Fingerprint", "GaussianSketch",
    "GramStats", "HeadSketcher", "PC1Rotation", "Projector", "SketchStep", "SpectralConfig",
    "WindowStats", "adiabatic", "backbone", "check_series_length", "compute_fingerprint",
    "edge_phases", "fingerprint", "gram_stats", "make_projector", "metric_names", "onsets",
    "pc1_rotation", "rank_heads", "rolling_grams", "rolling_window_stats", "update_gram",
    "window_stats",
]
