"""The lifecycle study's edge-direction ablation (headscreen.grokking.analysis.edge_ablation): a planted
direction costs accuracy and random ones do not; the random bases are orthonormal and drawn from their own
seed; only the attention matrices change; the edge is found from the run's snapshots; a run that cannot
give it says why."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from torch import nn

from headscreen.grokking.analysis.edge_ablation import (
    SETTINGS,
    AblationSettings,
    ablation_cost,
    edge_ablation,
    edge_directions,
    project_out,
    random_bases,
)
from headscreen.grokking.analysis.edge_lifecycle import attention_keys, attention_vector
from headscreen.grokking.config import GrokConfig
from headscreen.grokking.tasks.base import make_task
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.spectral.paramspace import split_flat

torch.set_num_threads(1)
TINY_DYCK = {"tasks": ["dyck"], "seed": 3, "lr": 0.003,
             "task_options": {"n_ctx": 24, "max_depth": 12, "n_train": 50, "n_test": 40, "generator": "published",
                              "p_open": 0.55, "data_seed": 0, "accuracy": "token"},
             "model": {"preset": "curv", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
                       "init": "pytorch-layer"}}


class Planted(nn.Module):
    """Predicts sign(x·θ) with θ the attention vector (W_K then W_Q, name order); `readout` is not attention."""

    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.W_K, self.attn.W_Q = nn.Parameter(torch.zeros(32, 32)), nn.Parameter(torch.zeros(32, 32))
        self.readout = nn.Parameter(torch.ones(3))

    def forward(self, x):  # x [N, 2048] -> [N]
        return x @ torch.cat([self.attn.W_K.reshape(-1), self.attn.W_Q.reshape(-1)])


def _planted():
    """The model, its state θ = 5u + 0.3n (u, v, n orthonormal), the edge [u; v] and an accuracy on sign(x·u)."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(2048, 3, generator=g, dtype=torch.float64))[0].T  # [3, 2048] orthonormal
    u, v, n = q
    model = Planted()
    shapes = {k: v_.shape for k, v_ in model.state_dict().items() if k in ("attn.W_K", "attn.W_Q")}
    parts = split_flat((5 * u + 0.3 * n).float(), shapes)
    state = {**model.state_dict(), **parts}
    x = torch.randn(400, 2048, generator=g)
    y = torch.sign(x @ u.float())
    return model, state, q[:2], lambda m: float((torch.sign(m(x)) == y).float().mean())


def test_ablating_the_planted_direction_costs_accuracy_and_random_directions_do_not():
    model, state, edge, accuracy = _planted()
    r = ablation_cost(model, state, edge, random_bases(2048, AblationSettings(step=0)), accuracy)
    assert r["base_acc"] > 0.95  # θ points along u: the planted classifier
    assert r["edge_delta"] < -0.3  # only 0.3n is left: chance level
    # 2 of 2048 dimensions tilt θ by ~0.03 rad: a point or two near the boundary may flip, no more
    assert len(r["random_deltas"]) == 20 and r["random_max_abs"] <= 0.03
    assert r["ratio"] is None or r["ratio"] > 30
    assert abs(r["edge_removed"] - 5 / (5**2 + 0.3**2) ** 0.5) < 1e-6  # ‖Bθ‖/‖θ‖: all of 5u, none of 0.3n
    assert r["random_removed_mean"] < 0.1  # ~ √(2/2048) of ‖θ‖
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)  # the model ends on the snapshot


def test_project_out_changes_the_attention_component_along_the_basis_only():
    model, state, edge, _ = _planted()
    out = project_out(state, edge)
    assert out["readout"] is state["readout"]  # not attention: the same tensor
    theta, kept = attention_vector(state), attention_vector(out)
    assert float((edge @ kept).abs().max()) < 1e-6  # nothing left along the basis
    assert torch.allclose(kept + edge.T @ (edge @ theta), theta, atol=1e-6)  # and nothing else removed
    # a real grok model: every non-attention tensor (biases, norms, MLP, embeddings) is untouched
    task = make_task(GrokConfig.from_dict(TINY_DYCK))
    real = task.build_model(0).state_dict()
    basis = random_bases(attention_vector(real).numel(), AblationSettings(step=0, n_random=1))[0]
    ablated = project_out(real, basis)
    att = set(attention_keys(real))
    assert {k.rsplit(".", 1)[-1] for k in att} == {"W_Q", "W_K", "W_V", "W_O"}
    assert all(torch.equal(ablated[k], real[k]) for k in real if k not in att)
    assert any(not torch.equal(ablated[k], real[k]) for k in att)
    assert float((basis @ attention_vector(ablated)).abs().max()) < 1e-5


def test_random_bases_are_orthonormal_and_drawn_from_their_own_seed():
    s = AblationSettings(step=0, n_random=5)
    torch.manual_seed(1)
    a = random_bases(300, s)
    torch.manual_seed(2)  # the global stream (model init, training draws) plays no part
    b = random_bases(300, s)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for basis in a:
        assert basis.shape == (2, 300) and torch.allclose(basis @ basis.T, torch.eye(2, dtype=basis.dtype), atol=1e-12)
    assert not torch.allclose(a[0], a[1])  # each trial its own draw
    c = random_bases(300, replace(s, random_seed=7))
    assert not torch.allclose(a[0], c[0])


def _run(tmp_path, steps, planted: bool):
    """A run folder with snapshots of a tiny Dyck model at `steps`; with `planted`, the attention matrices
    move by a·u + b·w between snapshots (so the update window spans exactly u, w)."""
    cfg = GrokConfig.from_dict(TINY_DYCK)
    model = make_task(cfg).build_model(cfg.seed)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "grok", "config": cfg.to_dict()}))
    state = model.state_dict()
    keys = attention_keys(state)
    theta0 = attention_vector(state)
    g = torch.Generator().manual_seed(5)
    uw = torch.linalg.qr(torch.randn(theta0.numel(), 2, generator=g, dtype=torch.float64))[0].T  # [2, P]
    traj = Trajectory(tmp_path)
    for i, step in enumerate(steps):
        theta = theta0 + (uw.T @ torch.tensor([0.5 * i, 0.1 * i * i], dtype=torch.float64) if planted else 0)
        parts = split_flat(theta.float(), {k: state[k].shape for k in keys})
        model.load_state_dict({**state, **parts})
        traj.add(step, model, {"model_type": "headscreen-grok"})
    return uw


def test_edge_directions_span_the_planted_updates_and_the_ablation_runs(tmp_path):
    uw = _run(tmp_path, [0, 20, 40, 60, 80], planted=True)
    s = AblationSettings(step=70, window=5, n_eval=25, n_random=3)
    step, used, edge = edge_directions(tmp_path, s)
    assert step == 60 and used == [0, 20, 40, 60]  # the last snapshot at or before 70, and every update before it
    assert torch.allclose(edge @ edge.T, torch.eye(2, dtype=edge.dtype), atol=1e-10)
    assert torch.allclose((edge @ uw.T).abs().pow(2).sum(1), torch.ones(2, dtype=edge.dtype), atol=1e-6)  # span{u, w}
    r = edge_ablation(tmp_path, s)
    assert r["status"] == "done" and r["step"] == 60 and r["n_eval"] == 25 and len(r["random_deltas"]) == 3
    assert 0 <= r["base_acc"] <= 1 and -1 <= r["edge_delta"] <= 1


def test_a_run_that_cannot_give_the_ablation_says_why(tmp_path):
    _run(tmp_path, [0, 20], planted=False)
    short = edge_ablation(tmp_path, AblationSettings(step=20))
    assert short["status"] == "cannot test" and "1 update(s)" in short["why"] and "snapshot the run more often" in short["why"]
    early = edge_ablation(tmp_path)  # the published step, 3900, is past the run's end
    assert early["status"] == "cannot test" and "last snapshot is step 20" in early["why"]
    assert str(SETTINGS["dyck"].step) in early["why"]


def _curves(run_dir, test_acc):
    import pandas as pd

    steps = [20 * i for i in range(len(test_acc))]
    pd.DataFrame({"step": steps, "train_acc": [1.0] * len(steps), "test_acc": test_acc}).to_parquet(
        run_dir / "curves.parquet")


def test_a_post_grokking_ablation_takes_a_shorter_runs_last_snapshot_once_it_has_grokked(tmp_path):
    uw = _run(tmp_path, [0, 20, 40, 60, 80], planted=True)
    s = AblationSettings(step=9500, n_eval=25, n_random=3, after_grok=True)  # SCAN's phase, past the run's end
    assert SETTINGS["scan"].after_grok and not SETTINGS["dyck"].after_grok
    _curves(tmp_path, [0.5, 0.9, 0.98, 0.99, 0.985])  # groks at step 40 (3 evaluations in a row >= 0.98)
    step, used, edge = edge_directions(tmp_path, s)
    assert step == 80 and used == [0, 20, 40, 60, 80]
    assert torch.allclose((edge @ uw.T).abs().pow(2).sum(1), torch.ones(2, dtype=edge.dtype), atol=1e-6)
    assert edge_ablation(tmp_path, s)["step"] == 80
    _curves(tmp_path, [0.5, 0.9, 0.98, 0.97, 0.99])  # never 3 in a row: not grokked
    why = edge_ablation(tmp_path, s)
    assert why["status"] == "cannot test" and "last snapshot is step 80" in why["why"] and "not grokked" in why["why"]
    fixed = edge_ablation(tmp_path, replace(s, after_grok=False))  # a fixed phase still needs the run to reach it
    assert fixed["status"] == "cannot test" and "train the run that far" in fixed["why"]


def test_the_findings_row_reads_the_prepared_ablation(tmp_path):
    from headscreen.grokking.analysis.edge_ablation import PUBLISHED
    from headscreen.report.grok_findings import _ablation_row

    _run(tmp_path, [0, 20, 40, 60, 80], planted=True)
    done = edge_ablation(tmp_path, AblationSettings(step=80, n_eval=25, n_random=3))
    pub = PUBLISHED["dyck"]
    finding, verdict, evidence = _ablation_row({"ablation_published": pub, "ablation": done})
    assert "ablating the top two edge directions" in finding and "-0.58" in finding and "4000" in finding
    strong = done["edge_delta"] <= -0.58 / 3 and (done["ratio"] is None or done["ratio"] >= 4000)
    assert verdict == ("held" if strong else "not held") and f"{done['edge_delta']:+.3f}" in evidence
    forced = {**done, "edge_delta": -0.6, "random_mean": 0.0, "random_max_abs": 0.0, "ratio": None}
    assert _ablation_row({"ablation_published": pub, "ablation": forced})[1] == "held"
    weak = {**forced, "edge_delta": -0.1}
    assert _ablation_row({"ablation_published": pub, "ablation": weak})[1] == "not held"
    cannot = edge_ablation(tmp_path)
    assert _ablation_row({"ablation_published": pub, "ablation": cannot})[1:] == ["cannot test", cannot["why"]]
