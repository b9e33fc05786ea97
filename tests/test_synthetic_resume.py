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


def test_the_cli_recipe_path_resumes_a_default_architecture_series(tmp_path, monkeypatch):
    """`headscreen train --config <recipe> --out DIR` killed and run again (pipelines.train.train): a recipe
    that names no architecture trains TrainConfig's default, gpt_neox, and resumes to the same weights."""
    from pipelines.train import train

    assert TrainConfig().architecture == "gpt_neox"
    recipe = tmp_path / "neox-tiny.yaml"
    recipe.write_text("name: neox-tiny\nsource: {kind: synthetic}\ntrain:\n"
                      + "".join(f"  {k}: {v}\n" for k, v in TINY.items()))
    whole = train(recipe, tmp_path / "whole", device="cpu", progress=False)
    _interrupt_at(monkeypatch, 4, [])
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut", device="cpu", progress=False)
    saved: list[int] = []
    _interrupt_at(monkeypatch, -1, saved)
    cut = train(recipe, tmp_path / "cut", device="cpu", progress=False)
    assert saved == [4, 8] and json.loads((cut / "series.json").read_text())["train_config"]["architecture"] == "gpt_neox"
    want, got = _tensors(whole, 8), _tensors(cut, 8)
    assert "embed_out.weight" in got  # the hub's GPT-NeoX name on disk, the one a plain load_state_dict refused
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_load_checkpoint_weights_copies_exactly_and_refuses_a_missing_tensor(tmp_path, architecture):
    from safetensors.torch import save_file

    from headscreen.synthetic.model import build_model, load_checkpoint_weights

    cfg = TrainConfig(**TINY, architecture=architecture)
    torch.manual_seed(0)
    saved = build_model(cfg)
    saved.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    torch.manual_seed(1)
    model = build_model(cfg)  # other weights, the same frozen MLPs
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen  # attention-only by default: the flags to keep
    state = torch.random.get_rng_state()
    load_checkpoint_weights(model, tmp_path / "ckpt")
    assert torch.equal(torch.random.get_rng_state(), state)  # the trainer's random stream is untouched
    want = saved.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == frozen

    file = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(str(file))
    dropped = sorted(tensors)[-1]
    del tensors[dropped]
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys"):
        load_checkpoint_weights(model, tmp_path / "ckpt")


def test_a_resume_checkpoint_missing_a_tensor_is_a_named_fault(tmp_path, monkeypatch):
    """from_pretrained would initialise a missing tensor at random and train on; the resume refuses it."""
    from safetensors.torch import save_file

    from headscreen.series import CorruptCheckpoint

    cfg = TrainConfig(**TINY)
    _interrupt_at(monkeypatch, 4, [])
    with pytest.raises(KeyboardInterrupt):
        train_series(cfg, tmp_path / "cut", progress=False)
    file = tmp_path / "cut" / "step000002" / "model.safetensors"
    tensors = load_file(str(file))
    dropped = next(k for k in tensors if "final_layer_norm" in k)  # not an attention or embedding tensor
    del tensors[dropped]
    save_file(tensors, str(file), metadata={"format": "pt"})
    _interrupt_at(monkeypatch, -1, [])
    with pytest.raises(CorruptCheckpoint, match=r"step000002 \(the checkpoint this series resumes from\).*missing_keys"):
        train_series(cfg, tmp_path / "cut", progress=False)
