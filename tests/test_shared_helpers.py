"""The shared parameter-space helpers (headscreen.spectral.paramspace) and the one optimizer-state module
(headscreen.rundir.optimizer_state), each against an independent computation, and the optimizer state's
named fault in both trainers' resume."""

from __future__ import annotations

import json

import pytest
import torch

from headscreen.rundir.optimizer_state import load_optimizer_state, optimizer_state_step, save_optimizer_state
from headscreen.spectral.paramspace import (
    flatten,
    flatten_rows,
    random_orthonormal,
    random_orthonormal_bases,
    split_flat,
    top_right_singular,
)


# --- paramspace ---------------------------------------------------------------------------------------------
def test_top_right_singular_spans_the_top_eigenvectors_of_the_gram():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 40, generator=g, dtype=torch.float64) * torch.tensor([9.0, 5, 3, 1, 0.5, 0.1])[:, None]
    v = top_right_singular(rows.float(), 3)
    assert v.dtype == torch.float64 and v.shape == (3, 40)
    assert torch.allclose(v @ v.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    evals, evecs = torch.linalg.eigh(rows.float().double().T @ rows.float().double())  # ascending
    for j in range(3):  # each singular vector is the j-th largest eigenvector of RᵀR, up to sign
        e = evecs[:, -1 - j]
        assert abs(float(v[j] @ e)) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="k=7"):
        top_right_singular(rows, 7)


def test_random_orthonormal_is_orthonormal_seeded_and_consumes_the_stream_like_randn():
    for dtype in (torch.float32, torch.float64):
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        q = random_orthonormal(30, 4, g1, dtype)
        gauss = torch.randn(30, 4, generator=g2, dtype=dtype)
        assert q.dtype == dtype and q.shape == (30, 4)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(q.T @ q, torch.eye(4, dtype=dtype), atol=tol)
        # Q spans the Gaussian's columns: projecting them on Q leaves nothing
        assert torch.allclose(q @ (q.T @ gauss), gauss, atol=100 * tol)
        assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))  # same draws after
    a, b = random_orthonormal_bases(20, 2, 3, seed=1), random_orthonormal_bases(20, 2, 3, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and not torch.equal(a[0], a[1])
    batched = random_orthonormal(8, 2, torch.Generator().manual_seed(2), batch=(3,))
    assert batched.shape == (3, 8, 2)
    assert torch.allclose(batched.mT @ batched, torch.eye(2, dtype=torch.float64).expand(3, 2, 2), atol=1e-12)


def test_flatten_and_split_flat_are_inverse_and_cast_once():
    named = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([0.1, 0.2], dtype=torch.float64),
             "c": torch.tensor([[1.5]], dtype=torch.bfloat16)}
    vec = flatten(named.values(), torch.float32)
    expect = torch.tensor([0, 1, 2, 3, 4, 5, 0.1, 0.2, 1.5], dtype=torch.float64).float()  # each entry rounded once
    assert vec.dtype == torch.float32 and torch.equal(vec, expect)
    back = split_flat(vec, {k: v.shape for k, v in named.items()})
    assert list(back) == ["a", "b", "c"] and all(torch.equal(back[k], named[k].float()) for k in named)
    stacks = {"x": torch.randn(4, 2, 3), "y": torch.randn(4, 5)}
    rows = flatten_rows(stacks.values(), torch.float64)
    assert rows.shape == (4, 11)
    assert all(torch.equal(rows[w], flatten((stacks["x"][w], stacks["y"][w]), torch.float64)) for w in range(4))
    again = split_flat(rows, {"x": torch.Size([2, 3]), "y": torch.Size([5])})
    assert torch.equal(again["x"].float(), stacks["x"]) and torch.equal(again["y"].float(), stacks["y"])
    with pytest.raises(ValueError, match="11 entries"):
        split_flat(rows, {"x": torch.Size([2, 3])})


def test_callers_use_the_shared_helpers():
    """The three former copies now give the helper's numbers (the intervention basis in float32 columns)."""
    from headscreen.grokking.analysis.coupling import random_coupling, subspace_coupling
    from headscreen.grokking.training.interventions import random_bases, top_basis

    rows = torch.randn(5, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(top_basis(rows, 2), top_right_singular(rows, 2).T.float())
    assert all(torch.equal(b, q) for b, q in zip(random_bases(50, 2, 3, 9),
                                                  random_orthonormal_bases(50, 2, 3, 9, torch.float32), strict=True))
    c = rows[0].double()
    u = top_right_singular(rows, 2)
    assert subspace_coupling(rows, c, 2) == pytest.approx(float((u @ (c / c.norm())).pow(2).sum() / 2 * 50))
    qs = random_orthonormal_bases(50, 2, 4, 0)
    by_hand = sum(float((q.T @ (c / c.norm())).pow(2).sum() / 2 * 50) for q in qs) / 4
    assert random_coupling(c, 2, 4, seed=0) == pytest.approx(by_hand, rel=1e-12)


# --- optimizer state ------------------------------------------------------------------------------------------
def _adam(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _step(model, opt, seed: int) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


class Named(Exception):
    pass


def test_saved_state_resumes_exactly_and_non_contiguous_state_is_written(tmp_path):
    a, opt_a = _adam()
    for s in range(3):
        _step(a, opt_a, s)
    st = opt_a.state[a.weight]
    st["exp_avg"] = st["exp_avg"].T.contiguous().T  # same values, non-contiguous memory (3x4 seen as its .T.T)
    assert not st["exp_avg"].is_contiguous()
    path = tmp_path / "resume.safetensors"
    save_optimizer_state(path, opt_a, 3)
    b, opt_b = _adam(seed=1)
    b.load_state_dict(a.state_dict())
    fault = lambda why: Named(why)  # noqa: E731
    assert optimizer_state_step(path, fault) == 3
    load_optimizer_state(path, opt_b, fault)
    _step(a, opt_a, 3)
    _step(b, opt_b, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_damaged_or_missing_file_is_the_callers_named_fault(tmp_path):
    _, opt = _adam()
    path = tmp_path / "resume.safetensors"
    fault = lambda why: Named(f"{path} {why}")  # noqa: E731
    with pytest.raises(Named, match="is missing"):
        load_optimizer_state(path, opt, fault)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(Named, match="cannot be read"):
        optimizer_state_step(path, fault)
    with pytest.raises(Named, match="cannot be read"):
        load_optimizer_state(path, opt, fault)
    from safetensors.torch import save_file

    save_file({"0.exp_avg": torch.zeros(2)}, str(path), metadata={"step": "x"})
    with pytest.raises(Named, match="names no step"):
        optimizer_state_step(path, fault)


def _truncate(path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_both_trainers_name_a_damaged_resume_file(tmp_path, monkeypatch):
    """A truncated resume.safetensors is the trainer's named fault, whether its step or its tensors fail to read."""
    import headscreen.synthetic.train as syn
    from headscreen.grokking.config import GrokConfig
    from headscreen.grokking.training import snapshots
    from headscreen.grokking.training.runfiles import DamagedRunFile
    from headscreen.grokking.training.train import train_run
    from headscreen.series import CorruptCheckpoint
    from headscreen.synthetic.config import TrainConfig

    cfg = TrainConfig(architecture="llama", n_layers=1, d_model=16, n_heads=2, ctx=32, batch_size=2, steps=4, warmup=1,
                      log_checkpoints_until=2, checkpoint_every=2, eval_batch_size=2, threads=1)
    out = tmp_path / "series"
    real = syn._save_checkpoint

    def crash_at_4(model, where, step):
        if step == 4:
            raise KeyboardInterrupt
        real(model, where, step)

    with monkeypatch.context() as m:
        m.setattr(syn, "_save_checkpoint", crash_at_4)
        with pytest.raises(KeyboardInterrupt):
            syn.train_series(cfg, out, progress=False)
    resume = out / syn.RESUME_FILE
    good = resume.read_bytes()
    _truncate(resume)
    with pytest.raises(CorruptCheckpoint, match="optimizer state to resume from"):  # its step cannot be read
        syn.train_series(cfg, out, progress=False)
    resume.write_bytes(good)
    calls = []
    with monkeypatch.context() as m:  # the step reads, the tensors do not: the load path names it too
        m.setattr(syn, "load_optimizer_state", lambda *a: (calls.append(1), load_optimizer_state(*a))[1])
        m.setattr(syn, "optimizer_state_step", lambda path, fault: 2)
        _truncate(resume)
        with pytest.raises(CorruptCheckpoint, match="cannot be read"):
            syn.train_series(cfg, out, progress=False)
    assert calls == [1]

    gcfg = GrokConfig.from_dict({"task": "dyck", "model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8,
                                                            "d_mlp": 32},
                                 "task_options": {"n_train": 8, "n_test": 16}, "lr": 3e-3, "steps": 8,
                                 "batch_size": None, "eval_every": 2, "snapshot_every": 2, "defect_every": 0})
    run = train_run(gcfg, tmp_path / "grok", progress=False, stop_at=5)
    rpath = run / snapshots.RESUME
    assert json.loads((run / "trajectory" / "series.json").read_text())["complete"] is False
    good = rpath.read_bytes()
    _truncate(rpath)
    with pytest.raises(DamagedRunFile, match="--force"):
        train_run(gcfg, run, progress=False)
    rpath.write_bytes(good)
    _truncate(rpath, len(good) - 8)  # header intact, tensor bytes cut: the step reads, the load fails
    with pytest.raises(DamagedRunFile, match="cannot be read"):
        snapshots.load_optimizer(rpath, torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]))
