"""Circuit reports rendered from a run directory alone (no model is loaded): HTML, Markdown and JSON.

    from headscreen.report import build_report
    paths = build_report([Path("results/pythia-160m/run1")])   # {"html": ..., "md": ..., "json": ...}
    paths = build_report([run_a, run_b], out_dir, step=None, probe=None)  # + a cross-model table

Errors (all name the bad value and the fix): NotARunDirectoryError (FileNotFoundError) for a path without
manifest.json; RunFileError / SchemaError (ValueError) for a stored file that cannot be read;
StepNotFoundError / ProbeNotFoundError (ValueError) for a step or probe the run does not have.
"""

from headscreen.report.build import assemble, build_report, default_out_dir
from headscreen.report.load import NotARunDirectoryError, RunFileError, RunResults, load_run
from headscreen.report.runinfo import ProbeNotFoundError, StepNotFoundError
from headscreen.report.schema import SchemaError

__all__ = [
    "NotARunDirectoryError",
    "ProbeNotFoundError",
    "RunFileError",
    "RunResults",
    "SchemaError",
    "StepNotFoundError",
    "assemble",
    "build_report",
    "default_out_dir",
    "load_run",
]
