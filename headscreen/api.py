"""The public Python API: every capability of the CLI as one function, for notebooks and scripts.

    import headscreen as hs

    series = hs.open_series("results/demo/series")       # a local series, or a config name ("pythia-160m")
    run = hs.screen(series, "results/nb/run", config="synthetic-tiny")
    hs.validate(run)                                     # the screened induction circuit vs matched-random nulls
    tables = hs.tables(run)                              # {"classes": DataFrame, "selectivity": ..., ...}
    hs.write_report(run)                                 # report/report.html, .md, .json
    hs.view(run)                                         # in Jupyter: the run's summary and attention viewer

    summary = hs.grok("modadd", "results/nb/modadd", steps=1500)   # a toy grokking run, trained and analysed

Each function is a thin door onto the pipeline the CLI runs (pipelines/), so a notebook and the
command line give the same files; the run layout is in docs/run-format.md. Heavy modules (torch,
TransformerLens) are imported on first use, not by `import headscreen`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from headscreen.config import ModelConfig
    from headscreen.report.notebook import RunView
    from headscreen.series.base import Series

__all__ = ["open_series", "train", "screen", "validate", "tables", "circuits", "write_report", "view", "demo",
           "grok", "grok_sweep", "grok_summary", "grok_compare"]


def _config(config: str | Path | ModelConfig | None) -> ModelConfig | None:
    """A model config from its name (model_configs/<name>.yaml), a YAML path, or as given."""
    if config is None or not isinstance(config, (str, Path)):
        return config
    from headscreen.config import load_config

    return load_config(config)


def open_series(spec: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Series:
    """The checkpoint series at `spec`: a folder of checkpoints (a trained series, a hub snapshot) or a
    model config name / YAML path whose `source:` says where the checkpoints are (hub, local, synthetic).
    Nothing is downloaded until a checkpoint is read."""
    from pipelines.common import resolve_series

    series, _ = resolve_series(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                               command="headscreen.open_series")
    return series


def train(config: str | Path | ModelConfig, out: str | Path, *, threads: int | None = None, progress: bool = True,
          overwrite: bool = False, seed: int | None = None) -> Path:
    """Train the `train:` recipe of `config` (e.g. "synthetic-tiny") into the series folder `out`; resumes a
    partial series of the same recipe. Returns `out`."""
    from pipelines.train import train as _train

    return _train(config, out, threads=threads, progress=progress, overwrite=overwrite, seed=seed)


def screen(series: Series | str | Path, out: str | Path, *, config: str | Path | ModelConfig | None = None,
           force: bool = False, skip_bad: bool = False, progress: bool = True, device: str | None = "cpu",
           dtype: str | None = None) -> Path:
    """Screen every head of every checkpoint of `series` (a Series, or a spec for `open_series`) into the
    run directory `out`: spectral fingerprints, selectivity classes, onsets, circuits. `config` gives the
    probe/threshold/spectral settings (default: the series' own config, else the defaults); `dtype`
    (auto|float32|bfloat16|float16) the boot precision. Resumable; returns `out`."""
    import dataclasses

    from pipelines.screen import ScreenSettings
    from pipelines.screen import screen as _screen

    cfg = _config(config)
    if isinstance(series, (str, Path)):
        from pipelines.common import resolve_series

        series, own = resolve_series(series, command="headscreen.screen")
        cfg = cfg or own
    settings = ScreenSettings.from_config(cfg)
    if dtype is not None:
        settings = dataclasses.replace(settings, boot=dataclasses.replace(settings.boot, dtype=dtype))
    return _screen(series, out, config=cfg, settings=settings, force=force, skip_bad=skip_bad, progress=progress,
                   device=device)


def validate(run: str | Path, *, checkpoint: int | None = None, circuit: list[tuple[int, int]] | None = None,
             ablations: tuple[str, ...] | None = None, n_null: int | None = None, seed: int | None = None,
             progress: bool = True, device: str | None = "cpu", dtype: str | None = None) -> Path:
    """Validate a screened run's induction circuit (or `circuit`, as [(layer, head), ...]) at its last screened
    checkpoint (or `checkpoint`): zero/mean/resample ablation against matched-random nulls, and patching.
    Settings left None come from the run's `validation:` config. Returns the run directory."""
    from pipelines.validate import validate as _validate

    heads = [list(map(int, h)) for h in circuit] if circuit is not None else None
    return _validate(run, checkpoint=checkpoint, circuit=heads, ablations=ablations, n_null=n_null, seed=seed,
                     progress=progress, device=device, dtype=dtype)


def tables(run: str | Path) -> dict[str, pd.DataFrame]:
    """Every table of a screened run as a pandas DataFrame, by name: fingerprints, participation,
    selectivity, head_scores, classes, copying, onsets, and after `validate` validation and patching
    (columns in docs/run-format.md). Tables the run does not hold are left out."""
    from headscreen.report.load import load_run

    results = load_run(run)
    names = ("fingerprints", "participation", "selectivity", "head_scores", "classes", "copying", "onsets",
             "validation_long", "patching", "preid")
    out = {name: getattr(results, name) for name in names if getattr(results, name) is not None}
    if "validation_long" in out:
        out["validation"] = out.pop("validation_long")
    return out


def circuits(run: str | Path, step: int | None = None, probe: str | None = None) -> dict[str, list[tuple[int, int]]]:
    """{"induction", "previous", "bos": [(layer, head), ...]} of a screened run at `step` (default: the last)."""
    return view(run, probe=probe).circuits(step)


def write_report(*runs: str | Path, out: str | Path | None = None, step: int | None = None,
                 probe: str | None = None) -> dict[str, Path]:
    """Render the HTML, Markdown and JSON report of one run (screen or grok), or a comparison of several
    (`headscreen report`); returns {"html", "md", "json"} paths. The report reads the runs' files; it trains
    and analyses nothing. (Not named `report`: that is the package headscreen.report.)"""
    from pipelines.report import report as _report

    if not runs:
        raise ValueError("write_report() needs at least one run directory, e.g. hs.write_report('results/demo/run')")
    return _report(list(runs), out=out, step=step, probe=probe)


def view(run: str | Path, probe: str | None = None) -> RunView:
    """A screened run for a notebook: Jupyter shows its summary; `.attention("L1H3")` opens the attention
    viewer inline, `.pattern("L1H3")` gives a stored pattern as a tensor [row, query, key]."""
    from headscreen.report.notebook import load_run_view

    return load_run_view(run, probe)


def demo(out: str | Path = "results/demo", *, config: str = "synthetic-tiny", threads: int | None = None,
         progress: bool = True) -> dict[str, Path]:
    """The embedded demo end to end: train `config`, screen the series, validate, report; returns the
    report paths. Every stage resumes."""
    from pipelines.demo import demo as _demo

    return _demo(out, config=config, threads=threads, progress=progress)


def grok(task: str | Path, out: str | Path, *, progress: bool = True, force: bool = False, analyse: bool = True,
         device: str | None = "cpu", **overrides: Any) -> dict:
    """Train a toy grokking run (task: modadd, modsub, modmul, modsq, multitask, nanda, dyck, scan, or a
    grok config name/path) into `out` with its trajectory captured, then analyse it (spectral edge,
    commutator defect, trajectory PCA, Fourier modes, ...). `overrides` are GrokConfig fields
    (steps=..., lr=..., weight_decay=..., seed=...). Resumable; returns the run's summary (grok.json)."""
    from pipelines.grok import grok as _grok

    return _grok(task, out, overrides=overrides or None, progress=progress, force=force, analyse=analyse,
                 device=device)


def grok_sweep(config: str | Path, out: str | Path, *, workers: int | None = None, progress: bool = True,
               analyse: bool = True, **overrides: Any) -> pd.DataFrame:
    """The `sweep:` grid of a grok config (e.g. "grok-modadd"), `workers` runs at a time in their own
    processes; finished runs are kept, unfinished ones resume. Returns the sweep table (one row per run;
    sweep.parquet). A failed run raises after the others finished, naming it."""
    from pipelines.grok import sweep as _sweep

    return _sweep(config, out, overrides=overrides or None, workers=workers, progress=progress, analyse=analyse)


def grok_summary(run: str | Path) -> dict:
    """The summary (grok.json) of a grok run; a stale one (its trajectory changed) is recomputed first, an
    unfinished run's is computed in memory; see docs/run-format.md."""
    from headscreen.grokking.analysis.analyse import load_analysis

    doc, _, _ = load_analysis(run)
    return doc


def grok_compare(target: str | Path, reference: str | Path | None = None) -> dict:
    """A grok run or sweep on a published preset beside the published records: onset, grokking step and lead
    per run against the published ones, and the lead-time law. `reference` defaults to the shipped records."""
    from pipelines.grok import compare

    return compare(target, reference)
