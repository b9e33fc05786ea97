"""Checkpoint series: what checkpoints exist and how to read them (lazily, attention only, or booted)."""

from headscreen.series.adapters import SUPPORTED, AttentionGeometry, detect_architecture, read_head_weights
from headscreen.series.base import Checkpoint, Series
from headscreen.series.boot import LOADING_MODE, boot_bridge, load_tokenizer
from headscreen.series.checks import check_checkpoint, read_hf_config
from headscreen.series.errors import (
    CheckpointNotFound,
    CorruptCheckpoint,
    HubUnavailable,
    NonFiniteOutputs,
    NonFiniteWeights,
    NoWeightsError,
    PickleRefused,
    SeriesError,
    ShapeMismatch,
    UnsupportedArchitecture,
)
from headscreen.series.hub import HubSeries
from headscreen.series.local import LocalSeries
from headscreen.series.naming import parse_step, parse_tokens
from headscreen.series.schedules import Revision, revisions, schedule_steps
from headscreen.series.tensors import TensorSource
from headscreen.series.weights import HeadWeights, LayeredHeadWeights

__all__ = [
    "SUPPORTED", "LOADING_MODE", "AttentionGeometry", "Checkpoint", "CheckpointNotFound", "CorruptCheckpoint",
    "HeadWeights", "HubSeries", "LayeredHeadWeights", "HubUnavailable", "LocalSeries", "NoWeightsError", "NonFiniteOutputs",
    "NonFiniteWeights", "PickleRefused", "Revision", "Series", "SeriesError", "ShapeMismatch", "TensorSource",
    "UnsupportedArchitecture", "boot_bridge", "check_checkpoint", "detect_architecture", "load_tokenizer",
    "parse_step", "parse_tokens", "read_head_weights", "read_hf_config", "revisions", "schedule_steps",
]
