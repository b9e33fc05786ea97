"""A run is bound to its series: deleted, inserted, changed and foreign checkpoints on resume (issue 13, item 1),
tables never older than their records (item 2), and validation outputs removed when records change (item 10)."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch

from headscreen.probes.suite import ProbeSuite
from headscreen.report.load import StaleRunError, load_run
from headscreen.rundir.store import VALIDATION_OUTPUTS, SeriesChanged, StaleTables
from headscreen.spectral import SpectralConfig
from headscreen.testing import save_tiny_series
from pipelines.screen import SCREEN_OUTPUTS, ScreenSettings, screen

torch.set_num_threads(1)

STEPS = [10 * i for i in range(12)]
PROBES = ProbeSuite(seq_len=48, token_range=(4, 500), n_retrieval=16, pair_range=(4, 20), n_repeated=8,
                    repeated_span=16, micro_batch=16)
SETTINGS = ScreenSettings(spectral=SpectralConfig(window=4), probes=PROBES, probe_every=4)


def write_series_json(root, steps):
    entries = [{"step": s, "tokens": 100 * s, "path": f"step{s}"} for s in steps]
    (root / "series.json").write_text(json.dumps({"format": "headscreen-series/1", "name": root.name,
                                                  "checkpoints": entries}))


def make_series(root, steps=STEPS, seed=0):
    """A tiny GPT-NeoX series, one folder per step plus series.json (what `headscreen train` writes)."""
    save_tiny_series(root, "gpt_neox", steps, n_ctx=64, seed=seed)
    write_series_json(root, steps)
    return root


def outputs(run) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in SCREEN_OUTPUTS if (run / name).exists()}


def assert_same_tables(run, fresh):
    """Resumed and fresh screens of the same series: the same files, byte for byte."""
    a, b = outputs(run), outputs(fresh)
    assert sorted(a) == sorted(b)
    for name in a:
        if a[name] != b[name]:  # say which values differ before failing
            if name.endswith(".parquet"):
                pd.testing.assert_frame_equal(pd.read_parquet(run / name), pd.read_parquet(fresh / name))
            assert a[name] == b[name], name


def table_steps(run) -> dict[str, set[int]]:
    return {name: set(pd.read_parquet(run / name)["step"]) for name in SCREEN_OUTPUTS
            if name.endswith(".parquet") and name != "onsets.parquet" and (run / name).exists()}


def mtimes(run, kind):
    return {p.name: p.stat().st_mtime_ns for p in (run / "records" / kind).iterdir()}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Twelve checkpoints, built once; each test copies what it needs."""
    return make_series(tmp_path_factory.mktemp("pool") / "series")


def copy_series(pool, dest, steps=STEPS):
    dest.mkdir(parents=True)
    for f in pool.iterdir():
        if f.is_file() and f.name != "series.json":
            shutil.copy(f, dest / f.name)
    for s in steps:
        shutil.copytree(pool / f"step{s}", dest / f"step{s}")
    write_series_json(dest, steps)
    return dest


def test_deleted_inserted_and_changed_checkpoints_resume_as_a_fresh_screen(pool, tmp_path):
    series = copy_series(pool, tmp_path / "series")
    run = tmp_path / "run"
    screen(series, run, settings=SETTINGS, progress=False)
    full = tmp_path / "full"
    shutil.copytree(run, full)  # the fresh screen of all 12 checkpoints
    fp12 = pd.read_parquet(full / "fingerprints.parquet")

    # 1. delete step 50 (folder and series.json entry): the resumed run equals a fresh screen of the 11
    shutil.move(series / "step50", tmp_path / "step50")
    write_series_json(series, [s for s in STEPS if s != 50])
    sketch_before, probes_before = mtimes(run, "sketch"), mtimes(run, "probes")
    screen(series, run, settings=SETTINGS, progress=False)
    fresh11 = tmp_path / "fresh11"
    screen(series, fresh11, settings=SETTINGS, progress=False)
    assert_same_tables(run, fresh11)
    assert all(50 not in steps for steps in table_steps(run).values())
    manifest = json.loads((run / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == manifest["tables"]["steps"] == [s for s in STEPS if s != 50]
    assert manifest["tables"]["status"] == "current"
    # a sketch record holds the update's increment (θ_{t-1} -> θ_t): only the step after the deleted one
    # (its update now spans 40 -> 60) was recomputed; every other record was kept
    sketch_after = mtimes(run, "sketch")
    assert "step_000000050.safetensors" not in sketch_after
    for s in STEPS:
        name = f"step_{s:09d}.safetensors"
        if s == 60:
            assert sketch_after[name] != sketch_before[name], s
        elif s != 50:
            assert sketch_after[name] == sketch_before[name], s
    assert mtimes(run, "probes")["step_000000000.parquet"] == probes_before["step_000000000.parquet"]

    # 2. insert it again: the step after it must get its update from step 50 again (it had 60 - 40)
    fp11 = pd.read_parquet(run / "fingerprints.parquet")
    shutil.move(tmp_path / "step50", series / "step50")
    write_series_json(series, STEPS)
    screen(series, run, settings=SETTINGS, progress=False)
    assert_same_tables(run, full)
    norm = {name: df[(df.metric == "update_norm") & (df.step == 60)]["value"].to_numpy()
            for name, df in (("11", fp11), ("12", fp12))}
    assert not (abs(norm["11"] - norm["12"]) < 1e-3 * norm["12"]).any()  # the stale value was far off

    # 3. change one checkpoint's content in place (same shapes, other values): recomputed from there on
    from headscreen.testing import build_tiny_model

    build_tiny_model("gpt_neox", n_ctx=64, seed=5).save_pretrained(series / "step70")
    screen(series, run, settings=SETTINGS, progress=False)
    fresh = tmp_path / "fresh_changed"
    screen(series, fresh, settings=SETTINGS, progress=False)
    assert_same_tables(run, fresh)
    assert outputs(run)["fingerprints.parquet"] != outputs(full)["fingerprints.parquet"]


def test_a_different_series_is_refused_and_force_recomputes_it(pool, tmp_path):
    from pipelines.cli import main as cli

    steps = STEPS[:6]
    series = copy_series(pool, tmp_path / "a", steps)
    run = tmp_path / "run"
    screen(series, run, settings=SETTINGS, progress=False)
    before = outputs(run)
    other = make_series(tmp_path / "b", steps, seed=3)
    with pytest.raises(SeriesChanged, match=r"not 'b'.*root differ.*another --out.*--force"):
        screen(other, run, settings=SETTINGS, progress=False)
    # the same root, every checkpoint replaced (another training run saved over it): no overlap
    shutil.rmtree(series)
    shutil.copytree(other, series)
    write_series_json(series, steps)
    with pytest.raises(SeriesChanged, match=r"none in common.*changed.*step\(s\) \[0, 10, 20, 30, 40, 50\]"):
        screen(series, run, settings=SETTINGS, progress=False)
    assert outputs(run) == before and json.loads((run / "manifest.json").read_text())["tables"]["status"] == "current"
    # on the command line: one line, exit code 2
    assert cli(["--threads", "1", "screen", str(other), "--out", str(run), "--no-progress"]) == 2
    screen(series, run, settings=SETTINGS, progress=False, force=True)
    fresh = tmp_path / "fresh"
    screen(series, fresh, settings=SETTINGS, progress=False)
    assert_same_tables(run, fresh)


def test_a_failed_force_rerun_leaves_stale_tables_that_report_and_validate_refuse(pool, tmp_path, capsys):
    from pipelines.cli import main as cli
    from pipelines.validate import validate

    steps = STEPS[:6]
    series = copy_series(pool, tmp_path / "s", steps)
    run = tmp_path / "run"
    screen(series, run, settings=SETTINGS, progress=False)
    # a finished validation beside the tables
    pd.DataFrame({"step": [50], "condition": ["circuit"], "metric": ["top1"], "value": [0.5]}).to_parquet(
        run / "validation.parquet")
    pd.DataFrame({"step": [50], "score": [0.5]}).to_parquet(run / "patching.parquet")
    (run / "validation.json").write_text(json.dumps({"step": 50}))
    screen(series, run, settings=SETTINGS, progress=False)  # nothing changes: the validation stays
    assert all((run / name).exists() for name in VALIDATION_OUTPUTS)
    load_run(run)

    weights = series / "step30" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated: the rerun stops at step 30
    with pytest.raises(Exception, match="step 30|step30"):
        screen(series, run, settings=SETTINGS, progress=False, force=True)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["tables"]["status"] == "stale"
    assert (run / "fingerprints.parquet").exists()  # the old tables are still there, but marked stale
    assert not any((run / name).exists() for name in VALIDATION_OUTPUTS)
    with pytest.raises(StaleRunError, match="stale.*Rerun the screen"):
        load_run(run)
    with pytest.raises(StaleTables, match="rerun the screen"):
        validate(run, circuit=[[1, 0]], n_null=3, ablations=("zero",), progress=False)
    capsys.readouterr()
    assert cli(["report", str(run)]) == 2
    assert "stale" in capsys.readouterr().err

    weights.write_bytes(good)
    screen(series, run, settings=SETTINGS, progress=False)
    assert json.loads((run / "manifest.json").read_text())["tables"]["status"] == "current"
    fresh = tmp_path / "fresh"
    screen(series, fresh, settings=SETTINGS, progress=False)
    assert_same_tables(run, fresh)
    load_run(run)


def test_fewer_checkpoints_remove_the_tables_they_no_longer_support(pool, tmp_path):
    series = copy_series(pool, tmp_path / "s", STEPS[:6])
    run = tmp_path / "run"
    screen(series, run, settings=SETTINGS, progress=False)
    assert (run / "fingerprints.parquet").exists()
    shutil.rmtree(series / "step50")
    shutil.rmtree(series / "step40")
    write_series_json(series, STEPS[:4])  # 4 checkpoints < W + 1 = 5
    screen(series, run, settings=SETTINGS, progress=False)
    assert not (run / "fingerprints.parquet").exists() and not (run / "onsets.parquet").exists()
    assert all(steps <= set(STEPS[:4]) for steps in table_steps(run).values())
    assert json.loads((run / "manifest.json").read_text())["fingerprints"]["status"] == "skipped"


def test_byte_identical_tables_from_the_same_config_and_seeds(pool, tmp_path):
    series = copy_series(pool, tmp_path / "s", STEPS[:6])
    for out in ("a", "b"):
        screen(series, tmp_path / out, settings=SETTINGS, progress=False)
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert len(a) == len(SCREEN_OUTPUTS) and a == b


def ident(step, fp="a"):
    return {"step": step, "name": f"step{step}", "path": f"/s/step{step}", "fingerprint": fp}


def sketch_metas(ids):
    return {c["step"]: {"identity": c, "previous": ids[i - 1] if i else None} for i, c in enumerate(ids)}


@pytest.mark.parametrize("case", ["same", "deleted", "inserted", "changed", "appended", "no identities"])
def test_plan_records_keeps_exactly_the_unchanged_prefix(case):
    from headscreen.rundir.binding import plan_records

    old = [ident(s) for s in (0, 10, 20, 30, 40)]
    new, meta = list(old), sketch_metas(old)
    if case == "deleted":
        new = [c for c in old if c["step"] != 20]
    elif case == "inserted":
        new = sorted(old + [ident(15)], key=lambda c: c["step"])
    elif case == "changed":
        new = [ident(s, "b" if s == 20 else "a") for s in (0, 10, 20, 30, 40)]
    elif case == "appended":
        new = old + [ident(50)]
    elif case == "no identities":
        meta = {s: {"tokens": None} for s in meta}
    plan = plan_records(new, meta, {s: {"identity": m.get("identity")} for s, m in meta.items()})
    first, stale_sketch, stale_probes = {
        "same": (None, [], []), "deleted": (30, [20, 30, 40], [20]), "inserted": (15, [20, 30, 40], []),
        "changed": (20, [20, 30, 40], [20]), "appended": (50, [], []),
        "no identities": (0, [0, 10, 20, 30, 40], [0, 10, 20, 30, 40])}[case]
    assert (plan.first_stale, plan.stale_sketches, plan.stale_probes) == (first, stale_sketch, stale_probes)


def test_validate_refuses_a_checkpoint_changed_since_the_screen(pool, tmp_path):
    from headscreen.testing import build_tiny_model
    from pipelines.validate import validate

    series = copy_series(pool, tmp_path / "s", STEPS[:6])
    run = tmp_path / "run"
    screen(series, run, settings=SETTINGS, progress=False)
    build_tiny_model("gpt_neox", n_ctx=64, seed=5).save_pretrained(series / "step50")
    with pytest.raises(SeriesChanged, match=r"step 50 changed since the screen.*rerun the screen"):
        validate(run, circuit=[[1, 0]], n_null=3, ablations=("zero",), progress=False)
    assert not (run / "validation.json").exists()
