"""Run store: atomic records, resume bookkeeping, lock, config guard."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pandas as pd
import pytest
import torch

from headscreen.rundir.store import ConfigChanged, NotARun, RunLocked, RunStore, atomic_write


def _manifest(cfg=None):
    return {"config": cfg or {"name": "t", "window": 10}, "seeds": {"probe": 42}}


def test_tensor_and_frame_records_roundtrip(tmp_path):
    with RunStore.open(tmp_path / "run", _manifest()) as store:
        t = {"sketch": torch.randn(2, 3, 5), "norm": torch.rand(2, 3)}
        store.write_tensors("sketch", 40, t, meta={"tokens": 123})
        got, meta = store.read_tensors("sketch", 40)
        assert torch.equal(got["sketch"], t["sketch"]) and meta == {"tokens": 123}
        a = pd.DataFrame({"layer": [0, 1], "value": [1.5, float("nan")]})
        b = pd.DataFrame({"loss": [2.0]})
        store.write_frames("probes", 40, {"a": a, "b": b})
        store.write_frames("probes", 80, {"a": a.assign(value=[3.0, 4.0]), "b": b})
        frames = store.read_frames("probes")
        assert list(frames["a"].columns) == ["layer", "value"]  # an all-NaN column survives; no 'table' column
        assert list(frames["b"].columns) == ["loss"]
        assert len(frames["a"]) == 4 and frames["a"]["value"].isna().sum() == 1
        assert frames["a"]["layer"].dtype == "int64"  # stacked with b (no layer), it came back as float before
        assert frames["a"]["layer"].tolist() == [0, 1, 0, 1]
        assert store.recorded_steps("probes") == [40, 80]
        assert store.has_record("sketch", 40) and not store.has_record("sketch", 80)


def _write_then_die(path):
    """Child process: start an atomic write, then get killed halfway."""
    def slow(p):
        with open(p, "wb") as f:
            f.write(b"x" * 1000)
            f.flush()
            time.sleep(30)

    atomic_write(path, slow)


def test_killed_writer_never_leaves_a_complete_looking_record(tmp_path):
    store = RunStore.open(tmp_path / "run", _manifest())
    target = store.record_path("sketch", 7, "safetensors")
    proc = mp.get_context("fork").Process(target=_write_then_die, args=(target,))
    proc.start()
    deadline = time.time() + 10
    while time.time() < deadline and not (target.parent.exists() and any(target.parent.glob(".*tmp*"))):
        time.sleep(0.05)
    assert any(target.parent.glob(".*tmp*")), "the child never started writing"
    os.kill(proc.pid, 9)
    proc.join()
    assert not target.exists()
    assert store.recorded_steps("sketch") == []
    store.release()
    # reopening cleans the orphaned temporary
    RunStore.open(tmp_path / "run", _manifest()).release()
    assert not any(target.parent.glob(".*tmp*"))


def _hold_lock(root, ready, stop):
    s = RunStore.open(root, _manifest())
    ready.set()
    stop.wait(20)
    s.release()


def test_second_process_gets_clear_error(tmp_path):
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path / "run", ready, stop))
    p.start()
    assert ready.wait(20)
    with pytest.raises(RunLocked, match=rf"in use by process {p.pid}"):
        RunStore.open(tmp_path / "run", _manifest())
    stop.set()
    p.join()
    RunStore.open(tmp_path / "run", _manifest()).release()  # free again


def test_changed_config_needs_force_and_force_clears_records(tmp_path):
    with RunStore.open(tmp_path / "run", _manifest()) as s:
        s.write_tensors("sketch", 1, {"x": torch.zeros(1)})
    with pytest.raises(ConfigChanged, match="--force"):
        RunStore.open(tmp_path / "run", _manifest({"name": "t", "window": 5}))
    with RunStore.open(tmp_path / "run", _manifest()) as s:  # same config: records kept for resume
        assert s.recorded_steps("sketch") == [1]
    with RunStore.open(tmp_path / "run", _manifest({"name": "t", "window": 5}), force=True) as s:
        assert s.recorded_steps("sketch") == []
        assert s.manifest()["config"]["window"] == 5


def test_existing_requires_manifest(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(NotARun, match="not a headscreen run"):
        RunStore.existing(tmp_path / "x")


def test_fsync_tree_syncs_every_file_and_folder_and_dir_errors_surface(tmp_path, monkeypatch):
    import errno
    import os

    from headscreen.rundir.atomic import fsync_dir, fsync_tree

    root = tmp_path / "ckpt"
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("config.json", "a/model.safetensors", "a/b/extra.bin"):
        (root / rel).write_text(rel)
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    fsync_tree(root)
    want = {str(root / r) for r in ("config.json", "a/model.safetensors", "a/b/extra.bin", ".", "a", "a/b")}
    assert {os.path.normpath(p) for p in synced} == {os.path.normpath(p) for p in want}

    def eio(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError, match="I/O error"):
        fsync_dir(root)

    def unsupported(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", unsupported)
    fsync_dir(root)  # a filesystem that cannot fsync folders: nothing to do, no error


def test_reopen_fills_fields_added_later_from_declared_defaults(tmp_path):
    from headscreen.rundir.store import ConfigChanged, RunStore

    run = tmp_path / "run"
    with RunStore.open(run, {"kind": "t", "config": {"lr": 1e-3, "model": {"d": 8}}}):
        pass
    newer = {"kind": "t", "config": {"lr": 1e-3, "model": {"d": 8, "init": None}, "intervention": {"kind": "none"}}}
    defaults = {"lr": 3e-3, "model": {"d": 128, "init": None}, "intervention": {"kind": "none"}}
    with pytest.raises(ConfigChanged, match="intervention.kind"):  # no defaults declared: a different config
        RunStore.open(run, newer)
    with RunStore.open(run, newer, defaults=defaults):  # the absent fields meant their defaults
        pass
    # a field the old run did set is never overridden by a default, and a non-default new value differs
    changed = {"kind": "t", "config": {"lr": 1e-3, "model": {"d": 8, "init": None}, "intervention": {"kind": "amplify"}}}
    run2 = tmp_path / "run2"
    with RunStore.open(run2, {"kind": "t", "config": {"lr": 1e-3, "model": {"d": 8}}}):
        pass
    with pytest.raises(ConfigChanged, match="intervention.kind"):
        RunStore.open(run2, changed, defaults=defaults)
    with pytest.raises(ConfigChanged, match="lr"):
        RunStore.open(run2, {"kind": "t", "config": {"lr": 3e-3, "model": {"d": 8}}}, defaults=defaults)
