"""The learning-rate schedule (config.optimizer.scheduled_lr; GrokConfig's lr_decay, lr_decay_start, lr_final):
its values against the formulas written out here, the config's checks, and what a decay does to a run."""

from __future__ import annotations

import math

import pytest
import torch
from test_grok_train import tiny_config

from headscreen.config import ConfigError
from headscreen.config.optimizer import scheduled_lr
from headscreen.grokking.config import GrokConfig
from headscreen.grokking.training.snapshots import Trajectory
from headscreen.grokking.training.train import train_run

torch.set_num_threads(1)


def test_the_schedule_follows_warm_up_stable_and_decay():
    lr, final, steps, start = 1e-3, 1e-4, 4000, 2000
    assert [scheduled_lr(lr, s, steps=steps) for s in (0, 1999, 3999)] == [lr] * 3  # constant by default
    for s in (0, 1000, 1999):  # before the decay: lr itself
        assert scheduled_lr(lr, s, steps=steps, decay="linear", decay_start=start, final=final) == lr
        assert scheduled_lr(lr, s, steps=steps, decay="cosine", decay_start=start, final=final) == lr
    for s in (2000, 2500, 3000, 3999):
        f = (s - start) / (steps - start)
        assert math.isclose(scheduled_lr(lr, s, steps=steps, decay="linear", decay_start=start, final=final),
                            lr - (lr - final) * f, rel_tol=1e-12)
        assert math.isclose(scheduled_lr(lr, s, steps=steps, decay="cosine", decay_start=start, final=final),
                            final + (lr - final) * (1 + math.cos(math.pi * f)) / 2, rel_tol=1e-12)
    # half way, both are at the mean of lr and final; the last update is within one step of final
    mid = (lr + final) / 2
    assert math.isclose(scheduled_lr(lr, 3000, steps=steps, decay="cosine", decay_start=start, final=final), mid)
    assert math.isclose(scheduled_lr(lr, 3000, steps=steps, decay="linear", decay_start=start, final=final), mid)
    assert abs(scheduled_lr(lr, 3999, steps=steps, decay="linear", decay_start=start, final=final) - final) < lr / 1000
    # the warm-up scales whatever the decay gives
    assert scheduled_lr(lr, 9, steps=100, warmup=20) == lr * 10 / 20
    assert math.isclose(scheduled_lr(lr, 9, steps=100, warmup=20, decay="linear", decay_start=0, final=0.0),
                        lr * (1 - 9 / 100) * 10 / 20)


@pytest.mark.parametrize("kw, field", [
    (dict(lr_decay="exponential"), "lr_decay"),
    (dict(lr_decay="linear", lr_decay_start=30), "lr_decay_start"),
    (dict(lr_decay="linear", lr_decay_start=-1), "lr_decay_start"),
    (dict(lr_decay="cosine", lr_final=0.5), "lr_final"),
    (dict(lr_decay="cosine", lr_final=-1e-4), "lr_final"),
])
def test_a_bad_decay_is_refused_naming_the_field(kw, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        tiny_config(steps=30, **kw)
    tiny_config(steps=30, lr_final=0.5)  # without a decay lr_final is not read


def test_a_decay_to_lr_itself_is_the_constant_run_and_a_real_decay_is_not(tmp_path):
    same = train_run(tiny_config(steps=20, lr_decay="linear", lr_decay_start=5, lr_final=1e-2), tmp_path / "same",
                     progress=False)
    const = train_run(tiny_config(steps=20), tmp_path / "const", progress=False)
    decay = train_run(tiny_config(steps=20, lr_decay="cosine", lr_decay_start=5, lr_final=0.0), tmp_path / "decay",
                      progress=False)
    a, b, c = Trajectory(const), Trajectory(same), Trajectory(decay)
    for step in a.steps:
        sa, sb, sc = a.load(step), b.load(step), c.load(step)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)  # lr_final = lr: every update the constant one
        assert all(torch.equal(sa[k], sc[k]) for k in sa) == (step <= 5)  # update 6 starts the decay at lr itself; from update 7 on it is lower
    assert GrokConfig.from_dict(tiny_config(lr_decay="cosine", lr_final=1e-3).to_dict()).lr_decay == "cosine"
