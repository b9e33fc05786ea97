"""Train a toy grokking task with its trajectory captured, then analyse it; or run a grid of such runs.

  headscreen grok modadd --out results/grok/modadd            (also modsub, modmul, modsq, multitask, nanda)
  headscreen grok modadd --wd 0 --out results/grok/modadd-wd0  (the no-grokking control)
  headscreen grok sweep grok-modadd --out results/grok/sweep   (the YAML's sweep: grid, runs in parallel)
  headscreen grok dyck --out results/grok/dyck                (Dyck-1 depth; also scan, --split addjump)
  headscreen grok scan --intervention suppress --strength 0.5 --out results/grok/scan-s0.5
  headscreen grok sweep grok-dyck-suppress --out results/grok/dyck-dose   (dose-response over s)

Settings come from model_configs/grok-<task>.yaml (`grok:` and `sweep:` sections); flags override them.
A run directory resumes where it stopped; the run layout is in docs/run-format.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from headscreen.compute.executors import TaskFailed
from headscreen.config import ConfigError, ModelConfig, load_config
from headscreen.rundir.atomic import StoreError
from pipelines import grok_li2
from pipelines.common import add_device_argument, add_executor_arguments, executor_from_args

if TYPE_CHECKING:
    from headscreen.grokking.config import GrokConfig

TASK_CONFIGS = {"modadd": "grok-modadd", "modsub": "grok-modsub", "modmul": "grok-modmul", "modsq": "grok-modsq",
                "multitask": "grok-multitask", "nanda": "grok-nanda", "dyck": "grok-dyck", "scan": "grok-scan"}
# CLI flag -> GrokConfig field
FLAGS = {"p": "p", "wd": "weight_decay", "lr": "lr", "seed": "seed", "steps": "steps", "train_frac": "train_frac",
         "batch_size": "batch_size", "snapshot_every": "snapshot_every", "defect_every": "defect_every",
         "eval_every": "eval_every", "intervention": "intervention.kind", "strength": "intervention.strength",
         "intervention_start": "intervention.start", "split": "task_options.split"}


def load_grok_config(config: str | Path | ModelConfig, overrides: dict | None = None):
    """(ModelConfig, GrokConfig, SweepConfig or None) from a task name, config name or YAML path."""
    from headscreen.grokking.config import GrokConfig, SweepConfig

    mc = config if isinstance(config, ModelConfig) else load_config(TASK_CONFIGS.get(str(config), config))
    if "grok" not in mc.sections:
        raise ConfigError(f"config {mc.name!r} has no grok: section; use one of {', '.join(TASK_CONFIGS.values())}")
    section = dict(mc.section("grok"))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:  # a nested field: intervention.kind, task_options.split
            outer, inner = key.split(".", 1)
            section[outer] = {**(section.get(outer) or {}), inner: value}
        else:
            section[key] = value
    if section.get("batch_size") == 0:  # --batch-size 0: full batch
        section["batch_size"] = None
    cfg = GrokConfig.from_dict(section, f"{mc.name}: grok")
    sweep = SweepConfig.from_dict(mc.section("sweep"), f"{mc.name}: sweep") if "sweep" in mc.sections else None
    return mc, cfg, sweep


def analyse_or_fail(out: Path, *, settings=None, progress: bool = True) -> dict:
    """`analyse_run(out, settings=settings)`; a failure inside the analysis (an import, a bug) is an `AnalysisFailed` that names
    the run and what failed (never a thinner grok.json); the user faults of the CLI (a locked, damaged or
    unfinished run, a bad setting) pass through unchanged."""
    from headscreen.grokking.training.lifecycle import AnalysisFailed

    try:
        from headscreen.grokking.analysis.analyse import analyse_run

        return analyse_run(out, settings=settings, progress=progress)
    except (StoreError, ConfigError, ValueError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - named, with the cause chained
        raise AnalysisFailed(f"the analysis of grok run {out} failed ({type(e).__name__}: {e}); its training is kept "
                             "(rerun the same command once the cause is fixed)") from e


def analysis_settings(mc: ModelConfig):
    """The config's `analysis:` section as AnalysisSettings, or None (the defaults) where it has none."""
    return mc.settings("analysis") if "analysis" in mc.sections else None


def run_and_analyse(cfg, out: str | Path, *, progress: bool = True, force: bool = False, analyse: bool = True,
                    device: str | None = "cpu", settings=None) -> dict:
    """Train (or resume) one run on `device` (headscreen/compute/device.py), then write grok.json; returns grok.json's
    dict (or the final curve row with `analyse` False). grok.json is reused only while it was
    computed from the trajectory now on disk (headscreen.grokking.training.lifecycle) with `settings`
    (AnalysisSettings; None: the defaults), else recomputed."""
    from headscreen.grokking.training.lifecycle import current_analysis, remove_analysis
    from headscreen.grokking.training.train import train_run

    out = Path(out)
    train_run(cfg, out, progress=progress, force=force, device=device)
    if cfg.model.arch == "encoder" and cfg.defect_every and len(cfg.tasks) == 1:  # the published preset
        from headscreen.grokking.published.compare import write_comparison

        write_comparison(out)  # comparison.json: the run beside the published records (the report renders it)
    if analyse:
        current = current_analysis(out, settings)  # grok.json of exactly this trajectory, or None
        return current if current is not None else analyse_or_fail(out, settings=settings, progress=progress)
    if current_analysis(out, any_settings=True) is None:  # --no-analysis: no analysis of an older
        remove_analysis(out)  # trajectory outlives this training; a current one is kept
    import pandas as pd

    last = pd.read_parquet(out / "curves.parquet").groupby("task").last()
    return {"final_train_acc": float(last.train_acc.min()), "final_test_acc": float(last.test_acc.min())}


def grok(task: str | Path | ModelConfig, out: str | Path, *, overrides: dict | None = None, progress: bool = True,
         force: bool = False, analyse: bool = True, device: str | None = "cpu") -> dict:
    """`headscreen grok <task>`: one run from the task's config with `overrides` (GrokConfig fields)."""
    mc, cfg, _ = load_grok_config(task, overrides)
    return run_and_analyse(cfg, out, progress=progress, force=force, analyse=analyse, device=device,
                           settings=analysis_settings(mc))


def _sweep_worker(cfg_dict: dict, run_dir: str, analyse: bool, device: str = "cpu", settings=None) -> dict:
    """One grid point (a task of any executor; its torch threads are set by the executor). It writes
    only its own run directory, with the resume and lock of a single `headscreen grok` run."""
    from headscreen.grokking.config import GrokConfig

    return run_and_analyse(GrokConfig.from_dict(cfg_dict), run_dir, progress=False, analyse=analyse, device=device,
                           settings=settings)


def run_many(configs: dict[str, GrokConfig], root: str | Path, *, workers: int = 2, progress: bool = True,
             analyse: bool = True, executor=None, device: str | None = "cpu",
             settings=None) -> tuple[dict[str, dict], dict[str, str]]:
    """Train (or resume) and analyse each config into root/<name>, one run per task on `executor`
    (headscreen.compute.executors; default: a process pool of `workers` processes, 1 torch thread each).
    Returns (results by name, errors by name); one failed run loses no other."""
    from tqdm.auto import tqdm

    from headscreen.compute.device import resolve_device
    from headscreen.compute.executors import make_executor

    device = resolve_device(device)  # once, here: a missing GPU fails before any worker starts
    root = Path(root)
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    names = list(configs)
    own = executor is None
    executor = executor or make_executor("process", workers=workers)
    try:
        tasks = [(configs[name].to_dict(), str(root / name), analyse, device, settings) for name in names]
        for i, out in tqdm(executor.run(_sweep_worker, tasks), total=len(tasks), disable=not progress,
                           desc=f"runs ({executor.kind})", unit="run"):
            if isinstance(out, TaskFailed):
                errors[names[i]] = out.describe()
            else:
                results[names[i]] = out
    finally:
        if own:
            executor.close()
    return results, errors


def _check_grid_overrides(name: str, grid_cfg, overrides: dict) -> None:
    """A flag may not set a field the sweep's grid varies: the grid would silently win."""
    axes = {"weight_decay": "--wd", "lr": "--lr", "seed": "--seed", "intervention.strength": "--strength"}
    for field, flag in axes.items():
        values = getattr(grid_cfg, field.replace(".", "_"))
        if overrides.get(field) is not None and values is not None:
            raise ConfigError(f"{flag} {overrides[field]} sets a field that the sweep of {name!r} varies "
                              f"({field.replace('.', '_')}: {list(values)}); edit the sweep: section instead, or "
                              f"drop {flag}")


def check_task_config(task: str, config: str | Path | ModelConfig) -> None:
    """`grok <task> --config X` trains X's tasks: refuse an X whose tasks are not <task>'s."""
    if task not in TASK_CONFIGS:
        return
    own = load_config(TASK_CONFIGS[task]).section("grok")
    other = (config if isinstance(config, ModelConfig) else load_config(config)).section("grok")

    def tasks(section: dict) -> list:
        return [section["task"]] if "task" in section else list(section.get("tasks") or ["add"])

    if task == "multitask" and len(tasks(other)) > 1:  # any set of tasks sharing a trunk
        return
    if tasks(own) != tasks(other):
        raise ConfigError(f"`grok {task} --config {config}`: that config trains {tasks(other)}, not {task}'s "
                          f"{tasks(own)}; use the subcommand of its task, or a config of {task}")


def sweep(config: str | Path | ModelConfig, out: str | Path, *, overrides: dict | None = None,
          workers: int | None = None, progress: bool = True, analyse: bool = True, executor=None,
          device: str | None = "cpu"):
    """`headscreen grok sweep`: every grid point of the config's sweep: section, `workers` at a time in
    separate processes; finished runs are kept, unfinished ones resume. Writes sweep.parquet/sweep.json."""
    import pandas as pd

    from headscreen.rundir.kind import require_kind
    from headscreen.rundir.provenance import provenance
    from headscreen.rundir.store import atomic_write, write_json

    mc, base, grid_cfg = load_grok_config(config, overrides)
    if grid_cfg is None:
        raise ConfigError(f"config {mc.name!r} has no sweep: section; add one with weight_decay/lr/seed lists")
    _check_grid_overrides(mc.name, grid_cfg, overrides or {})
    out = Path(out)
    require_kind(out, "grok-sweep", "`headscreen grok sweep`")
    grid = grid_cfg.grid(base)
    runs = out / "runs"
    write_json(out / "sweep.json", {"config": mc.name, "base": base.to_dict(), "grid": grid_cfg.to_dict(),
                                    "runs": [name for name, _ in grid], "provenance": provenance()})
    settings = analysis_settings(mc)
    results, errors = run_many({name: cfg for name, cfg in grid}, runs, workers=workers or grid_cfg.workers,
                               progress=progress, analyse=analyse, executor=executor, device=device, settings=settings)
    if analyse:
        from headscreen.grokking.analysis.summary import write_sweep_summary

        # + the lead-time power law; unfinished runs: empty rows
        table = write_sweep_summary(out, progress=False, settings=settings)
    else:  # the grid and each run's final accuracies, or its error
        rows = [{"run": name, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "seed": cfg.seed,
                 "error": errors.get(name), **{k: v for k, v in results.get(name, {}).items()
                                              if v is None or isinstance(v, int | float | str)}}
                for name, cfg in grid]
        table = pd.DataFrame(rows)
        atomic_write(out / "sweep.parquet", lambda p: table.to_parquet(p, index=False))
    if base.model.arch == "encoder" and base.defect_every:  # the published preset: the sweep beside the records
        from headscreen.grokking.published.compare import SWEEP_COMPARISON, sweep_comparison

        comp = sweep_comparison(out)
        atomic_write(out / SWEEP_COMPARISON, lambda p: p.write_text(json.dumps(comp, indent=1)))
    if errors:
        from headscreen.grokking.training.lifecycle import SweepRunsFailed

        raise SweepRunsFailed(f"{len(errors)} of {len(grid)} sweep runs failed (finished ones are kept and "
                              f"summarised in {out / 'sweep.parquet'}; rerun the same command to resume the others): "
                              + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    return table


# --- CLI -----------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return v


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--p", type=int, help="modulus (prime for modmul / multitask)")
    p.add_argument("--wd", type=float, help="AdamW weight decay (0: the no-grokking control)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="seed of init, split and batches")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--train-frac", type=float, help="share of the p x p table used for training, in (0, 1)")
    p.add_argument("--batch-size", type=_positive_int, help="minibatch size; 0 = full batch")
    p.add_argument("--snapshot-every", type=int, help="steps between trajectory snapshots")
    p.add_argument("--defect-every", type=_positive_int, help="steps between commutator-defect measurements; 0 = off")
    p.add_argument("--eval-every", type=int, help="steps between train/test evaluations")
    p.add_argument("--intervention", choices=("none", "suppress", "amplify"),
                   help="scale the gradient transverse to the top-k trajectory-PCA basis (docs/methods.md)")
    p.add_argument("--strength", type=float, help="intervention strength: s in [0, 1] (suppress) or a >= 0 (amplify)")
    p.add_argument("--intervention-start", type=int, help="step from which the intervention acts (basis built there)")
    p.add_argument("--split", choices=("simple", "addjump"), help="SCAN split")
    p.add_argument("--config", help="a YAML path or config name (of the same task) to use instead of the task's "
                                    "own; `grok sweep` takes its config as CONFIG only")
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a run of the same config)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-analysis", action="store_true", help="train only; do not write grok.json")
    add_device_argument(p, what="training")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the usage lines of the docstring
    sub = p.add_subparsers(dest="grok_command", required=True, metavar="TASK")
    for task, cfg_name in TASK_CONFIGS.items():
        sp = sub.add_parser(task, help=f"train {task} (model_configs/{cfg_name}.yaml) and analyse it")
        _run_flags(sp)
        sp.add_argument("--force", action="store_true", help="discard what --out holds and start over")
    grok_li2.add_parser(sub)
    sp = sub.add_parser("compare", help="a run or sweep beside the published records (curves band, events, law)")
    sp.add_argument("target", metavar="RUN_OR_SWEEP", help="a grok run directory or a sweep's --out directory")
    sp.add_argument("--reference", help="published records CSV (default: the packaged copy)")
    sp.add_argument("--figure", help="also write the run's comparison figure (PNG) here (a run only)")
    sp = sub.add_parser("sweep", help="the weight-decay / lr / seed grid of a config's sweep: section")
    sp.add_argument("sweep_config", metavar="CONFIG", help="a task (modadd), config name (grok-modadd) or YAML path")
    _run_flags(sp)
    add_executor_arguments(sp, default="process", default_workers="the sweep section's workers")


def _overrides(args: argparse.Namespace) -> dict:
    return {field: getattr(args, flag) for flag, field in FLAGS.items()}


def _check_threads(args: argparse.Namespace) -> None:
    """An explicit --threads that differs from the thread count of the run it would resume: refuse (the
    resumed trajectory would match no uninterrupted run); an automatic choice yields to the run's."""
    from headscreen.grokking.training.sessions import resume_threads

    threads = getattr(args, "threads", None)  # the top-level --threads; None = chosen automatically
    if threads is None or args.force:
        return
    recorded = resume_threads(args.out)
    if recorded is not None and recorded != threads:
        raise ConfigError(f"run {args.out} was trained at {recorded} torch thread(s) and resumes only at that count "
                          f"(a trajectory is bit-reproducible at one thread count); rerun with --threads {recorded}, "
                          f"or without --threads, or with --force to start over at {threads}")


def main(args: argparse.Namespace) -> int:
    if args.grok_command == "li2":
        return grok_li2.main(args)
    if args.grok_command == "compare":
        return compare_main(args)
    progress, analyse = not args.no_progress, not args.no_analysis
    if args.grok_command == "sweep":
        if args.config is not None:
            raise ConfigError(f"`grok sweep {args.sweep_config} --config {args.config}` names two configs; give the "
                              "sweep's config once, as CONFIG")
        _, _, grid_cfg = load_grok_config(args.sweep_config, _overrides(args))
        args.workers = args.workers or (grid_cfg.workers if grid_cfg else None)
        with executor_from_args(args) as executor:
            table = sweep(args.sweep_config, args.out, overrides=_overrides(args),
                          workers=args.workers, progress=progress, analyse=analyse, executor=executor,
                          device=args.device)
        print(table.to_string(index=False))
        print(f"sweep written to {args.out} (sweep.parquet, sweep.json, runs/)")
        return 0
    if args.config is not None:
        check_task_config(args.grok_command, args.config)
    _check_threads(args)
    result = grok(args.config or args.grok_command, args.out, overrides=_overrides(args), progress=progress,
                  force=args.force, analyse=analyse, device=args.device)
    for key in ("grok_step", "memorisation_step", "defect_onset_step", "gap_open_step", "final_train_acc",
                "final_test_acc", "key_frequencies"):
        if key in result:
            print(f"{key}: {result[key]}")
    print(f"run written to {args.out}", file=sys.stderr)
    return 0


def compare(target: str | Path, reference: str | Path | None = None, figure: str | Path | None = None) -> dict:
    """`headscreen grok compare`: a run's comparison.json (and figure), or a sweep's sweep_comparison.json."""
    from headscreen.grokking.published.compare import SWEEP_COMPARISON, sweep_comparison, write_comparison
    from headscreen.rundir.store import atomic_write

    target = Path(target)
    _require_compare_target(target)
    if (target / "manifest.json").is_file():
        comp = write_comparison(target, reference)
        if figure is not None:
            from headscreen.report.grok_compare import comparison_figure

            comparison_figure(comp, title=target.name).savefig(figure, dpi=110)
        return comp
    if (target / "runs").is_dir():
        comp = sweep_comparison(target, reference)
        atomic_write(target / SWEEP_COMPARISON, lambda p: p.write_text(json.dumps(comp, indent=1)))
        return comp
    raise ConfigError(f"{target} is neither a grok run (manifest.json) nor a sweep (runs/); give a --out directory "
                      "of `headscreen grok` or `headscreen grok sweep`")


def _require_compare_target(target: Path) -> None:
    """`grok compare` writes its comparison into a grok run or a grok sweep only (headscreen/rundir/kind.py)."""
    from headscreen.rundir.kind import KINDS, WrongKind, check_not_mixed, directory_kind

    kind = directory_kind(target)
    if kind in ("screen", "series", "grok-trajectory", "report"):
        raise WrongKind(f"{target} is {KINDS[kind]}; `headscreen grok compare` reads grok runs and grok sweeps: give a "
                        "--out directory of `headscreen grok` or `headscreen grok sweep`")
    if kind in ("grok", "li2"):
        check_not_mixed(target, kind)


def compare_main(args: argparse.Namespace) -> int:
    from headscreen.grokking.published.compare import comparison_table, print_sweep_report

    target = Path(args.target)
    _require_compare_target(target)
    if (target / "manifest.json").is_file():
        comp = compare(target, args.reference, args.figure)
        print(comparison_table(comp).to_string(index=False))
        print(f"comparison written to {target / 'comparison.json'}", file=sys.stderr)
    else:
        from headscreen.grokking.published.compare import SWEEP_COMPARISON
        from headscreen.rundir.store import atomic_write

        comp = print_sweep_report(target, args.reference)
        atomic_write(target / SWEEP_COMPARISON, lambda p: p.write_text(json.dumps(comp, indent=1)))
    return 0
