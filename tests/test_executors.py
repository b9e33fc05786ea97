"""One executor interface: screens split into chunks and run in-process, in a process pool or on Ray give
the same records and tables bit for bit; a worker that dies mid-screen is reported and the rerun resumes."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from headscreen.compute.executors import TaskFailed, chunks, make_executor
from headscreen.probes.suite import ProbeSuite
from headscreen.series import LocalSeries
from headscreen.spectral import HeadSketcher, SpectralConfig
from headscreen.testing import DyingSeries, save_tiny_series
from pipelines.screen import SCREEN_OUTPUTS, ScreenSettings, screen

torch.set_num_threads(1)

PROBES = ProbeSuite(seq_len=32, token_range=(4, 500), n_retrieval=8, pair_range=(4, 12), n_repeated=4,
                    repeated_span=8, micro_batch=8)
SETTINGS = ScreenSettings(spectral=SpectralConfig(window=4), probes=PROBES, probe_every=3)
STEPS = [0, 1, 2, 4, 8, 16, 32, 48, 64]
HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="module")
def series_root(tmp_path_factory):
    return save_tiny_series(tmp_path_factory.mktemp("ex") / "neox", "gpt_neox", STEPS, n_ctx=64)


@pytest.fixture(scope="module")
def reference(series_root, tmp_path_factory):
    """The in-process screen, one chunk: the run every other split and executor must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "run"
    screen(series_root, out, settings=SETTINGS, progress=False)
    return out


def _outputs(run) -> dict[str, bytes]:
    """Every table (bytes) and every record's tensors."""
    from safetensors.torch import load_file

    files = {name: (run / name).read_bytes() for name in SCREEN_OUTPUTS
             if (run / name).exists() and not name.startswith("preid")}
    for rec in sorted((run / "records" / "sketch").glob("*.safetensors")):
        files[rec.name] = {k: v.numpy().tobytes() for k, v in load_file(rec).items()}
    return files


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k


def test_chunks_are_contiguous_and_cover():
    assert [list(r) for r in chunks(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(r) for r in chunks(2, 5)] == [[0], [1]]
    assert chunks(0, 3) == []


def test_records_sum_to_the_running_sketch(series_root, reference):
    """Per-update increment records summed in series order give HeadSketcher's running sums bit for bit."""
    from safetensors.torch import load_file

    from pipelines.screen_chunks import sketches_from_records

    sk = HeadSketcher(SETTINGS.spectral)
    series = LocalSeries(series_root)
    for ckpt in series.checkpoints:
        sk.update(series.head_weights(ckpt, dtype=None), ckpt.step)
    recs = [load_file(reference / "records" / "sketch" / f"step_{s:09d}.safetensors") for s in STEPS]
    assert "sketch" in recs[0] and all("increment" in r for r in recs[1:])
    assert torch.equal(sketches_from_records(recs), sk.sketches)


@pytest.mark.parametrize("n_chunks", [2, 3])
def test_split_does_not_change_results(series_root, reference, tmp_path, n_chunks):
    out = tmp_path / "run"
    screen(series_root, out, settings=SETTINGS, progress=False, chunks=n_chunks)
    _same(_outputs(out), _outputs(reference))


def test_process_pool_matches_in_process(series_root, reference, tmp_path):
    out = tmp_path / "run"
    with make_executor("process", workers=2) as ex:
        screen(series_root, out, settings=SETTINGS, progress=False, executor=ex, chunks=3)
    _same(_outputs(out), _outputs(reference))
    # resume after losing records in the middle: only those are recomputed, tables unchanged
    for s in (8, 16):
        (out / "records" / "sketch" / f"step_{s:09d}.safetensors").unlink()
    keep = (out / "records" / "sketch" / "step_000000048.safetensors").stat().st_mtime_ns
    with make_executor("process", workers=2) as ex:
        screen(series_root, out, settings=SETTINGS, progress=False, executor=ex)
    assert (out / "records" / "sketch" / "step_000000048.safetensors").stat().st_mtime_ns == keep
    _same(_outputs(out), _outputs(reference))


def test_task_errors_come_back_as_failures():
    ex = make_executor("local")
    got = dict(ex.run(int, [("3",), ("x",)]))
    assert got[0] == 3 and isinstance(got[1], TaskFailed) and isinstance(got[1].error, ValueError)
    with pytest.raises(ValueError, match="--executor must be one of"):
        make_executor("dask")
    with pytest.raises(ValueError, match="--address is for --executor ray only"):
        make_executor("process", address="auto")


@pytest.fixture(scope="module")
def ray_cluster():
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'headscreen[ray]'); the Ray executor tests need it")
    ex = make_executor("ray", workers=2)  # a real local cluster with 2 CPUs, started here
    yield ex
    ex.close()


@pytest.mark.slow
def test_ray_matches_in_process_and_survives_a_killed_worker(series_root, reference, ray_cluster, tmp_path):
    out = tmp_path / "run"
    screen(series_root, out, settings=SETTINGS, progress=False, executor=ray_cluster)
    _same(_outputs(out), _outputs(reference))

    # SIGKILL of the worker reading step 16 (the second of 2 chunks): reported, earlier records kept
    marker = tmp_path / "die"
    marker.write_text("")
    dying = DyingSeries(series_root, die_at=16, marker=marker)
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="a worker died while screening steps 16..64"):
        screen(dying, killed, settings=SETTINGS, progress=False, executor=ray_cluster)
    assert not marker.exists()
    first = {p.name: p.stat().st_mtime_ns for p in (killed / "records" / "sketch").glob("*.safetensors")}
    assert sorted(first) == [f"step_{s:09d}.safetensors" for s in (0, 1, 2, 4, 8)]
    assert json.loads((killed / "manifest.json").read_text())["tables"]["status"] == "stale"
    screen(dying, killed, settings=SETTINGS, progress=False, executor=ray_cluster)  # the rerun finishes
    after = {p.name: p.stat().st_mtime_ns for p in (killed / "records" / "sketch").glob("*.safetensors")}
    assert all(after[name] == t for name, t in first.items())  # nothing recorded twice
    _same(_outputs(killed), _outputs(reference))


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A screened 2-checkpoint series of a 16-head model: room for many distinct matched-random sets."""
    root = tmp_path_factory.mktemp("wide")
    series = save_tiny_series(root / "neox", "gpt_neox", [0, 1], n_ctx=64, n_heads=16)
    out = root / "run"
    screen(series, out, settings=ScreenSettings(spectral=SpectralConfig(window=4), probes=PROBES), progress=False)
    return out


def _validate_copy(run, tmp_path, name, executor=None):
    import shutil

    from pipelines.validate import validate

    copy = tmp_path / name
    shutil.copytree(run, copy)
    validate(copy, circuit=[[0, 3], [1, 0], [1, 2]], ablations=("zero", "mean"), n_null=120, progress=False,
             executor=executor)
    summary = json.loads((copy / "validation.json").read_text())
    assert summary["device"]["device"] == "cpu"
    return summary["ablations"], (copy / "validation.parquet").read_bytes()


def test_validation_null_split_across_workers_gives_the_same_numbers(wide_run, tmp_path):
    """120 matched-random draws + the standard conditions: 3 blocks of head sets, on 2 process workers."""
    local = _validate_copy(wide_run, tmp_path, "local")
    with make_executor("process", workers=2) as ex:
        split = _validate_copy(wide_run, tmp_path, "split", ex)
    assert local[0]["zero"]["n_null"] == 120  # more than one block of 50 sets, so the split is real
    assert split == local


def test_cpu_plan_follows_the_idle_cores(monkeypatch):
    import headscreen.compute.cpu as cpu

    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    quiet, busy, unknown = cpu.plan_cpu(idle=1.95), cpu.plan_cpu(idle=1.0), cpu.plan_cpu(idle=float("nan"))
    assert (quiet.threads, quiet.wait_policy) == (2, None)  # a quiet machine keeps its 2 threads, spinning
    assert (busy.threads, busy.wait_policy) == (1, None)  # one busy competitor: 1 thread on the idle core
    assert unknown.threads == 1 and unknown.auto
    forced = cpu.plan_cpu(2, idle=0.9)  # --threads 2 next to a busy process: threads sleep, not spin
    assert (forced.threads, forced.wait_policy, forced.auto) == (2, "PASSIVE", False)
    assert cpu.plan_cpu(idle=7.0).threads == 2  # never more than the usable cores
    measured = cpu.idle_cores(0.05)
    assert 0.0 <= measured <= cpu.usable_cores() + 1e-9


DRIVER = """
import os, sys, time
from pathlib import Path
from headscreen.compute.executors import make_executor

def sleep_and_report(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)
    return 0

if __name__ == "__main__":
    with make_executor("process", workers=1) as ex:
        for _ in ex.run(sleep_and_report, [(sys.argv[1],), (sys.argv[1],)]):
            pass
"""


def test_a_killed_driver_takes_its_pool_workers_with_it(tmp_path):
    """SIGKILL of the process that owns a process pool ends its workers (Linux: PR_SET_PDEATHSIG), so no
    orphan goes on taking queued runs and holding their locks."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    (tmp_path / "driver.py").write_text(DRIVER)
    pid_file = tmp_path / "worker.pid"
    repo = Path(__file__).resolve().parent.parent
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(pid_file)], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(repo)})
    deadline = time.time() + 120
    while not pid_file.exists() and time.time() < deadline:  # the worker is running its task
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    os.kill(worker, 0)  # alive
    driver.kill()
    driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError(f"pool worker {worker} outlived its killed driver by 30 s")
