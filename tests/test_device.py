"""`--device cuda|cpu|auto` (headscreen/compute/device.py): the choice, its errors, and what the runs record.

These machines have no GPU: the CPU paths and the errors are tested here; a GPU path is only reached
through a faked `torch.cuda` where the test says so (nothing runs on it).
"""

from __future__ import annotations

import json

import pytest
import torch

from headscreen.compute.device import DeviceError, plan_device, resolve_device, training_autocast

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this test is about a machine without a GPU")


@no_gpu
def test_auto_picks_the_cpu_without_a_gpu():
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device("CPU") == "cpu"
    plan = plan_device("auto")
    assert plan.device == "cpu" and plan.autocast_dtype is None
    rec = plan.record()
    assert rec == {"device": "cpu", "requested": "auto", "device_name": "cpu", "param_dtype": "float32",
                   "compute_dtype": "float32"}
    with training_autocast(plan):  # float32 on the CPU: autocast is off
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@no_gpu
@pytest.mark.parametrize("asked", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_clear_error(asked):
    with pytest.raises(DeviceError, match="no CUDA GPU") as err:
        resolve_device(asked)
    assert "\n" not in str(err.value) and "--device cpu" in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI's one-line exit-2 path


@pytest.mark.parametrize("asked", ["tpu", "gpu", "cuda:x", "cpu:1", ""])
def test_unknown_devices_are_refused(asked):
    with pytest.raises(DeviceError, match="is not a device"):
        resolve_device(asked)


def test_a_gpu_trains_in_bf16_autocast_and_screens_in_float32(monkeypatch):
    """The plan on a (faked) bf16 GPU: autocast bf16 for training, float32 where mixed precision is off."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match=r"2 CUDA GPU\(s\)"):
        resolve_device("cuda:2")
    assert plan_device("cuda").autocast_dtype == "bfloat16"
    assert plan_device("cuda", mixed_precision=False).autocast_dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert plan_device("cuda").autocast_dtype is None  # no bf16 support: float32


@no_gpu
@pytest.mark.parametrize("argv", [
    ["train", "--out", "{tmp}/series", "--device", "cuda"],
    ["screen", "{tmp}/series", "--out", "{tmp}/run", "--device", "cuda"],
    ["validate", "{tmp}/run", "--device", "cuda"],
    ["grok", "modadd", "--out", "{tmp}/grok", "--device", "cuda"],
    ["grok", "sweep", "grok-modadd", "--out", "{tmp}/sweep", "--device", "cuda"],
])
def test_cli_cuda_without_a_gpu_exits_2_with_one_line(argv, tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["--threads", "1", *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was written


@no_gpu
def test_library_calls_refuse_cuda_before_writing(tmp_path):
    from headscreen.grokking.config import GrokConfig
    from headscreen.grokking.training.train import train_run
    from headscreen.synthetic import TrainConfig, train_series
    from pipelines.screen import screen
    from pipelines.validate import validate

    calls = [
        lambda: train_series(TrainConfig(steps=2), tmp_path / "series", progress=False, device="cuda"),
        lambda: screen(tmp_path / "no-series", tmp_path / "run", device="cuda"),
        lambda: validate(tmp_path / "run", device="cuda"),
        lambda: train_run(GrokConfig(p=7, steps=2), tmp_path / "grok", progress=False, device="cuda"),
    ]
    for call in calls:
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            call()
    assert not any(tmp_path.iterdir())


def test_training_records_device_and_precision(tmp_path):
    from headscreen.synthetic import TrainConfig, train_series

    cfg = TrainConfig(n_layers=1, d_model=16, n_heads=2, ctx=16, batch_size=2, steps=2, checkpoint_every=2,
                      log_checkpoints_until=0, eval_batch_size=2, min_span=2, threads=1)
    out = train_series(cfg, tmp_path / "s", progress=False, device="cpu")
    series = json.loads((out / "series.json").read_text())
    assert series["device"]["device"] == "cpu" and series["device"]["compute_dtype"] == "float32"
    assert [c["step"] for c in series["checkpoints"]] == [0, 2]
    # the device is not part of the recipe: the same recipe resumes (here: is complete) from "auto"
    assert train_series(cfg, out, progress=False, device="auto") == out


def test_grok_task_data_moves_to_the_device_whole():
    """Every tensor of a task's split table goes to the device (the meta device stands in for a GPU)."""
    import dataclasses

    from headscreen.grokking.tasks.modular import make_dataset
    from headscreen.grokking.training.train import _data_to

    data = make_dataset("add", 7, 0.5, seed=0)
    assert _data_to(data, "cpu") is data
    moved = _data_to(data, "meta")
    tensors = [f.name for f in dataclasses.fields(data) if isinstance(getattr(data, f.name), torch.Tensor)]
    assert {"inputs", "labels", "train_idx", "test_idx"} <= set(tensors)
    assert all(getattr(moved, t).device.type == "meta" and getattr(moved, t).shape == getattr(data, t).shape
               for t in tensors)
