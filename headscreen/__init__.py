"""headscreen: screen every attention head of a checkpoint series.

The public Python API is in headscreen.api and re-exported here (imported on first use, so that
`import headscreen` stays cheap):

    import headscreen as hs
    run = hs.screen("results/demo/series", "results/nb/run")
"""

from __future__ import annotations

from headscreen._version import __version__ as __version__  # a leaf: readers import it from there

__all__ = ["open_series", "train", "screen", "validate", "tables", "circuits", "write_report", "view", "demo",
           "grok", "grok_sweep", "grok_summary", "grok_compare"]


def __getattr__(name: str):
    if name in __all__:
        from headscreen import api

        return getattr(api, name)
    raise AttributeError(f"module 'headscreen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
