"""`ValidationSettings`: the `validation:` section of a model config, validated when the config loads."""

from __future__ import annotations

from dataclasses import dataclass

from headscreen.causal.ablation import ABLATIONS, AblationConfig
from headscreen.config.core import from_mapping


@dataclass(frozen=True)
class ValidationSettings:
    """The `validation:` section of a model config (the CLI flags of `validate` override it).

    ablations: kinds to run, in order; the first is the primary one the report plots.
    n_null:    matched-random head sets in each null (distinct; all of them when fewer exist).
    seed:      seed of the matched-random draws and of the retrieval corruption.
    """

    ablations: tuple[str, ...] = ABLATIONS
    n_null: int = 100
    seed: int = 123

    def __post_init__(self):
        if not self.ablations:
            raise ValueError(f"ablations is empty: list one or more of {list(ABLATIONS)}")
        for kind in self.ablations:  # the causal layer's own check of each kind, n_null and seed
            AblationConfig(kind=kind, n_null=self.n_null, seed=self.seed)

    @classmethod
    def of_manifest(cls, manifest: dict) -> ValidationSettings:
        """The section as recorded in a run manifest's model config (a fallback: `validate` reads the
        model config file itself when it can)."""
        section = ((manifest.get("config") or {}).get("model_config") or {}).get("validation")
        return from_mapping(cls, section, "validation")
