"""Config sections validated at load, a config hash over result settings only, and `validate` as a locked
writer that reads its own settings fresh (issue 13, items 8, 9 and 10)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

from headscreen.config import ConfigError, load_config
from headscreen.report.load import StaleRunError, load_run
from headscreen.rundir.store import VALIDATION_OUTPUTS, ConfigChanged, RunLocked, RunStore
from headscreen.testing import save_tiny_series
from pipelines.screen import ScreenSettings, screen
from pipelines.validate import validate

torch.set_num_threads(1)

STEPS = [0, 10, 20, 30, 40, 50]
CONFIG = {
    "name": "tiny-local",
    "description": "six tiny GPT-NeoX checkpoints",
    "source": {"kind": "local", "local_path": "SERIES"},
    "probes": {"seq_len": 48, "token_range": [4, 500], "n_retrieval": 16, "pair_range": [4, 20], "n_repeated": 8,
               "repeated_span": 16, "micro_batch": 16},
    "spectral": {"window": 4},
    "validation": {"ablations": ["zero"], "n_null": 3},
}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return save_tiny_series(tmp_path_factory.mktemp("cfg") / "series", "gpt_neox", STEPS, n_ctx=64)


def write_config(path, series, **changes):
    data = json.loads(json.dumps(CONFIG))
    data["source"]["local_path"] = str(series)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return path


def run_screen(series, out, cfg_path, **kw):
    cfg = load_config(cfg_path)
    settings = dataclasses.replace(ScreenSettings.from_config(cfg), probe_every=3)
    return screen(series, out, config=cfg, settings=settings, progress=False, **kw)


@pytest.mark.parametrize("section, field", [("validation", "n_nul"), ("onsets", "margn"), ("probes", "n_retreival"),
                                            ("thresholds", "class_minimum"), ("spectral", "windw"),
                                            ("train", "lr_max"), ("report", "style")])
def test_a_typo_in_any_section_fails_when_the_config_loads(tmp_path, series, capsys, section, field):
    from pipelines.cli import main as cli

    bad = write_config(tmp_path / "bad.yaml", series, **{f"{section}__{field}": 1})
    with pytest.raises(ConfigError, match=rf"{section}.*{field}"):
        load_config(bad)
    # at screen time, before anything is written: one line naming the field, exit code 2
    assert cli(["screen", str(series), "--out", str(tmp_path / "run"), "--config", str(bad), "--no-progress"]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_config_hash_covers_only_settings_that_change_results(tmp_path, series):
    cfg = write_config(tmp_path / "c.yaml", series)
    run = tmp_path / "run"
    run_screen(series, run, cfg)
    records = {p: p.stat().st_mtime_ns for p in (run / "records").rglob("*.*")}
    # descriptions, validation:, micro_batch and cache_bytes change no result: resumed, nothing recomputed
    write_config(cfg, series, description="edited", validation__n_null=5, probes__micro_batch=4,
                 spectral__cache_bytes=0)
    run_screen(series, run, cfg)
    assert {p: p.stat().st_mtime_ns for p in (run / "records").rglob("*.*")} == records
    # ... and indeed none: a fresh screen with the other micro_batch / cache_bytes gives the same bytes
    run_screen(series, tmp_path / "fresh", cfg)
    for t in ("selectivity", "head_scores", "participation", "copying", "fingerprints"):
        assert (run / f"{t}.parquet").read_bytes() == (tmp_path / "fresh" / f"{t}.parquet").read_bytes(), t
    # a setting that changes results is refused, naming the fields and their values
    write_config(cfg, series, spectral__window=5)
    with pytest.raises(ConfigChanged, match=r"spectral\.window: 4 -> 5.*--force"):
        run_screen(series, run, cfg)


def test_validate_locks_reads_its_section_fresh_and_is_cleared_by_a_rescreen(tmp_path, series):
    cfg = write_config(tmp_path / "c.yaml", series)
    run = tmp_path / "run"
    run_screen(series, run, cfg)
    heads = [[1, 0], [1, 2]]  # random models have no screened circuit: give one
    # another writer holds the run (a screen, or another validate): refused, naming it
    with RunStore.locked(run, "screen"), pytest.raises(RunLocked, match=r"in use by process \d+ \(screen\)"):
        validate(run, circuit=heads, progress=False)
    assert not any((run / n).exists() for n in VALIDATION_OUTPUTS)
    # validation: is read from the YAML at validate time; editing it needs no re-screen
    write_config(cfg, series, validation__n_null=4)
    run_screen(series, run, cfg)
    path = validate(run, circuit=heads, progress=False)
    summary = json.loads(path.read_text())
    assert summary["settings"] == {"ablations": ["zero"], "n_null": 4, "seed": 123, "validation_section": str(cfg)}
    assert summary["ablations"]["zero"]["n_null_requested"] == 4
    assert summary["tables_id"] == json.loads((run / "manifest.json").read_text())["tables"]["id"]
    assert load_run(run).validation["settings"]["n_null"] == 4
    # a typo in it now fails validate, naming the field
    write_config(cfg, series, validation__n_nul=4)
    with pytest.raises(ConfigError, match="n_nul"):
        validate(run, circuit=heads, progress=False)
    write_config(cfg, series, validation__n_null=4)
    # a validation.json of other tables than the current ones is refused by the report
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "tables": {**manifest["tables"], "id": "other"}}))
    with pytest.raises(StaleRunError, match="validate"):
        load_run(run)
    (run / "manifest.json").write_text(json.dumps(manifest))
    # a re-screen that changes records removes the validation it invalidates
    copy = tmp_path / "series"
    shutil.copytree(series, copy)
    shutil.rmtree(copy / "step50")
    run2 = tmp_path / "run2"
    run_screen(copy, run2, cfg)
    validate(run2, circuit=heads, progress=False)
    assert all((run2 / n).exists() for n in VALIDATION_OUTPUTS)
    save_tiny_series(tmp_path / "more", "gpt_neox", [60], n_ctx=64, seed=9)
    shutil.move(tmp_path / "more" / "step60", copy / "step60")
    run_screen(copy, run2, cfg)
    assert not any((run2 / n).exists() for n in VALIDATION_OUTPUTS)
    assert load_run(run2).validation is None
