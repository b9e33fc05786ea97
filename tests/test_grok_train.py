"""Grokking tasks, models, training with trajectory capture, the trajectory as a checkpoint series."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from headscreen.config import ConfigError
from headscreen.grokking.config import GrokConfig, SweepConfig, model_spec
from headscreen.grokking.models.transformer import PRESETS, ModelSpec, build_model, load_model
from headscreen.grokking.tasks.modular import OPERATIONS, make_dataset
from headscreen.grokking.training.snapshots import RESUME, Trajectory
from headscreen.grokking.training.train import train_run
from headscreen.series import LocalSeries

torch.set_num_threads(1)

TINY = ModelSpec(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64)


def tiny_config(**kw) -> GrokConfig:
    base = dict(p=11, train_frac=0.5, model=TINY, lr=1e-2, batch_size=32, steps=30, eval_every=5,
                snapshot_every=5, defect_every=10, defect_pairs=3, defect_batch_size=16)
    return GrokConfig(**{**base, **kw})


# --- tasks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(tasks=["add"], p=2), "p = 2"),
    (dict(tasks=["add"], p=1), "p = 1"),
    (dict(tasks=["mul"], p=15), "not prime"),
    (dict(tasks=["add", "mul"], p=9), "not prime"),
    (dict(tasks=["add"], p=11, train_frac=0.0), "train_frac"),
    (dict(tasks=["add"], p=11, train_frac=1.0), "train_frac"),
    (dict(tasks=["add"], p=11, train_frac=-0.2), "train_frac"),
    (dict(tasks=["div"], p=11), "unknown"),
    (dict(tasks=["add", "add"], p=11), "twice"),
])
def test_bad_task_inputs_are_refused(kw, match):
    kw = {"train_frac": 0.3, **kw}
    with pytest.raises(ConfigError, match=match):
        make_dataset(kw["tasks"], kw["p"], kw["train_frac"], seed=0)
    with pytest.raises(ConfigError, match=match):
        GrokConfig(tasks=tuple(kw["tasks"]), p=kw["p"], train_frac=kw["train_frac"])


def test_non_field_tasks_accept_a_composite_modulus():
    d = make_dataset(["add", "sub", "sq"], 9, 0.5, seed=0)
    assert d.labels.shape == (81, 3)


def test_tables_and_split_are_correct_and_deterministic():
    p = 7
    d = make_dataset(list(OPERATIONS), p, 0.3, seed=3)
    a, b = d.inputs[:, 0], d.inputs[:, 1]
    assert (d.inputs[:, 2] == p).all() and d.vocab_size == p + 1
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(i, j) for i in range(p) for j in range(p)]
    expected = {"add": (a + b) % p, "sub": (a - b) % p, "mul": (a * b) % p, "sq": (a * a + b * b) % p,
                "x2_xy_y2": (a * a + a * b + b * b) % p, "x3_xy": (a * a * a + a * b) % p}
    for t, task in enumerate(d.tasks):
        assert torch.equal(d.labels[:, t], expected[task])
    assert len(d.train_idx) == round(0.3 * p * p)
    together = torch.cat([d.train_idx, d.test_idx]).sort().values
    assert torch.equal(together, torch.arange(p * p))  # disjoint and complete
    again = make_dataset(list(OPERATIONS), p, 0.3, seed=3)
    other = make_dataset(list(OPERATIONS), p, 0.3, seed=4)
    assert torch.equal(again.train_idx, d.train_idx)
    assert not torch.equal(other.train_idx, d.train_idx)


# --- models --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, tasks", [("curv", ["add"]), ("nanda", ["add"]), ("curv", ["add", "mul"])])
def test_fast_forward_equals_full_forward(preset, tasks):
    p = 13
    model = build_model(PRESETS[preset], p, tasks, seed=1)
    with torch.no_grad():  # move the frozen-at-zero biases too, so that the check covers them
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    x = make_dataset(tasks, p, 0.5, seed=0).inputs
    fast, full = model(x), model(x, fast=False)
    assert fast.shape == (p * p, len(tasks), p)
    assert (fast - full).abs().max().item() < 1e-5


def test_parameter_names_and_nanda_freezing():
    curv = build_model(PRESETS["curv"], 11, ["add"], seed=0)
    names = set(dict(curv.named_parameters()))
    for n in ("embed.W_E", "pos.W_pos", "blocks.1.ln1.weight", "blocks.0.attn.W_Q", "blocks.0.attn.b_O",
              "blocks.1.mlp.W_in", "blocks.1.mlp.b_out", "ln_final.weight", "unembed.W_U"):
        assert n in names
    assert curv.blocks[0].attn.W_O.shape == (4, 32, 128)
    nanda = build_model(PRESETS["nanda"], 11, ["add"], seed=0)
    assert len(nanda.blocks) == 1 and not any("ln" in n for n, _ in nanda.named_parameters())
    frozen = {n for n, q in nanda.named_parameters() if not q.requires_grad}
    assert frozen == {n for n, _ in nanda.named_parameters() if n.rsplit(".", 1)[1].startswith("b_")}
    multi = build_model(PRESETS["curv"], 11, ["add", "mul"], seed=0)
    assert {"heads.add.W_U", "heads.mul.W_U"} <= set(dict(multi.named_parameters()))


def test_config_from_dict_and_errors():
    cfg = GrokConfig.from_dict({"task": "mul", "p": 13, "model": "nanda", "betas": [0.9, 0.98]})
    assert cfg.tasks == ("mul",) and cfg.model == PRESETS["nanda"] and cfg.betas == (0.9, 0.98)
    assert model_spec({"preset": "nanda", "d_mlp": 64}).d_mlp == 64
    with pytest.raises(ConfigError, match="lrr"):
        GrokConfig.from_dict({"lrr": 0.1})
    with pytest.raises(ConfigError, match="weight_decay"):
        GrokConfig(weight_decay=-1.0)
    with pytest.raises(ConfigError, match="preset"):
        model_spec("gpt5")
    names = [n for n, _ in SweepConfig(weight_decay=(0.0, 1.0), seed=(0, 1)).grid(GrokConfig())]
    assert names == ["wd0_lr0.003_seed0", "wd0_lr0.003_seed1", "wd1_lr0.003_seed0", "wd1_lr0.003_seed1"]


# --- training ------------------------------------------------------------------------------------
def _head_vectors(model) -> torch.Tensor:  # [L, H, P] straight from the parameters, in memory
    out = []
    for block in model.blocks:
        a = block.attn
        out.append(torch.cat([t.detach().reshape(t.shape[0], -1) for t in (a.W_Q, a.W_K, a.W_V, a.W_O)], dim=1))
    return torch.stack(out).clone()


def test_short_run_lowers_loss_and_its_trajectory_is_a_series(tmp_path):
    from headscreen.spectral import HeadSketcher, SpectralConfig, rolling_grams

    history: dict[int, torch.Tensor] = {}
    cfg = tiny_config(steps=60)
    run = train_run(cfg, tmp_path / "run", progress=False,
                    on_snapshot=lambda step, m: history.__setitem__(step, _head_vectors(m)))
    curves = pd.read_parquet(run / "curves.parquet")
    assert list(curves.columns) == ["step", "task", "train_loss", "test_loss", "train_acc", "test_acc"]
    assert curves.train_loss.iloc[-1] < 0.5 * curves.train_loss.iloc[0]
    defect = pd.read_parquet(run / "defect.parquet")
    assert defect.step.tolist() == [0, 10, 20, 30, 40, 50, 60] and (defect.n_pairs == 3).all()
    assert (defect.defect_median > 0).all()
    assert not (run / RESUME).exists() and Trajectory(run).complete

    series = LocalSeries(run / "trajectory")
    assert series.steps == list(range(0, 61, 5)) == sorted(history)
    model = load_model(series.folder(series.checkpoints[-1]))
    assert torch.equal(_head_vectors(model), history[60])
    # the per-head update Grams through the series path equal those of the in-memory history
    from_series = torch.stack([series.head_weights(c).head_vectors() for c in series])
    from_memory = torch.stack([history[s] for s in series.steps])
    assert torch.equal(from_series, from_memory)
    window = 10
    g_series = rolling_grams(from_series.diff(dim=0).double(), window)
    g_memory = rolling_grams(from_memory.diff(dim=0).double(), window)
    assert g_series.shape == (3, 2, 2, window, window)
    torch.testing.assert_close(g_series, g_memory, rtol=0, atol=0)
    # HeadSketcher / fingerprint screen the trajectory unchanged
    sketcher = HeadSketcher(SpectralConfig(window=window, exact=True, transient_windows=0))
    for ckpt, hw in series.iter_head_weights():
        sketcher.update(hw, ckpt.step)
    fp = sketcher.fingerprint()
    assert set(fp["layer"]) == {0, 1} and set(fp["head"]) == {0, 1}
    assert sorted(set(fp.step)) == [50, 55, 60]


def test_resume_after_interruption_is_bit_identical(tmp_path):
    cfg = tiny_config(steps=30)
    whole = train_run(cfg, tmp_path / "whole", progress=False)
    parts = train_run(cfg, tmp_path / "parts", progress=False, stop_at=17)  # killed between snapshots 15 and 20
    assert not Trajectory(parts).complete and (parts / RESUME).exists()
    train_run(cfg, parts, progress=False)
    a, b = Trajectory(whole), Trajectory(parts)
    assert a.steps == b.steps == list(range(0, 31, 5))
    for step in a.steps:
        sa, sb = a.load(step), b.load(step)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for table in ("curves", "defect"):
        pd.testing.assert_frame_equal(pd.read_parquet(whole / f"{table}.parquet"),
                                      pd.read_parquet(parts / f"{table}.parquet"))
    assert [s["from_step"] for s in b.meta["training"]["sessions"]] == [0, 15]


def test_a_changed_config_is_refused_on_the_same_run(tmp_path):
    from headscreen.rundir.store import ConfigChanged

    train_run(tiny_config(steps=5), tmp_path / "run", progress=False)
    with pytest.raises(ConfigChanged):
        train_run(tiny_config(steps=5, lr=5e-3), tmp_path / "run", progress=False)


# --- CLI -----------------------------------------------------------------------------------------
TINY_YAML = """
name: grok-tiny
source: {kind: synthetic}
grok:
  tasks: [add]
  p: 11
  train_frac: 0.5
  model: {preset: curv, d_model: 32, n_heads: 2, d_head: 16, d_mlp: 64}
  lr: 0.01
  batch_size: 32
  steps: 10
  eval_every: 5
  snapshot_every: 5
  defect_every: 5
  defect_pairs: 2
  defect_batch_size: 16
sweep:
  weight_decay: [0.0, 1.0]
  workers: 2
"""


def _cli(*argv: str) -> int:
    from pipelines.cli import main

    return main(list(argv))


def test_grok_cli_help_and_bad_input_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _cli("grok", "--help")
    assert e.value.code == 0 and "modadd" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        _cli("grok", "modadd", "--bogus", "1", "--out", str(tmp_path / "x"))
    assert e.value.code == 2
    assert _cli("grok", "modmul", "--p", "15", "--out", str(tmp_path / "y")) == 2
    assert "not prime" in capsys.readouterr().err
    assert _cli("grok", "modadd", "--train-frac", "1.5", "--out", str(tmp_path / "z")) == 2
    assert _cli("grok", "sweep", "grok-nonexistent", "--out", str(tmp_path / "s")) == 2


def test_grok_cli_run_flags_override_the_yaml(tmp_path):
    import json

    cfg = tmp_path / "grok-tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "run"
    assert _cli("grok", "modadd", "--config", str(cfg), "--steps", "6", "--wd", "0.5", "--batch-size", "0",
                "--no-progress", "--out", str(out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "grok"
    c = manifest["config"]
    assert (c["steps"], c["weight_decay"], c["batch_size"], c["p"], c["model"]["d_model"]) == (6, 0.5, None, 11, 32)
    assert LocalSeries(out / "trajectory").steps == [0, 5, 6]
    grok = json.loads((out / "grok.json").read_text())  # analysed after training
    curves = pd.read_parquet(out / "curves.parquet")
    assert grok["final_test_acc"] == pytest.approx(curves.test_acc.iloc[-1])


@pytest.mark.slow  # two spawned worker processes import torch: ~20 s on a quiet host, a minute under load
def test_grok_sweep_runs_the_grid_in_processes_and_resumes(tmp_path):
    from pipelines.grok import sweep

    cfg = tmp_path / "grok-tiny.yaml"
    cfg.write_text(TINY_YAML)
    table = sweep(cfg, tmp_path / "sw", progress=False, analyse=False)
    assert table.run.tolist() == ["wd0_lr0.01_seed0", "wd1_lr0.01_seed0"]
    assert table.error.isna().all() and table.final_train_acc.between(0, 1).all()
    saved = pd.read_parquet(tmp_path / "sw" / "sweep.parquet")
    pd.testing.assert_frame_equal(saved, table)
    for name in table.run:
        assert Trajectory(tmp_path / "sw" / "runs" / name).complete
    before = (tmp_path / "sw" / "runs" / table.run[0] / "curves.parquet").stat().st_mtime_ns
    again = sweep(cfg, tmp_path / "sw", progress=False, analyse=False, workers=1)  # finished runs are kept
    assert (tmp_path / "sw" / "runs" / table.run[0] / "curves.parquet").stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again, table)
    # the same grid in this process (headscreen.compute.executors "local", 1 thread) trains the same runs bit for bit
    import torch

    from headscreen.compute.executors import make_executor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = sweep(cfg, tmp_path / "local", progress=False, analyse=False, executor=make_executor("local"))
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(local, table)
    for name in table.run:
        assert ((tmp_path / "local" / "runs" / name / "curves.parquet").read_bytes()
                == (tmp_path / "sw" / "runs" / name / "curves.parquet").read_bytes())


@pytest.mark.parametrize("task", ["modadd", "modsub", "modmul", "modsq", "multitask", "nanda"])
def test_every_grok_config_loads_and_keeps_its_run_under_50_mb(task):
    from pipelines.grok import load_grok_config

    _, cfg, sweep_cfg = load_grok_config(task)
    assert sweep_cfg is not None and len(sweep_cfg.grid(cfg)) >= 2
    model = build_model(cfg.model, cfg.p, cfg.tasks, seed=0)
    snapshot_bytes = 4 * sum(t.numel() for t in model.state_dict().values())
    n_snapshots = cfg.steps // cfg.snapshot_every + 1 + (cfg.steps % cfg.snapshot_every > 0)
    assert n_snapshots >= 21  # the W = 10 spectral edge gets >= 11 windows
    assert n_snapshots * snapshot_bytes < 50e6


def test_two_thread_runs_are_bit_identical_and_leave_the_global_setting(tmp_path):
    # at 2 threads the embedding-gather backward accumulates in a thread-dependent order unless torch's
    # deterministic kernels are on (headscreen.compute.runtime.deterministic_algorithms, used by train_run)
    cfg = GrokConfig.from_dict({"p": 59, "steps": 20, "eval_every": 10, "snapshot_every": 10, "defect_every": 0})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [train_run(cfg, tmp_path / f"r{i}", progress=False) for i in range(2)]
    finally:
        torch.set_num_threads(before)
    a, b = (Trajectory(r).load(20) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
