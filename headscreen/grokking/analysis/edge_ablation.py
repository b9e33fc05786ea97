"""The edge-direction ablation of the lifecycle study (arXiv 2604.07380, §4 "The ablation paradox"); every
setting and where it was read: docs/methods.md, "Grokking II: the published recipes", "Edge-direction ablation".

At one snapshot (the last at or before `AblationSettings.step`; for SCAN's post-grokking phase, a shorter
run's last snapshot once it has grokked) θ is the vector of the attention matrices
(`edge_lifecycle.attention_vector`: every W_Q, W_K, W_V, W_O, biases excluded). The edge directions v₁..v_k
are the top-k right singular vectors (uncentered, `paramspace.top_right_singular`) of the up to `window`
updates δ_i = θ_i − θ_{i−1} between consecutive snapshots ending at that snapshot. Ablating an orthonormal
basis B [k, P] removes the *parameters'* component along it, θ ← θ − Bᵀ(Bθ) (not the update's); every other
parameter of the model is left as it is. The cost is Δacc = acc(ablated) − acc(θ), token accuracy on the
first `n_eval` test sequences; the control ablates `n_random` random orthonormal k-bases (QR of a Gaussian,
`paramspace.random_orthonormal_bases`, seeded by `random_seed` alone) the same way. The edge-over-random
ratio is |Δ_edge| / |mean Δ_random| as the study's code forms it (None when every random Δ is 0);
`edge_removed` / `random_removed_mean`: ‖Bθ‖ / ‖θ‖, the share of the attention vector's norm each removes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from headscreen.grokking.analysis.edge_lifecycle import attention_keys, attention_vector
from headscreen.spectral.paramspace import random_orthonormal_bases, split_flat, top_right_singular


@dataclass(frozen=True)
class AblationSettings:
    step: int  # the snapshot ablated: the last one at or before this step (the run must reach it)
    window: int = 5  # at most this many updates end at that snapshot (at least k, as the study allows)
    k: int = 2  # edge directions v₁..v_k ablated together
    n_eval: int = 300  # the first n test sequences
    n_random: int = 20  # random k-bases in the control
    random_seed: int = 1000
    # a post-grokking phase: a run that ends before `step` is ablated at its last snapshot instead, provided it
    # has grokked (the study's rule, sequence_rules.run_events) by then
    after_grok: bool = False


# the study's settings (docs/methods.md): Dyck "late" = snapshot 39 at 100-step spacing; SCAN "post_grok" =
# snapshot 19 at 500-step spacing (the paper does not name the phase of its SCAN −0.49: the script's last), so a
# shorter SCAN run (the CPU recipe) that has grokked is ablated at its own last snapshot
SETTINGS = {"dyck": AblationSettings(step=3900),
            "scan": AblationSettings(step=9500, n_eval=150, n_random=10, random_seed=3000, after_grok=True)}
PUBLISHED = {"dyck": {"delta_acc": -0.58, "ratio": 4000.0, "where": "late (step 3900), 3 seeds: −0.58 ± 0.09"},
             "scan": {"delta_acc": -0.49, "ratio": 1e7, "where": "grokked model, phase not stated"}}
TASK_KEYS = ("tasks", "task_options", "model", "seed", "p", "train_frac", "split")  # what builds data + model


def project_out(state: dict[str, Tensor], basis: Tensor) -> dict[str, Tensor]:
    """`state` with the attention vector θ [P] replaced by θ − Bᵀ(Bθ) for orthonormal rows `basis` [k, P]
    (float64, cast back to each tensor's dtype); every other entry is the same tensor object."""
    keys = attention_keys(state)
    theta = attention_vector(state)  # [P] float64
    kept = theta - basis.T.double() @ (basis.double() @ theta)  # [P]
    parts = split_flat(kept, {k: state[k].shape for k in keys})
    return {**state, **{k: parts[k].to(state[k].dtype) for k in keys}}


def ablation_cost(model: nn.Module, state: dict[str, Tensor], edge: Tensor, randoms: list[Tensor],
                  accuracy: Callable[[nn.Module], float]) -> dict:
    """Δacc of ablating `edge` [k, P] and each random basis [k, P] from `state` (the model ends on `state`)."""
    def acc(s: dict[str, Tensor]) -> float:
        model.load_state_dict(s)
        return float(accuracy(model.eval()))

    theta = attention_vector(state)  # [P]
    base = acc(state)
    edge_delta = acc(project_out(state, edge)) - base
    deltas = [acc(project_out(state, r)) - base for r in randoms]
    model.load_state_dict(state)
    mean = sum(deltas) / len(deltas)
    removed = [float((r.double() @ theta).norm() / theta.norm()) for r in randoms]  # share of ‖θ‖ along each basis
    return {"base_acc": base, "edge_delta": edge_delta, "random_deltas": deltas, "random_mean": mean,
            "random_max_abs": max(abs(d) for d in deltas), "ratio": abs(edge_delta) / abs(mean) if mean else None,
            "edge_removed": float((edge.double() @ theta).norm() / theta.norm()),
            "random_removed_mean": sum(removed) / len(removed)}


def random_bases(p: int, s: AblationSettings) -> list[Tensor]:
    """The control's `n_random` orthonormal k-bases of ℝ^p as rows [k, P], from `random_seed` alone."""
    return [b.T for b in random_orthonormal_bases(p, s.k, s.n_random, s.random_seed)]


def edge_directions(run_dir: Path, s: AblationSettings) -> tuple[int, list[int], Tensor] | str:
    """(the snapshot's step, the window's snapshot steps, v₁..v_k [k, P]); or why they cannot be measured. The
    snapshot is the last at or before `s.step`; with `s.after_grok`, a run that ends earlier gives its last one
    once it has grokked."""
    from headscreen.grokking.training.snapshots import Trajectory

    traj = Trajectory(run_dir)
    steps = traj.steps
    if steps and steps[-1] < s.step and s.after_grok:
        from headscreen.grokking.published.sequence_rules import run_events

        grok = run_events(run_dir)["grok_step"]
        if grok is None or grok > steps[-1]:
            return (f"the run's last snapshot is step {steps[-1]} and it has not grokked by then (test accuracy "
                    f"≥ 0.98 at 3 evaluations in a row); the post-grokking ablation needs a grokked run (or a "
                    f"snapshot at step {s.step}, AblationSettings.step): train the run further")
    elif not steps or steps[-1] < s.step:
        return (f"the run's last snapshot is step {steps[-1] if steps else 'none'}; the ablation is taken at step "
                f"{s.step} (AblationSettings.step; the published phase by default): train the run that far")
    i = max(j for j, t in enumerate(steps) if t <= s.step)
    used = steps[max(0, i - s.window): i + 1]
    if len(used) - 1 < s.k:
        return (f"{len(used) - 1} update(s) between snapshots end at step {steps[i]} (snapshots {used}); "
                f"{s.k} edge directions need at least {s.k}: snapshot the run more often")
    thetas = torch.stack([attention_vector(traj.load(t)) for t in used])  # [w + 1, P]
    return steps[i], used, top_right_singular(thetas[1:] - thetas[:-1], s.k)  # [k, P]


def edge_ablation(run_dir: str | Path, settings: AblationSettings | None = None) -> dict:
    """The study's ablation on a Dyck/SCAN run: the edge's Δacc beside the random bases' (module docstring);
    {"status": "cannot test", "why": ...} where the run cannot give it."""
    from headscreen.grokking.config import GrokConfig
    from headscreen.grokking.tasks.base import make_task
    from headscreen.grokking.training.snapshots import Trajectory

    run = Path(run_dir)
    raw = json.loads((run / "manifest.json").read_text())["config"]
    task_name = raw["tasks"][0]
    s = settings or SETTINGS.get(task_name)
    if s is None:
        return {"status": "cannot test", "why": f"the study ablates Dyck and SCAN runs, not {task_name!r}"}
    found = edge_directions(run, s)
    if isinstance(found, str):
        return {"status": "cannot test", "why": found, "settings": asdict(s)}
    step, used, edge = found
    task = make_task(GrokConfig.from_dict({k: raw[k] for k in TASK_KEYS if k in raw}, f"{run}: config"))
    x, y = task.data.test()
    batch = (x[: s.n_eval], y[: s.n_eval])
    model = task.build_model(0)
    state = Trajectory(run).load(step)
    cost = ablation_cost(model, state, edge, random_bases(edge.shape[1], s),
                         lambda m: task.masked_token_accuracy(m, batch))
    return {"status": "done", "step": step, "window_steps": used, "n_eval": len(x[: s.n_eval]),
            "settings": asdict(s), **cost}
