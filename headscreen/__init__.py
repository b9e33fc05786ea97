"""headscreen: screen every attention head of a checkpoint series."""

__version__ = "0.1.0"
