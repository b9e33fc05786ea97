"""`GrokSummary`: grok.json as a typed record, built and written by both of its producers — the analysis of a
trained run (headscreen.grokking.analysis.analyse) and a Li₂ run (headscreen.grokking.li2.run). Each field
is documented in docs/run-format.md ("grok.json"). A leaf module: it imports nothing of the package.

grok.json's keys keep the order each producer has always written (MODULAR_KEYS, LI2_KEYS), so a run's
grok.json is byte for byte what it was before this record existed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

MODULAR_KEYS = ("grok_step", "memorisation_step", "final_train_acc", "final_test_acc", "defect_onset_step",
                "defect_onset_rule", "defect_onsets", "lead_time", "gap_open_step", "key_frequencies", "fourier_gini",
                "commutator_peak_step", "edge", "pca", "window_analyses", "tasks", "n_snapshots", "intervention",
                "settings", "notes", "trajectory")
LI2_KEYS = ("family", "grok_step", "memorisation_step", "defect_onset_step", "gap_open_step", "lead_time",
            "final_train_acc", "final_test_acc", "key_frequencies", "fourier_gini", "tasks", "lockin", "li2",
            "n_snapshots", "settings", "notes")


@dataclass
class GrokSummary:
    """grok.json of one run. Steps are training steps (Li₂: epochs); None = the event never happened or
    the measure does not apply to this family (docs/run-format.md, "grok.json")."""

    grok_step: int | None
    memorisation_step: int | None
    final_train_acc: float
    final_test_acc: float
    key_frequencies: list[int]
    fourier_gini: float | None
    tasks: dict[str, dict]
    settings: dict
    notes: list[str]
    n_snapshots: int | None = None
    defect_onset_step: int | None = None
    gap_open_step: int | None = None
    lead_time: int | None = None
    family: str = "modular"  # "modular" (the trained transformers, sequence tasks included) or "li2"
    # written for family "modular" only
    defect_onset_rule: str | None = None
    defect_onsets: dict | None = None
    commutator_peak_step: int | None = None
    edge: dict | None = None
    pca: dict | None = None
    window_analyses: dict | None = None
    intervention: dict | None = None
    trajectory: dict | None = None
    # written for family "li2" only
    lockin: dict | None = None
    li2: dict | None = None

    def __post_init__(self) -> None:
        if self.family not in ("modular", "li2"):
            raise ValueError(f"GrokSummary.family={self.family!r} is unknown; use 'modular' or 'li2'")

    def to_dict(self) -> dict:
        """grok.json's dict: this family's keys in their fixed order."""
        return {k: getattr(self, k) for k in (LI2_KEYS if self.family == "li2" else MODULAR_KEYS)}

    @classmethod
    def from_dict(cls, data: dict) -> GrokSummary:
        """The record of a grok.json dict (a Li₂ one names its family); a key outside the schema is an error."""
        family = data.get("family", "modular")
        known = set(LI2_KEYS if family == "li2" else MODULAR_KEYS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"grok.json holds keys outside its schema ({', '.join(unknown)}); "
                             "docs/run-format.md lists the keys of each family")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def read_summary(run: str | Path) -> GrokSummary:
    """The GrokSummary of a run's grok.json as it is on disk (whether it is current: `load_analysis`)."""
    path = Path(run) / "grok.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; analyse the run (`headscreen grok` or "
                                "headscreen.grokking.analyse_run) first")
    return GrokSummary.from_dict(json.loads(path.read_text()))
