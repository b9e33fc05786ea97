"""Errors raised while listing and reading checkpoint series. Each names the checkpoint and the fix."""

from __future__ import annotations


class SeriesError(Exception):
    """Base class: something about a checkpoint series is wrong; the message says what and how to fix it."""


class CheckpointNotFound(SeriesError):
    pass


class NoWeightsError(SeriesError):
    pass


class UnsupportedArchitecture(SeriesError):
    pass


class ShapeMismatch(SeriesError):
    pass


class NonFiniteWeights(SeriesError):
    pass


class NonFiniteOutputs(SeriesError):
    """The forward pass of a checkpoint gave NaN/Inf losses or attention (weights outside attention)."""


class CorruptCheckpoint(SeriesError):
    pass


class PickleRefused(SeriesError):
    pass


class HubUnavailable(SeriesError):
    pass


class DownloadInterrupted(HubUnavailable):
    """A hub download stopped mid-file (the connection dropped); a rerun resumes it."""
