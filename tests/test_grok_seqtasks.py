"""Dyck-1 and SCAN: generators against hand-checked examples, bad input, and the sequence models."""

from __future__ import annotations

import pytest
import torch

from headscreen.config import ConfigError
from headscreen.grokking.config import GrokConfig
from headscreen.grokking.tasks.base import make_task
from headscreen.grokking.tasks.dyck import DyckSpec, depth_labels, make_dyck
from headscreen.grokking.tasks.scan import (
    TGT_VOCAB,
    ScanGrammarError,
    ScanSpec,
    all_commands,
    interpret,
    make_scan,
)


# --- Dyck -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, depths", [
    ("()", [1, 0]),
    ("(())", [1, 2, 1, 0]),
    ("()(())", [1, 0, 1, 2, 1, 0]),
    ("((()()))", [1, 2, 3, 2, 3, 2, 1, 0]),
])
def test_depth_labels_of_hand_written_strings(text, depths):
    assert depth_labels(text) == depths


@pytest.mark.parametrize("text", ["(()", "())(", "(x)"])
def test_depth_labels_refuse_unbalanced_or_foreign(text):
    with pytest.raises(ValueError):
        depth_labels(text)


def test_dyck_depth_that_cannot_fit_the_context_is_refused():
    with pytest.raises(ConfigError, match="cannot fit the context"):
        DyckSpec(n_ctx=24, max_depth=13)
    with pytest.raises(ConfigError, match="max_depth"):
        GrokConfig.from_dict({"task": "dyck", "task_options": {"n_ctx": 8, "max_depth": 5}})
    with pytest.raises(ConfigError, match="n_ctx"):
        DyckSpec(n_ctx=23)


def test_dyck_dataset_is_balanced_seeded_and_disjoint():
    spec = DyckSpec(n_train=50, n_test=300)
    a, b = make_dyck(spec, seed=3), make_dyck(spec, seed=3)
    assert torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, make_dyck(spec, seed=4).inputs)
    assert a.inputs.shape == (350, 24) and spec.n_classes == 13
    for row, lab in zip(a.inputs[:20], a.labels[:20], strict=True):
        text = "".join("()"[i] for i in row.tolist())
        assert depth_labels(text) == lab.tolist()
    assert int(a.labels.min()) >= 0 and int(a.labels.max()) <= 12
    train = {tuple(r) for r in a.train()[0].tolist()}
    test = {tuple(r) for r in a.test()[0].tolist()}
    assert len(train) == 50 and len(test) == 300 and not train & test


# --- SCAN -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, actions", [
    ("jump", "JUMP"),
    ("jump twice", "JUMP JUMP"),
    ("turn left", "LTURN"),
    ("turn right thrice", "RTURN RTURN RTURN"),
    ("walk left", "LTURN WALK"),
    ("walk opposite left", "LTURN LTURN WALK"),
    ("turn opposite right", "RTURN RTURN"),
    ("look around right", "RTURN LOOK RTURN LOOK RTURN LOOK RTURN LOOK"),
    ("turn around left", "LTURN LTURN LTURN LTURN"),
    ("walk and jump", "WALK JUMP"),
    ("walk after jump", "JUMP WALK"),
    ("run twice after walk left", "LTURN WALK RUN RUN"),
    ("jump opposite left and look thrice", "LTURN LTURN JUMP LOOK LOOK LOOK"),
])
def test_scan_interpretation_hand_checked(command, actions):
    assert interpret(command) == actions.split()


@pytest.mark.parametrize("command", ["fly", "jump left twice twice", "turn", "walk and", "jump and run and walk",
                                     "left jump", "walk around", ""])
def test_scan_command_outside_the_grammar_is_refused(command):
    with pytest.raises(ScanGrammarError, match="outside the grammar"):
        interpret(command)


def test_scan_command_set_has_the_published_size_and_bounds():
    cmds = all_commands()
    assert len(cmds) == len(set(cmds)) == 20910
    assert max(len(c.split()) for c in cmds) == 9
    assert max(len(interpret(c)) for c in cmds) == 48


def test_scan_splits():
    simple = make_scan(ScanSpec(split="simple", n_train=300, n_test=200), seed=0)
    assert len(simple.train_idx) == 300 and len(simple.test_idx) == 200
    assert len(set(simple.commands)) == 500
    jump = make_scan(ScanSpec(split="addjump", n_train=300, n_test=0), seed=0)
    train = [jump.commands[i] for i in jump.train_idx.tolist()]
    test = [jump.commands[i] for i in jump.test_idx.tolist()]
    assert "jump" in train and all("jump" not in c.split() for c in train if c != "jump")
    assert all("jump" in c.split() for c in test) and "jump" not in test
    assert len(test) == sum("jump" in c.split() for c in all_commands()) - 1
    # the encoded targets read back as the interpretation, then EOS
    row = jump.labels[0].tolist()
    acts = [TGT_VOCAB[i] for i in row[: row.index(2)]]
    assert acts == interpret(jump.commands[0])


def test_scan_options_are_validated():
    with pytest.raises(ConfigError, match="split"):
        GrokConfig.from_dict({"task": "scan", "task_options": {"split": "length"}})
    with pytest.raises(ConfigError, match="take none"):
        GrokConfig.from_dict({"task": "add", "task_options": {"split": "simple"}})


# --- models through the Task interface ---------------------------------------------------------------
TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}


def test_dyck_and_scan_tasks_give_losses_and_rows():
    dyck = make_task(GrokConfig.from_dict({"task": "dyck", "model": TINY,
                                           "task_options": {"n_train": 10, "n_test": 20}}))
    model = dyck.build_model(0)
    x, y = dyck.train()
    assert model(x).shape == (10, 24, 13)
    loss = dyck.loss_fn(model, (x, y))
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(13.0)).item()) < 1.0
    rows = dyck.evaluate(model)
    assert rows[0]["task"] == "dyck" and 0 <= rows[0]["test_acc"] <= 1
    # causal: a prediction never depends on later tokens
    x2 = x.clone()
    x2[:, -1] = 1 - x2[:, -1]
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :-1], model(x2)[:, :-1], atol=1e-6)

    scan = make_task(GrokConfig.from_dict({"task": "scan", "model": TINY,
                                           "task_options": {"n_train": 16, "n_test": 8}}))
    m = scan.build_model(0)
    src, tgt = scan.train()
    logits = m(src, tgt)
    assert logits.shape == (16, tgt.shape[1], len(TGT_VOCAB))
    # teacher forcing is causal in the target: changing target token j leaves logits < j+1 unchanged
    tgt2 = tgt.clone()
    tgt2[:, 5] = 3
    with torch.no_grad():
        assert torch.allclose(m(src, tgt)[:, :6], m(src, tgt2)[:, :6], atol=1e-6)
    row = scan.evaluate(m)[0]
    assert row["task"] == "scan" and 0 <= row["train_acc"] <= 1
    hf = m.hf_config()
    assert hf["n_layers"] == 2 and hf["n_encoder_layers"] == 1
