"""Causal verification of head circuits: ablations with matched-random nulls, activation and path patching.

Modules, one job each:
- `hooks`: interventions on hook activations that prove they fired (`InterventionDidNotFire`)
- `metrics`: cross-entropy, top-1/5, target logit and logit difference at the query position
- `conditions`: circuit / matched-random / upper-bound / single-head head sets
- `ablation`: zero / mean / resample ablation of many head sets per forward
- `stats`: null tests (effect ratio, empirical p-value)
- `patching`: denoising activation patching; `path_patching`: sender -> receiver K path patching
- `validate`: `validate_checkpoint` and `patch_checkpoint`, the rows of validation/patching.parquet
"""

from headscreen.causal.hooks import Intervention, InterventionDidNotFire, run_with_interventions
from headscreen.causal.validate import patch_checkpoint, validate_checkpoint

__all__ = [
    "InterventionDidNotFire",
    "Intervention",
    "patch_checkpoint",
    "run_with_interventions",
    "validate_checkpoint",
]
