"""Circuit reports rendered from a run directory alone (no model is loaded): HTML, Markdown and JSON.

    from headscreen.report import build_report
    paths = build_report([Path("results/pythia-160m/run1")])   # {"html": ..., "md": ..., "json": ...}
"""

from headscreen.report.build import assemble, build_report, default_out_dir
from headscreen.report.load import NotARunDirectoryError, RunFileError, RunResults, load_run
from headscreen.report.runinfo import StepNotFoundError
from headscreen.report.schema import SchemaError

__all__ = [
    "NotARunDirectoryError",
    "RunFileError",
    "RunResults",
    "SchemaError",
    "StepNotFoundError",
    "assemble",
    "build_report",
    "default_out_dir",
    "load_run",
]
