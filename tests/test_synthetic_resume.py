"""An interrupted synthetic series resumes to the same checkpoints as an uninterrupted one, for every
architecture the synthetic trainer builds (headscreen.synthetic.config.ARCHITECTURES).

The checkpoints are HF folders written by `save_pretrained`, which stores some tensors under the hub's
names rather than the module's (GPT-NeoX: `embed_out.weight` on disk, `lm_head.weight` in memory), so a
resume must read them the way transformers does, not by the module's key names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headscreen.synthetic import TrainConfig, train_series
from headscreen.synthetic import train as train_mod
from headscreen.synthetic.config import ARCHITECTURES

TINY = dict(n_layers=1, d_model=16, n_heads=2, ctx=32, vocab_size=96, batch_size=4, steps=8, lr=3e-3, warmup=2,
            log_checkpoints_until=2, checkpoint_every=4, eval_batch_size=4, story_fraction=0.25, threads=1)
SAVE = train_mod._save_checkpoint  # the trainer's own, captured before any test patches it


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _tensors(root: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(root / f"step{step:06d}" / "model.safetensors"))


def _interrupt_at(monkeypatch, step: int, saved: list[int]) -> None:
    """Record every checkpoint the trainer writes in `saved`; raise KeyboardInterrupt (a kill) at `step`."""
    def save(model, out, s):
        if s == step:
            raise KeyboardInterrupt
        saved.append(s)
        SAVE(model, out, s)

    monkeypatch.setattr(train_mod, "_save_checkpoint", save)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_an_interrupted_series_resumes_to_the_uninterrupted_checkpoints(tmp_path, monkeypatch, architecture):
    cfg = TrainConfig(**TINY, architecture=architecture, attn_only=architecture == "llama")
    whole = train_series(cfg, tmp_path / "whole", progress=False)
    steps = [c["step"] for c in json.loads((whole / "series.json").read_text())["checkpoints"]]
    assert steps == [0, 1, 2, 4, 8]

    first: list[int] = []
    _interrupt_at(monkeypatch, 8, first)  # killed after checkpoint 4 was written, before checkpoint 8
    with pytest.raises(KeyboardInterrupt):
        train_series(cfg, tmp_path / "cut", progress=False)
    assert first == [0, 1, 2, 4] and (tmp_path / "cut/resume.safetensors").is_file()

    second: list[int] = []
    _interrupt_at(monkeypatch, -1, second)  # no kill this time: only records what the resumed session writes
    cut = train_series(cfg, tmp_path / "cut", progress=False)
    assert second == [8]  # it resumed from checkpoint 4 (a retrain from step 0 would write 0, 1, 2, 4 again)

    want, got = _tensors(whole, 8), _tensors(cut, 8)
    assert sorted(got) == sorted(want) and len(want) > 4
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), f"{architecture}: {name} differs after the resume"
    assert not torch.equal(_tensors(whole, 4)[name], tensor)  # the weights moved between the checkpoints
    losses = [[c["train_loss"] for c in json.loads((r / "series.json").read_text())["checkpoints"]] for r in (whole, cut)]
    assert losses[0] == losses[1]
    assert not (cut / "resume.safetensors").exists()
