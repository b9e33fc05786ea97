"""Fault injection on the run lifecycle (issue 26): a bad `validate` argument loses no validation, a
directory of one kind is never written or read as another, and the faults of opening a run end in one
named line with exit code 2. Every case runs the real CLI on copies of one tiny screened and validated
run; `record` fails the test that tried a case at once, naming the case (no test depends on another's order).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch

from headscreen.testing import save_tiny_series, tiny_screen_config
from pipelines.cli import main

torch.set_num_threads(1)

STEPS = [0, 1, 2, 3]
VALIDATE = ["--heads", "L1H0,L1H2", "--n-null", "3", "--ablation", "zero"]
#: the results a finished, validated screen run holds
RESULTS = ("manifest.json", "validation.json", "validation.parquet", "patching.parquet", "preid.json",
           "preid.parquet", "circuits.json", "classes.parquet", "selectivity.parquet")


def cli(capsys, *argv) -> tuple[int, str]:
    try:
        rc = main(["--threads", "1", *map(str, argv)])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def record(case: str, ok: bool) -> None:
    """`case` ended as it should, or the test fails naming it."""
    assert ok, case


def one_line(rc: int, err: str, *needles: str) -> bool:
    """Exit code 2 and exactly one error line on stderr (the last; progress lines may precede it), naming
    every needle."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("headscreen ")]
    return (rc == 2 and len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err
            and all(n in errors[0] for n in needles))


def digest(run: Path, names=RESULTS) -> dict[str, str]:
    return {n: hashlib.sha256((run / n).read_bytes()).hexdigest() for n in names if (run / n).is_file()}


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """(series, config, a screened and validated run)."""
    base = tmp_path_factory.mktemp("lifecycle")
    series = save_tiny_series(base / "series", "llama", STEPS, n_layers=2, d_model=32, n_heads=4, vocab=128, n_ctx=64)
    cfg = base / "cfg.yaml"
    cfg.write_text(tiny_screen_config(series, "lifecycle-tiny"))
    run = base / "run"
    assert main(["--threads", "1", "screen", str(series), "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert main(["--threads", "1", "validate", str(run), *VALIDATE]) == 0
    return series, cfg, run


@pytest.fixture()
def run(validated, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(validated[2], target)
    return target


# --- 1. a bad validate argument loses nothing ----------------------------------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["--heads", "L9H0"], "L9H0 is outside the screened model"),
    (["--heads", "L1H7"], "L1H7 is outside the screened model"),
    (["--heads", "L1H3,L1H3"], "L1H3 twice"),
    (["--heads", "L1H3,L1H3", "--n-null", "4", "--ablation", "zero"], "L1H3 twice"),
    (["--heads", "L1X3"], "is not like L1H3"),
    (["--ablation", "zero,zero"], "zero twice"),
    (["--ablation", "zeroo"], "zeroo"),
    (["--n-null", "0"], "n_null=0"),
    (["--checkpoint", "7"], "checkpoint 7 was not screened"),
    (["--config", "no-such-config-x"], "no-such-config-x"),
])
def test_a_bad_validate_argument_keeps_the_validation(run, capsys, args, needle):
    before = digest(run)
    rc, err = cli(capsys, "validate", run, *args)
    record(f"validate {' '.join(args)}", one_line(rc, err, needle) and digest(run) == before)


def test_a_validate_failing_late_keeps_the_validation(run, capsys, monkeypatch):
    """A failure after the ablations ran (here: in the patching) publishes nothing: the staged files are dropped."""
    import pipelines.validate as v

    before = digest(run)

    def broken(*a, **k):
        raise ValueError("patching failed (injected)")

    monkeypatch.setattr(v, "patch_checkpoint", broken)
    rc, err = cli(capsys, "validate", run, *VALIDATE)
    record("validate failing in the patching", one_line(rc, err, "injected") and digest(run) == before)
    assert json.loads((run / "preid.json").read_text())["circuit_source"] == "validated"


def test_a_validate_killed_while_publishing_is_finished_by_the_next_one(run, validated, capsys, monkeypatch):
    """Killed between two renames of the publish: the report refuses the half-published run in one line,
    and the next process that takes the run's lock publishes the rest (same bytes as a full validate)."""
    import headscreen.rundir.staged as staged
    from headscreen.report.load import StaleRunError, load_run
    from headscreen.rundir.store import RunStore

    (run / "validation.json").unlink()  # a fresh validate's files differ from these by nothing but must be published
    replaced = []
    real = staged._rename

    def dying(src, dst):
        if len(replaced) == 2:
            raise KeyboardInterrupt  # stands for the kill: nothing after this line runs
        replaced.append(dst)
        real(src, dst)

    monkeypatch.setattr(staged, "_rename", dying)
    rc, _ = cli(capsys, "validate", run, *VALIDATE)
    monkeypatch.setattr(staged, "_rename", real)
    assert rc == 130 and len(replaced) == 2 and not (run / "validation.json").exists()
    with pytest.raises(StaleRunError, match="interrupted while publishing"):
        load_run(run)
    rc, err = cli(capsys, "report", run, "--out", run.parent / "rep")
    ok = one_line(rc, err, "interrupted while publishing")
    with RunStore.locked(run, "test"):
        pass
    record("validate killed mid-publish", ok and digest(run) == digest(validated[2]))


# --- 2. run kinds --------------------------------------------------------------------------------------

@pytest.fixture()
def grok_run(tmp_path):
    from tests.grok_fixtures import make_run

    return make_run(tmp_path / "grok", n_snap=4, every=10, switch=2, grok_at=None, onset_at=None)


def _li2_run(root: Path) -> Path:
    from headscreen.rundir.store import RunStore

    with RunStore.open(root, {"kind": "grok", "config": {"family": "li2", "m": 7}}):
        pass
    pd.DataFrame({"epoch": [0], "sigma_1": [1.0]}).to_parquet(root / "li2.parquet")
    return root


def _sweep(root: Path) -> Path:
    (root / "runs").mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"config": "grok-modadd", "runs": []}))
    return root


def test_screen_never_writes_into_a_grok_run_even_with_force(grok_run, validated, capsys):
    series, cfg, _ = validated
    before = digest(grok_run, ("manifest.json", "curves.parquet", "defect.parquet"))
    for extra in ([], ["--force"]):
        rc, err = cli(capsys, "screen", series, "--config", cfg, "--out", grok_run, "--no-progress", *extra)
        record(f"screen --out <grok run> {extra}",
               one_line(rc, err, f"{grok_run} is a grok run; `headscreen screen` writes screen runs: choose another --out")
               and digest(grok_run, before) == before and not (grok_run / "records").exists())


def test_grok_never_writes_into_a_screen_run_even_with_force(run, capsys):
    before = digest(run)
    for extra in ([], ["--force"]):
        rc, err = cli(capsys, "grok", "modadd", "--p", "7", "--steps", "10", "--out", run, "--no-progress", *extra)
        record(f"grok --out <screen run> {extra}",
               one_line(rc, err, f"{run} is a screen run; `headscreen grok` writes grok runs")
               and digest(run) == before and not (run / "trajectory").exists())


@pytest.mark.parametrize("make", ["li2", "sweep"])
def test_grok_and_li2_and_sweep_refuse_each_other(tmp_path, grok_run, capsys, make):
    target = _li2_run(tmp_path / "li2") if make == "li2" else _sweep(tmp_path / "sweep")
    before = sorted(p.name for p in target.iterdir())
    what = "a Li2 grok run" if make == "li2" else "a grok sweep"
    rc, err = cli(capsys, "grok", "modadd", "--p", "7", "--steps", "10", "--out", target, "--force", "--no-progress")
    ok = one_line(rc, err, f"{target} is {what}; `headscreen grok` writes grok runs")
    rc, err = cli(capsys, "grok", "sweep", "modadd", "--steps", "10", "--out", grok_run, "--no-progress")
    ok &= one_line(rc, err, f"{grok_run} is a grok run; `headscreen grok sweep` writes grok sweeps")
    record(f"grok into a {make}; sweep into a grok run", ok and sorted(p.name for p in target.iterdir()) == before
           and not (grok_run / "sweep.json").exists())


def test_li2_never_overwrites_a_modular_grok_run(grok_run, capsys):
    before = digest(grok_run, ("manifest.json", "curves.parquet"))
    rc, err = cli(capsys, "grok", "li2", "--epochs", "12", "--out", grok_run, "--force", "--no-progress")
    record("grok li2 --force --out <grok run>",
           one_line(rc, err, f"{grok_run} is a grok run; `headscreen grok li2` writes Li2 grok runs")
           and digest(grok_run, before) == before)


def test_readers_name_what_the_directory_is(grok_run, run, validated, tmp_path, capsys):
    series = validated[0]
    cases = [
        (["validate", grok_run], f"{grok_run} is a grok run; `headscreen validate` reads screen runs"),
        (["screen", grok_run / "trajectory", "--out", tmp_path / "s"], "is the trajectory of a grok run"),
        (["screen", grok_run, "--out", tmp_path / "s"], f"{grok_run} is a grok run, not a checkpoint series"),
        (["screen", run, "--out", tmp_path / "s"], f"{run} is a screen run, not a checkpoint series"),
        (["series", run], f"{run} is a screen run, not a checkpoint series"),
        (["report", grok_run / "trajectory"], "is the trajectory of a grok run, not a run"),
        (["report", series], f"{series} is a checkpoint series, not a run"),
        (["train", "--out", run], f"{run} is a screen run; `headscreen train` writes checkpoint series"),
        (["validate", series], f"{series} is a checkpoint series; `headscreen validate` reads screen runs"),
        (["attention", grok_run], f"{grok_run} is a grok run; `headscreen attention` reads screen runs"),
        (["grok", "compare", run], f"{run} is a screen run; `headscreen grok compare` reads grok runs and grok sweeps"),
    ]
    before = digest(run)
    for argv, needle in cases:
        rc, err = cli(capsys, *argv)
        record(f"{argv[0]} {Path(argv[1]).name if len(argv) > 1 else ''}: {needle[-40:]}", one_line(rc, err, needle))
    assert digest(run) == before and not (tmp_path / "s").exists()


def test_a_mixed_directory_is_refused_by_every_reader(run, grok_run, capsys):
    """An older headscreen let `grok --force` write into a screen run; such a directory is named, not read."""
    shutil.copytree(grok_run / "trajectory", run / "trajectory")
    shutil.copy(grok_run / "curves.parquet", run / "curves.parquet")
    before = digest(run)
    for argv in (["validate", run, *VALIDATE], ["report", run, "--out", run.parent / "rep"]):
        rc, err = cli(capsys, *argv)
        record(f"{argv[0]} <mixed dir>", one_line(rc, err, f"{run} is a screen run but also holds files of a grok run",
                                                  "trajectory") and digest(run) == before)


def test_kind_is_inferred_for_runs_without_the_field(run, grok_run):
    from headscreen.rundir.kind import directory_kind

    for path, kind in ((run, "screen"), (grok_run, "grok")):
        m = json.loads((path / "manifest.json").read_text())
        assert directory_kind(path) == kind
        m.pop("kind")
        (path / "manifest.json").write_text(json.dumps(m))
        assert directory_kind(path) == kind


# --- 3. missing shards, hand-edited tables ------------------------------------------------------------

@pytest.fixture()
def sharded(tmp_path):
    root = save_tiny_series(tmp_path / "sharded", "llama", [0, 1], n_layers=2, d_model=32, n_heads=4, vocab=128,
                            n_ctx=64, max_shard_size="30KB")
    index = json.loads((root / "step1" / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(index.values()))[-1]
    (root / "step1" / shard).unlink()
    return root, shard


def test_a_missing_shard_is_named_by_series_and_screen(sharded, validated, tmp_path, capsys):
    root, shard = sharded
    for argv in (["series", root, "--quick"], ["series", root],
                 ["screen", root, "--config", validated[1], "--out", tmp_path / "s", "--no-progress"]):
        rc, err = cli(capsys, *argv)
        # `series` lists the checkpoints first, then names each problem; screen names it in one line
        lines = [ln for ln in err.splitlines() if ln.strip()]
        named = f"shard {shard} named by its model.safetensors.index.json is missing" in err and "step1" in err
        ok = rc == 2 and named and "Errno" not in err and "Traceback" not in err
        if argv[0] == "screen":
            ok &= one_line(rc, err, shard)
        record(f"{' '.join(map(str, argv[:1]))} {argv[-1] if argv[-1] == '--quick' else ''} missing shard", ok and lines)


def _edit(run: Path, name: str, edit) -> None:
    df = pd.read_parquet(run / name)
    edit(df).to_parquet(run / name, index=False)


@pytest.mark.parametrize(("name", "edit", "needle"), [
    ("selectivity.parquet", lambda d: d.assign(selectivity=d["selectivity"].where(d.index != 3)),
     "column 'selectivity' holds 1 NaN value(s)"),
    ("selectivity.parquet", lambda d: d.drop(columns=["probe"]), "lacks the column(s) ['probe']"),
    ("classes.parquet", lambda d: d.assign(best_selectivity=d["best_selectivity"].map("{:.3f}".format)),
     "column 'best_selectivity' holds str values"),
    ("participation.parquet", lambda d: d.assign(pr=d["pr"].where(d.index != 0, float("inf"))),
     "column 'pr' holds 1 NaN/Inf value(s)"),
    ("copying.parquet", lambda d: d.assign(step=d["step"] + 0.5), "column 'step' holds non-integer values"),
    ("head_scores.parquet", lambda d: d.drop(columns=["value"]), "lacks the column(s) ['value']"),
])
def test_a_hand_edited_table_is_named_when_the_run_is_opened(run, capsys, name, edit, needle):
    _edit(run, name, edit)
    before = digest(run, (*RESULTS, name))
    ok = True
    for argv in (["report", run, "--out", run.parent / "rep"], ["validate", run, *VALIDATE]):
        rc, err = cli(capsys, *argv)
        ok &= one_line(rc, err, str(run / name), needle)
    record(f"edited {name}: {needle[:30]}", ok and digest(run, before) == before and not (run.parent / "rep").exists())


# --- 4. raw tracebacks that became one-line errors ----------------------------------------------------

LAUGHS = """name: laughs
source: {{kind: local, local_path: {root}}}
architecture:
  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_billion_laughs_config_is_refused_before_it_expands(validated, tmp_path, capsys):
    import tracemalloc

    series = validated[0]
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text(LAUGHS.format(root=series))
    tracemalloc.start()
    ok = True
    for argv in (["screen", series, "--config", cfg, "--out", tmp_path / "s", "--no-progress"],
                 ["grok", "modadd", "--config", cfg, "--out", tmp_path / "g", "--no-progress"],
                 ["train", "--config", cfg, "--out", tmp_path / "t"]):
        rc, err = cli(capsys, *argv)
        ok &= one_line(rc, err, f"{cfg}: its aliases (&anchor / *alias) expand it to more than 100,000 values")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    record("billion laughs config (screen, grok, train)", ok and peak < 50e6 and not (tmp_path / "s").exists()
           and not (tmp_path / "g").exists())


def test_a_config_with_fewer_aliases_still_loads(tmp_path):
    from headscreen.config import load_config

    cfg = tmp_path / "ok.yaml"
    cfg.write_text("name: ok\nsource: {kind: synthetic}\narchitecture:\n  a: &a [1, 2, 3]\n  b: [*a, *a, *a]\n")
    assert load_config(cfg).architecture["b"] == [[1, 2, 3]] * 3


def test_a_dead_worker_is_one_line_and_keeps_the_records(validated, tmp_path, capsys, monkeypatch):
    """A process-pool or Ray worker killed under a chunk (TaskFailed with crashed=True, as the executors
    report a BrokenProcessPool or a Ray WorkerCrashedError; tests/test_executors.py kills real ones)."""
    from concurrent.futures.process import BrokenProcessPool

    import pipelines.screen as screen_module
    from headscreen.compute.executors import Executor, TaskFailed

    class DiesOnSecondChunk(Executor):
        kind = "process"

        def run(self, fn, tasks):
            for i, args in enumerate(tasks):
                yield i, (fn(*args) if i == 0 else
                          TaskFailed(BrokenProcessPool("A child process terminated abruptly"), crashed=True))

    monkeypatch.setattr(screen_module, "executor_from_args", lambda args: DiesOnSecondChunk(2))
    series, cfg, _ = validated
    out = tmp_path / "s"
    rc, err = cli(capsys, "screen", series, "--config", cfg, "--out", out, "--no-progress", "--executor", "process")
    kept = sorted(p.name for p in (out / "records" / "sketch").iterdir())
    record("screen with a dead worker", one_line(rc, err, "a worker died while screening steps 2..3",
                                                 "rerun the same command to resume")
           and kept == ["step_000000000.safetensors", "step_000000001.safetensors"])


# --- 5. unclear errors made clear ---------------------------------------------------------------------

def test_an_inf_in_an_mlp_weight_is_named_by_its_tensor(validated, tmp_path, capsys, grok_run):
    from safetensors.torch import load_file, save_file

    series = tmp_path / "series"
    shutil.copytree(validated[0], series)
    path = series / "step2" / "model.safetensors"
    sd = load_file(path)
    sd["model.layers.0.mlp.down_proj.weight"][0, 0] = float("inf")
    save_file(sd, path, metadata={"format": "pt"})
    rc, err = cli(capsys, "screen", series, "--config", validated[1], "--out", tmp_path / "s", "--no-progress")
    ok = one_line(rc, err, "step2", "model.layers.0.mlp.down_proj.weight has 1 NaN/Inf values")
    ok &= "_original_component" not in err
    # a grok snapshot: the trunk is one pseudo-head, but the message names the tensor
    snap = grok_run / "trajectory" / "step_000000020" / "model.safetensors"
    sd = load_file(snap)
    sd["blocks.0.mlp.W_in"][0, 0] = float("inf")
    save_file(sd, snap)
    rc, err = cli(capsys, "report", grok_run, "--out", tmp_path / "rep")
    ok &= one_line(rc, err, "step_000000020", "tensor blocks.0.mlp.W_in has 1 NaN/Inf value(s)")
    record("Inf in an MLP weight (screen, grok report)", ok and "head 0" not in err)


def test_report_out_is_checked_before_rendering(run, tmp_path, capsys, monkeypatch):
    import headscreen.report.build as build

    def never(*a, **k):
        raise AssertionError("rendered before --out was checked")

    monkeypatch.setattr(build, "assemble", never)
    (tmp_path / "afile").write_text("x")
    cases = [(tmp_path / "afile", "is an existing file, not a folder"),
             (tmp_path / "afile" / "sub", "is a file, so the report folder cannot be made there"),
             (Path("/proc/headscreen-report"), "cannot write into /proc")]
    for out, needle in cases:
        rc, err = cli(capsys, "report", run, "--out", out)
        record(f"report --out {out.name}", one_line(rc, err, needle))


def test_series_json_may_not_point_outside_the_root(validated, tmp_path, capsys):
    series = tmp_path / "series"
    shutil.copytree(validated[0], series)
    shutil.move(series / "step3", tmp_path / "outside")
    entries = [{"step": s, "tokens": None, "path": f"step{s}"} for s in (0, 1, 2)]
    for bad in ("../outside", str(tmp_path / "outside"), "."):
        (series / "series.json").write_text(json.dumps({"checkpoints": [*entries, {"step": 3, "path": bad}]}))
        for command in ("series", "screen"):
            extra = ["--out", tmp_path / "s"] if command == "screen" else []
            rc, err = cli(capsys, command, series, *extra)
            record(f"{command} series.json path {bad[-12:]}",
                   one_line(rc, err, "checkpoint step 3 points outside the series", repr(bad)))


def test_one_rule_for_names_and_links_in_series_and_screen(validated, tmp_path, capsys):
    series = tmp_path / "series"
    shutil.copytree(validated[0], series)
    os.rename(series / "step1", os.fsencode(series) + b"/x\xff-step1")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for target, needle in ((series, r"x\xff-step1' is not valid UTF-8 text"),
                           (loop, "is a symlink that cannot be followed")):
        for command in ("series", "screen"):
            extra = ["--out", tmp_path / "s"] if command == "screen" else []
            rc, err = cli(capsys, command, target, *extra)
            record(f"{command} {target.name}: {needle[-20:]}", one_line(rc, err, needle))
    assert not (tmp_path / "s").exists()


def test_a_number_yaml_reads_as_text_is_explained(validated, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(validated[1].read_text().replace("window: 3", "window: 3, sketch_dim: 1e9"))
    rc, err = cli(capsys, "screen", validated[0], "--config", cfg, "--out", tmp_path / "s")
    record("sketch_dim: 1e9", one_line(rc, err, "sketch_dim", "YAML reads '1e9' as text, not a number: write "
                                                               "1000000000 or 1.0e+9"))


def test_the_ray_executor_starts_its_cluster_on_loopback_without_usage_reporting(monkeypatch):
    """The settings are made before Ray starts its cluster (checked here on a stand-in module; on Ray 2.60
    `ss -ltnp` showed every listener of the local cluster on 127.0.0.1 with them, on the host address without)."""
    import sys
    import types

    from headscreen.compute.executors import RayExecutor

    seen = {}
    constants = types.SimpleNamespace(ENABLE_RAY_CLUSTER=True)
    fake = types.SimpleNamespace(
        is_initialized=lambda: False, remote=lambda **k: (lambda fn: fn), _private=types.SimpleNamespace(ray_constants=constants),
        init=lambda **k: seen.update(k, usage=os.environ.get("RAY_USAGE_STATS_ENABLED"),
                                     cluster=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
                                     constant=constants.ENABLE_RAY_CLUSTER))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    RayExecutor(workers=2, threads=1)
    assert seen["usage"] == "0" and seen["cluster"] == "0" and seen["constant"] is False and seen["num_cpus"] == 2
    seen.clear()
    constants.ENABLE_RAY_CLUSTER = True
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    RayExecutor(workers=2, threads=1, address="auto")  # joining a cluster: its own settings stand
    assert seen["address"] == "auto" and seen["constant"] is True and seen["cluster"] == "1"
