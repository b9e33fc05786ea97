"""Fault injection on the life cycle of grok runs (issue 26): analysis bound to its trajectory, reports of
unfinished or locked runs, --force, one thread count per run, and named errors (exit 2, one line).

Every case runs the real CLI (`pipelines.cli.main`) on tiny runs (p = 11, 48 steps); `record` fails the
test that tried a case at once, naming the case (no test depends on another's order).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from headscreen.grokking.training.lifecycle import ANALYSIS_FILES, current_analysis, trajectory_state
from headscreen.rundir.store import RunStore
from pipelines.cli import main

torch.set_num_threads(1)

TINY = """name: grok-tiny
source: {kind: synthetic}
grok:
  tasks: [add]
  p: 11
  train_frac: 0.5
  model: {d_model: 32, n_heads: 2, d_head: 16, d_mlp: 64, n_layers: 1}
  lr: 0.01
  batch_size: 32
  steps: 48
  eval_every: 4
  snapshot_every: 4
  defect_every: 8
  defect_pairs: 2
  defect_batch_size: 16
sweep: {weight_decay: [0.0, 1.0], workers: 2}
"""
OUTPUTS = ("grok.json", "edge.parquet", "portrait.parquet", "fourier.parquet", "progress.parquet", "pca.parquet",
           "curves.parquet", "defect.parquet")


def cli(capsys, *argv, threads: int | None = 1) -> tuple[int, str]:
    try:
        rc = main([*(["--threads", str(threads)] if threads else []), *map(str, argv)])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def one_line_error(err: str, *words: str) -> bool:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    return (len(lines) == 1 and lines[0].startswith("headscreen ") and ": error: " in lines[0]
            and all(w in lines[0] for w in words))


def record(case: str, ok: bool) -> None:
    """`case` ended as expected, or the test fails naming it."""
    assert ok, case


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "grok-tiny.yaml"
    path.write_text(TINY)
    return path


def grok_args(cfg: Path, out: Path, *extra) -> list:
    return ["grok", "modadd", "--config", cfg, "--out", out, "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(cfg, tmp_path_factory):
    """An uninterrupted, analysed run at 1 thread."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["--threads", "1", *map(str, grok_args(cfg, out))]) == 0
    return out


def same_bytes(a: Path, b: Path, names=OUTPUTS) -> list[str]:
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


class Interrupt:
    """Ctrl-C right after the n-th resume point of this process is written (the trainer's save_optimizer
    patched), i.e. after snapshot 4·(n-1) and its tables."""

    def __init__(self, monkeypatch, n: int):
        from headscreen.grokking.training import train

        self.left, real = n, train.save_optimizer

        def save(*a, **k):
            real(*a, **k)
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

        monkeypatch.setattr(train, "save_optimizer", save)


# --- item 1 and 6: analysis bound to the trajectory; reports of unfinished runs -------------------------
def test_interrupted_report_resumed_run_equals_an_uninterrupted_one(cfg, reference, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        Interrupt(m, 4)
        rc, err = cli(capsys, *grok_args(cfg, run))
    record("Ctrl-C during grok: exit 130", rc == 130 and "interrupted" in err)
    rc, _ = cli(capsys, "report", run)
    md = (run / "report" / "report.md").read_text()
    record("report of the unfinished run: rendered, marked UNFINISHED, writes no analysis",
           rc == 0 and md.startswith("# headscreen grokking report (UNFINISHED") and "trained to step 12 of 48" in md
           and not any((run / f).exists() for f in ANALYSIS_FILES))
    rj = json.loads((run / "report" / "report.json").read_text())
    record("report.json of the unfinished run is marked too", "UNFINISHED" in json.dumps(rj))
    rc, _ = cli(capsys, *grok_args(cfg, run))
    record("resume after the report: grok.json and tables byte-identical to the uninterrupted run",
           rc == 0 and same_bytes(run, reference) == [])


def test_a_stale_grok_json_is_recomputed_after_a_resume(cfg, reference, tmp_path, capsys, monkeypatch):
    """An older grok.json of 3 snapshots (as older versions and reports wrote it) does not outlive a resume."""
    from headscreen.grokking.analysis.analyse import compute_analysis, write_analysis

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        Interrupt(m, 3)
        assert cli(capsys, *grok_args(cfg, run))[0] == 130
    out, tables = compute_analysis(run, progress=False)
    with RunStore.locked(run, "test") as store:
        write_analysis(run, store, out, tables)  # a stale analysis of the unfinished run
    stale = json.loads((run / "grok.json").read_text())
    assert stale["n_snapshots"] == 3
    rc, err = cli(capsys, *grok_args(cfg, run))
    fresh = json.loads((run / "grok.json").read_text())
    record("stale 3-snapshot grok.json recomputed on resume",
           rc == 0 and fresh["n_snapshots"] == 13 and same_bytes(run, reference) == [])
    # and a finished run's current grok.json is reused, not rewritten
    mtime = (run / "grok.json").stat().st_mtime_ns
    rc, _ = cli(capsys, *grok_args(cfg, run))
    record("rerun of a finished run keeps its current grok.json", rc == 0 and (run / "grok.json").stat().st_mtime_ns == mtime)


def test_report_refuses_a_run_locked_by_a_trainer(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "grok.json").unlink()
    with RunStore.locked(run, "grok"):
        rc, err = cli(capsys, "report", run)
    record("report of a locked run: one named line, exit 2, nothing written",
           rc == 2 and one_line_error(err, "in use by", "grok") and not (run / "grok.json").exists())


def test_report_of_a_finished_run_with_a_stale_grok_json_reanalyses(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    doc = json.loads((run / "grok.json").read_text())
    doc["final_test_acc"], doc["trajectory"]["fingerprint"] = -1.0, "0" * 16  # from another trajectory
    (run / "grok.json").write_text(json.dumps(doc))
    rc, _ = cli(capsys, "report", run)
    record("report re-analyses a finished run whose grok.json is stale",
           rc == 0 and same_bytes(run, reference) == [] and current_analysis(run) is not None)


# --- item 2: --force removes every derived file -----------------------------------------------------------
@pytest.mark.parametrize("no_analysis", [True, False])
def test_force_removes_every_derived_file(cfg, reference, tmp_path, capsys, no_analysis):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert cli(capsys, "report", run)[0] == 0
    (run / "intervention.parquet").write_bytes(b"an old run's table")
    old = json.loads((run / "grok.json").read_text())
    extra = ["--no-analysis"] if no_analysis else []
    rc, _ = cli(capsys, *grok_args(cfg, run, "--force", "--seed", "5", *extra))
    left = [f for f in (*ANALYSIS_FILES, "intervention.parquet", "report") if (run / f).exists()]
    if no_analysis:
        ok = left == []
    else:
        new = json.loads((run / "grok.json").read_text())
        ok = (sorted(left) == sorted(f for f in ANALYSIS_FILES if (reference / f).exists())
              and new["trajectory"] == trajectory_state(run) and new["settings"]["training"]["seed"] == 5
              and new["trajectory"]["fingerprint"] != old["trajectory"]["fingerprint"])
    record(f"--force{' --no-analysis' if no_analysis else ''} leaves no derived file of the old run", rc == 0 and ok)


def test_a_force_killed_before_it_cleared_the_old_trajectory_does_not_resume_it(cfg, tmp_path, capsys, monkeypatch):
    """--force writes the new manifest, then clears the old run: killed in between, the next run of the new
    config must not resume the old config's trajectory."""
    from headscreen.grokking.config import config_defaults
    from headscreen.grokking.training.train import run_manifest
    from pipelines.grok import load_grok_config

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        Interrupt(m, 4)
        assert cli(capsys, *grok_args(cfg, run))[0] == 130
    _, new, _ = load_grok_config(str(cfg), {"seed": 5})
    with RunStore.open(run, run_manifest(new, {"device": "cpu"}), force=True, defaults=config_defaults()):
        pass  # the new manifest is on disk; the old trajectory and resume point are still there
    rc, _ = cli(capsys, *grok_args(cfg, run, "--seed", "5", "--no-analysis"))
    sessions = json.loads((run / "trajectory" / "series.json").read_text())["training"]["sessions"]
    record("a half-done --force: the new config trains from step 0", rc == 0 and [s["from_step"] for s in sessions] == [0])


# --- item 5: one thread count per run; every session recorded --------------------------------------------
def test_a_resume_trains_at_the_recorded_thread_count(cfg, reference, tmp_path, capsys, monkeypatch):
    """A run trained at 1 thread, killed, resumed by a process at 2 threads: the resume trains at 1."""
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        Interrupt(m, 5)
        assert cli(capsys, *grok_args(cfg, run), threads=1)[0] == 130
    sessions = json.loads((run / "trajectory" / "series.json").read_text())["training"]["sessions"]
    record("a killed session is recorded (status running, to_step = its last snapshot)",
           len(sessions) == 1 and sessions[0]["status"] == "running" and sessions[0]["to_step"] == 16)
    rc, err = cli(capsys, *grok_args(cfg, run), threads=2)
    record("--threads 2 on a 1-thread run: refused in one line", rc == 2 and one_line_error(err, "--threads 1"))
    torch.set_num_threads(2)  # this process now runs at 2; the resume must not
    try:
        rc, err = cli(capsys, *grok_args(cfg, run), threads=None)  # no --threads: adopts the run's 1
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(1)
    meta = json.loads((run / "trajectory" / "series.json").read_text())["training"]
    record("a resume without --threads trains at the run's thread count and matches the uninterrupted run",
           rc == 0 and "resuming at the run's 1 torch thread(s)" in err and after == 2
           and meta["threads"] == 1 and [s["threads"] for s in meta["sessions"]] == [1, 1]
           and [s["status"] for s in meta["sessions"]] == ["stopped", "finished"]
           and meta["sessions"][1]["from_step"] == 16 and same_bytes(run, reference) == [])


# --- item 7: silent choices become refusals --------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["grok", "sweep", "{cfg}", "--config", "grok-modadd", "--out", "{out}"], ["names two configs"]),
    (["grok", "sweep", "{cfg}", "--wd", "0.5", "--out", "{out}"], ["--wd 0.5", "varies", "weight_decay"]),
    (["grok", "modadd", "--config", "{cfg}", "--strength", "0.5", "--out", "{out}"], ["strength = 0.5", "no effect"]),
    (["grok", "modadd", "--config", "{cfg}", "--intervention-start", "100", "--out", "{out}"], ["start = 100"]),
    (["grok", "dyck", "--intervention", "suppress", "--strength", "0.5", "--steps", "100", "--out", "{out}"],
     ["intervention.start = 500", "never act"]),
    (["grok", "modadd", "--config", "grok-modmul", "--out", "{out}"], ["trains ['mul']", "not modadd"]),
    (["grok", "modadd", "--config", "{cfg}", "--p", "100003", "--out", "{out}"], ["p = 100003", "GiB", "smaller --p"]),
])
def test_bad_settings_are_refused_before_anything_is_written(cfg, tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    rc, err = cli(capsys, *[a.format(cfg=cfg, out=out) for a in argv])
    record(f"refused: {' '.join(argv[:4])} ...", rc == 2 and one_line_error(err, *words)
           and not (out / "manifest.json").exists())


def test_a_sweep_grid_value_that_is_not_a_number(tmp_path, capsys):
    path = tmp_path / "abc.yaml"
    path.write_text(TINY.replace("weight_decay: [0.0, 1.0]", "weight_decay: [abc, 1.0]"))
    rc, err = cli(capsys, "grok", "sweep", path, "--out", tmp_path / "out")
    record("sweep grid value 'abc': names the field and the fix",
           rc == 2 and one_line_error(err, "'weight_decay'", "'abc'", "not a number"))


def test_sweep_summary_recomputes_stale_analyses_and_never_writes_for_unfinished_runs(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from grok_fixtures import make_run

    from headscreen.grokking.analysis.summary import summarise_sweep

    done = make_run(tmp_path / "runs" / "wd1_lr0.001_seed0", n_snap=12, every=40)  # groks at 400
    (done / "grok.json").write_text(json.dumps({"grok_step": 7, "trajectory": {"fingerprint": "elsewhere"}}))
    todo = make_run(tmp_path / "runs" / "wd1_lr0.001_seed1", n_snap=12, every=40, seed=1)
    series = todo / "trajectory" / "series.json"
    series.write_text(json.dumps({**json.loads(series.read_text()), "complete": False}))
    df = summarise_sweep(tmp_path, progress=False).set_index("run")
    fresh = json.loads((done / "grok.json").read_text())
    record("sweep summary: a stale grok.json is recomputed, an unfinished run gets an empty row and no grok.json",
           fresh["trajectory"] == trajectory_state(done) and fresh["grok_step"] == 400
           and df.loc[done.name, "grok_step"] == 400
           and not df.loc[todo.name, "complete"] and pd.isna(df.loc[todo.name, "grok_step"])
           and not (todo / "grok.json").exists())


# --- item 8: damaged files, failed sweeps ------------------------------------------------------------------
def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damaged", ["resume.safetensors", "trajectory/step_000000012/model.safetensors"])
def test_a_damaged_resume_point_is_a_named_error(cfg, reference, tmp_path, capsys, monkeypatch, damaged):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        Interrupt(m, 4)
        assert cli(capsys, *grok_args(cfg, run))[0] == 130
    truncate(run / damaged)
    rc, err = cli(capsys, *grok_args(cfg, run))
    record(f"truncated {damaged} on resume: named, says --force",
           rc == 2 and one_line_error(err, str(run / damaged), "--force"))
    rc, err = cli(capsys, *grok_args(cfg, run, "--force"))
    record(f"--force after a truncated {damaged} retrains to the reference", rc == 0 and same_bytes(run, reference) == [])


def test_a_damaged_snapshot_in_report(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "grok.json").unlink()
    bad = run / "trajectory" / "step_000000020" / "model.safetensors"
    truncate(bad)
    rc, err = cli(capsys, "report", run)
    record("report with a truncated snapshot: named error, no grok.json",
           rc == 2 and one_line_error(err, str(bad)) and not (run / "grok.json").exists())


@pytest.mark.slow
def test_a_sweep_with_killed_workers_then_report_then_resume(cfg, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    monkeypatch.setenv("HEADSCREEN_KILL_AT", "renamed:30")  # each spawned worker dies at its 30th write
    rc, err = cli(capsys, "grok", "sweep", cfg, "--out", out, "--no-progress")
    monkeypatch.delenv("HEADSCREEN_KILL_AT")
    table = pd.read_parquet(out / "sweep.parquet")
    record("sweep with killed workers: one named line, exit 2, summary of unfinished runs",
           rc == 2 and one_line_error(err, "2 of 2 sweep runs failed", "worker died") and not table["complete"].any())
    rc, _ = cli(capsys, "report", out)
    md = (out / "report" / "report.md").read_text()
    record("report of a sweep with failed runs: rendered, marked UNFINISHED",
           rc == 0 and "UNFINISHED: 2 of 2 runs" in md
           and not any((r / "grok.json").exists() for r in (out / "runs").iterdir()))
    rc, _ = cli(capsys, "grok", "sweep", cfg, "--out", out, "--no-progress")
    record("rerun of the sweep resumes and finishes", rc == 0 and pd.read_parquet(out / "sweep.parquet")["complete"].all())


def test_report_of_a_no_analysis_sweep(cfg, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc, _ = cli(capsys, "grok", "sweep", cfg, "--out", out, "--no-progress", "--no-analysis", "--executor", "local")
    assert rc == 0
    rc, err = cli(capsys, "report", out)
    table = pd.read_parquet(out / "sweep.parquet")
    record("report of a --no-analysis sweep: analyses the finished runs, no KeyError",
           rc == 0 and table["complete"].all() and table["grok_step"].isna().all() | table["grok_step"].notna().all()
           and all((r / "grok.json").exists() for r in (out / "runs").iterdir()))


def count_writes(monkeypatch, capsys, argv) -> int:
    """Atomic writes (renames) of one in-process CLI call."""
    from headscreen.rundir import atomic

    n, real = [0], atomic._fault_point

    def count(where):
        n[0] += where == "renamed"
        real(where)

    with monkeypatch.context() as m:
        m.setattr(atomic, "_fault_point", count)
        assert cli(capsys, *argv)[0] == 0
    return n[0]


@pytest.mark.slow
def test_sigkill_during_training_or_analysis_then_report_then_rerun(cfg, reference, tmp_path, capsys, monkeypatch):
    """A real SIGKILL (subprocess) at seeded points of training and of the analysis after it: the report in
    between never writes an analysis, and the rerun ends byte-identical to the uninterrupted run."""
    import os
    import random
    import subprocess
    import sys

    total = count_writes(monkeypatch, capsys, grok_args(cfg, tmp_path / "count"))
    rng = random.Random(26)
    kills = [f"renamed:{rng.randint(3, total // 2)}", f"write:{rng.randint(total // 2, total - 8)}",
             f"renamed:{total - 3}", f"write:{total}"]  # training ... the analysis tables and grok.json
    root = Path(__file__).resolve().parents[1]
    for point in kills:
        run = tmp_path / point.replace(":", "_")
        env = {**os.environ, "HEADSCREEN_KILL_AT": point}
        r = subprocess.run([sys.executable, "-m", "pipelines.cli", "--threads", "1", *map(str, grok_args(cfg, run))],
                           cwd=root, env=env, capture_output=True, text=True, timeout=600)
        record(f"SIGKILL at {point} of {total}", r.returncode == -9)
        before = current_analysis(run) is not None
        rc, err = cli(capsys, "report", run)
        finished = json.loads((run / "trajectory" / "series.json").read_text()).get("complete", False)
        record(f"report after SIGKILL at {point}: rendered; grok.json only for a finished run",
               rc == 0 and (finished or not any((run / f).exists() for f in ANALYSIS_FILES))
               and (not before or current_analysis(run) is not None))
        rc, _ = cli(capsys, *grok_args(cfg, run))
        sessions = json.loads((run / "trajectory" / "series.json").read_text())["training"]["sessions"]
        record(f"rerun after SIGKILL at {point}: byte-identical, every session recorded",
               rc == 0 and same_bytes(run, reference) == [] and sessions[-1]["status"] == "finished"
               and all(s["status"] in ("stopped", "finished") for s in sessions))


def test_report_of_a_run_without_snapshots(cfg, tmp_path, capsys):
    run = tmp_path / "run"
    with RunStore.open(run, {"kind": "grok", "config": {"tasks": ["add"], "p": 11}}):
        pass
    rc, err = cli(capsys, "report", run)
    record("report of a run with no snapshot yet: one named line", rc == 2 and one_line_error(err, "no trajectory snapshot"))
