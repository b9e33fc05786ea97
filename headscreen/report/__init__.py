"""Circuit reports rendered from run directories (no model is loaded, nothing is analysed): HTML, Markdown, JSON.

    from pipelines.report import report        # runs the analyses a run lacks first, then renders
    paths = report([Path("results/pythia-160m/run1")])   # {"html": ..., "md": ..., "json": ...}
    paths = report([run_a, run_b], out=out_dir, step=None, probe=None)  # + a cross-model table

`build_report(run_dirs, out_dir, step, probe=, inputs=)` renders only: what the runs' files lack comes in
`inputs` (report/inputs.py, prepared by pipelines/report_prep.py); a section that needs a result nobody
prepared raises MissingReportInput.

Errors (all name the bad value and the fix): NotARunDirectoryError (FileNotFoundError) for a path without
manifest.json; RunFileError / SchemaError (ValueError) for a stored file that cannot be read;
StepNotFoundError / ProbeNotFoundError (ValueError) for a step or probe the run does not have;
MissingReportInput (ValueError) for a computed result that was not prepared.
"""

from headscreen.report.build import assemble, build_report, default_out_dir
from headscreen.report.inputs import MissingReportInput, ReportInputs
from headscreen.report.load import NotARunDirectoryError, RunFileError, RunResults, load_run
from headscreen.report.runinfo import ProbeNotFoundError, StepNotFoundError
from headscreen.report.schema import SchemaError

__all__ = [
    "MissingReportInput",
    "NotARunDirectoryError",
    "ProbeNotFoundError",
    "ReportInputs",
    "RunFileError",
    "RunResults",
    "SchemaError",
    "StepNotFoundError",
    "assemble",
    "build_report",
    "default_out_dir",
    "load_run",
]
