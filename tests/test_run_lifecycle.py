"""Fault injection on the run lifecycle (issue 26): a bad `validate` argument loses no validation, a
directory of one kind is never written or read as another, and the faults of opening a run end in one
named line with exit code 2. Every case runs the real CLI on copies of one tiny screened and validated
run; `CASES` counts what was tried, and the last test checks that every case ended clean.
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

from headscreen.testing import save_tiny_series
from pipelines.cli import main

torch.set_num_threads(1)

STEPS = [0, 1, 2, 3]
CONFIG = """name: lifecycle-tiny
source: {{kind: local, local_path: {root}}}
probes: {{seq_len: 48, token_range: [4, 120], n_retrieval: 8, pair_range: [4, 20], n_repeated: 4,
          repeated_span: 16, micro_batch: 16}}
spectral: {{window: 3, transient_windows: 0}}
validation: {{ablations: [zero], n_null: 3}}
"""
VALIDATE = ["--heads", "L1H0,L1H2", "--n-null", "3", "--ablation", "zero"]
#: the results a finished, validated screen run holds
RESULTS = ("manifest.json", "validation.json", "validation.parquet", "patching.parquet", "preid.json",
           "preid.parquet", "circuits.json", "classes.parquet", "selectivity.parquet")
CASES: list[tuple[str, bool]] = []


def cli(capsys, *argv) -> tuple[int, str]:
    try:
        rc = main(["--threads", "1", *map(str, argv)])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def record(case: str, ok: bool) -> None:
    CASES.append((case, ok))
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
    cfg.write_text(CONFIG.format(root=series))
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
    import headscreen.staged as staged
    from headscreen.report.load import StaleRunError, load_run
    from headscreen.store import RunStore

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
