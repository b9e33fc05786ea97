"""SIGKILL at seeded points of a screen and of a validate, then a rerun: byte-identical tables, nothing twice.

The kill is injected through the store's fault hook (HEADSCREEN_KILL_AT="<write|renamed>:<n>": the n-th
atomic write, just before or just after its rename), in a `python -m pipelines.cli` subprocess. Every
file of a run goes through that one write path, so these points cover records, manifest, tables and
validation outputs. Slow: each killed run is a fresh interpreter (torch + transformers imports).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import yaml

import headscreen.rundir.atomic as atomic_module
from headscreen.report.load import StaleRunError, load_run
from headscreen.rundir.store import NotARun, RunStore
from headscreen.testing import save_tiny_series
from pipelines.cli import main as cli
from pipelines.screen import SCREEN_OUTPUTS

ROOT = Path(__file__).resolve().parent.parent
STEPS = [10 * i for i in range(12)]
VALIDATE_ARGS = ["--heads", "L1H0,L1H2", "--n-null", "3", "--ablation", "zero"]
KEYS = {"selectivity": ["step", "layer", "head", "probe", "class"], "participation": ["step", "layer", "head", "probe"],
        "head_scores": ["step", "layer", "head", "probe", "metric"], "copying": ["step"],
        "fingerprints": ["step", "layer", "head", "metric"], "classes": ["step", "layer", "head", "probe"]}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 12-checkpoint series, its config, and an uninterrupted reference screen (writes counted)."""
    base = tmp_path_factory.mktemp("faults")
    series = save_tiny_series(base / "series", "gpt_neox", STEPS, n_ctx=64)
    cfg = base / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tiny-faults", "source": {"kind": "local", "local_path": str(series)},
        "probes": {"seq_len": 48, "token_range": [4, 500], "n_retrieval": 16, "pair_range": [4, 20],
                   "n_repeated": 8, "repeated_span": 16, "micro_batch": 16},
        "spectral": {"window": 4}}))
    ref = base / "ref"
    writes = counted(lambda: cli(screen_args(series, cfg, ref)))
    return series, cfg, ref, writes


def screen_args(series, cfg, out, *extra):
    return ["--threads", "1", "screen", str(series), "--out", str(out), "--config", str(cfg), "--probe-every", "4",
            "--no-progress", *extra]


def counted(fn) -> int:
    """Run `fn` in this process and return how many atomic writes it made (the hook's counter)."""
    os.environ["HEADSCREEN_KILL_AT"] = "write:0"  # counts, never fires
    atomic_module._KILL_COUNT = 0
    try:
        assert fn() == 0
    finally:
        del os.environ["HEADSCREEN_KILL_AT"]
    return atomic_module._KILL_COUNT


def killed(args, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEADSCREEN_KILL_AT": point, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == -9, (point, r.returncode, r.stderr[-2000:])
    return r


def points(rng: random.Random, total: int, n: int) -> list[str]:
    """n seeded kill points, one in each n-th of the writes (so a screen is hit while it writes its
    first manifest and records, its later records, and its summary)."""
    bounds = [1 + total * i // n for i in range(n + 1)]
    return [f"{rng.choice(('write', 'renamed'))}:{rng.randint(lo, max(lo, hi - 1))}"
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def assert_complete_and_equal(run: Path, ref: Path) -> None:
    for name in SCREEN_OUTPUTS:
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    for kind, ext in (("sketch", "safetensors"), ("probes", "parquet")):
        files = sorted(p.name for p in (run / "records" / kind).iterdir())
        assert files == sorted(p.name for p in (ref / "records" / kind).iterdir())  # one per step, no temporaries
        assert all(f.endswith(ext) for f in files)
    for table, keys in KEYS.items():  # nothing recorded twice
        assert not pd.read_parquet(run / f"{table}.parquet").duplicated(keys).any(), table
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["tables"]["status"] == "current" and manifest["tables"]["steps"] == STEPS


def assert_interrupted_state_is_safe(run: Path, point: str, last: str, ref: Path | None = None) -> None:
    """Between the kill and the rerun: no half-written file under a final name, and the report either
    refuses the run (no manifest / stale tables) or its tables are complete: killed at the very last
    rename or, for a screen (`ref` given), after the tables were published, while the attention patterns
    of the report's viewer were written; then every table equals the uninterrupted screen's."""
    if not (run / "manifest.json").exists():
        with pytest.raises(NotARun):
            RunStore.existing(run)
        return
    status = json.loads((run / "manifest.json").read_text()).get("tables", {}).get("status")
    if point == last:
        assert status == "current"
        load_run(run)
    elif status == "current" and ref is not None:
        for name in SCREEN_OUTPUTS:
            assert (run / name).read_bytes() == (ref / name).read_bytes(), (point, name)
        load_run(run)
    else:
        assert status == "stale", point
        with pytest.raises(StaleRunError):
            load_run(run)


def test_sigkill_during_a_screen_then_rerun_gives_the_same_bytes(setup, tmp_path):
    series, cfg, ref, writes = setup
    rng = random.Random(13)
    last = f"renamed:{writes}"
    for point in points(rng, writes, 3):
        run = tmp_path / point.replace(":", "_")
        killed(screen_args(series, cfg, run), point)
        assert_interrupted_state_is_safe(run, point, last, ref)
        assert cli(screen_args(series, cfg, run)) == 0
        assert_complete_and_equal(run, ref)
    # a --force rerun of a finished run, killed: the old tables are never presented as current
    run = tmp_path / "forced"
    shutil.copytree(ref, run)
    point = f"renamed:{rng.randint(1, writes - 1)}"
    killed(screen_args(series, cfg, run, "--force"), point)
    assert_interrupted_state_is_safe(run, point, last, ref)
    assert cli(screen_args(series, cfg, run)) == 0
    assert_complete_and_equal(run, ref)


def test_sigkill_during_a_validate_then_rerun_gives_the_same_bytes(setup, tmp_path):
    series, cfg, ref, _ = setup
    done = tmp_path / "validated"
    shutil.copytree(ref, done)
    writes = counted(lambda: cli(["--threads", "1", "validate", str(done), *VALIDATE_ARGS]))
    # every new file is staged aside (headscreen/rundir/staged.py), then COMMIT.json marks them complete and they
    # are renamed into place (validation.json after its tables); the pre-identification tables are
    # staged with them, computed with the validated circuit
    outputs = ("validation.parquet", "patching.parquet", "validation.json", "preid.parquet", "preid.json")
    assert writes == len(outputs) + 1
    for point in points(random.Random(17), writes, 3) + [f"renamed:{writes}"]:
        run = tmp_path / point.replace(":", "_")
        shutil.copytree(ref, run)
        killed(["--threads", "1", "validate", str(run), *VALIDATE_ARGS], point)
        if point == f"renamed:{writes}":  # committed, not published: refused until a writer publishes it
            with pytest.raises(StaleRunError, match="interrupted while publishing"):
                load_run(run)
        else:  # never a validation.json without its tables, nor tables shown without it: nothing changed
            loaded = load_run(run)
            assert loaded.validation is None and loaded.validation_long is None and loaded.patching is None
            for name in SCREEN_OUTPUTS:
                assert (run / name).read_bytes() == (ref / name).read_bytes(), (point, name)
        assert cli(["--threads", "1", "validate", str(run), *VALIDATE_ARGS]) == 0
        for name in outputs:
            assert (run / name).read_bytes() == (done / name).read_bytes(), (point, name)
        assert not (run / ".staged").exists()
