"""Probe batches, attention selectivity, head scores, participation ratio, classification.

Public entry points (see each module for details):

- prompts: `retrieval_probe`, `corrupt_retrieval`, `repeated_tokens_probe`, `text_probe`, `check_fits`
- forward: `run_probe` (one batched, filtered forward per probe batch)
- screen: `screen_checkpoint` (per-checkpoint rows) and `summarise_series` (classes + circuits.json)
- classify: `ScreenThresholds`, `classify`, `circuits`
- preid: `PreidSettings`, `preid_from_tables` (does a spectral metric separate the circuit before it emerges?)
"""

from headscreen.probes.batch import ProbeBatch
from headscreen.probes.classify import ScreenThresholds, circuits, classify
from headscreen.probes.preid import PreidSettings, preid_from_tables
from headscreen.probes.prompts import (
    check_fits,
    corrupt_retrieval,
    repeated_tokens_probe,
    retrieval_probe,
    text_probe,
)
from headscreen.probes.screen import screen_checkpoint, summarise_series

__all__ = [
    "PreidSettings",
    "ProbeBatch",
    "ScreenThresholds",
    "preid_from_tables",
    "check_fits",
    "circuits",
    "classify",
    "corrupt_retrieval",
    "repeated_tokens_probe",
    "retrieval_probe",
    "screen_checkpoint",
    "summarise_series",
    "text_probe",
]
