"""headscreen's version (a leaf: modules that record it import it from here, not from the package root,
whose public API imports the pipelines)."""

__version__ = "0.1.0"
