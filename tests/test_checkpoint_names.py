"""The shape check of every tensor a checkpoint holds uses the checkpoint's own names.

transformers 5 names some tensors differently on disk and in memory (GPT-NeoX `embed_out.weight` /
`lm_head.weight`, OLMoE's per-expert tensors / stacked experts); `headscreen.series.checks.model_shapes`
must give the on-disk names, or those tensors silently escape the check."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from headscreen.series.adapters import SUPPORTED
from headscreen.series.checks import check_checkpoint, model_shapes
from headscreen.testing import build_tiny_model

HF_ARCHITECTURES = [a for a in SUPPORTED if a != "headscreen-grok"]  # the grok model is not a transformers class


def _saved(tmp_path, arch: str):
    folder = tmp_path / arch / "step1"
    build_tiny_model(arch, n_layers=1, d_model=32, n_heads=4, vocab=128).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", HF_ARCHITECTURES)
def test_every_tensor_a_checkpoint_holds_has_a_shape_to_check(tmp_path, arch):
    folder = _saved(tmp_path, arch)
    cfg = json.loads((folder / "config.json").read_text())
    implied = model_shapes(json.dumps(cfg, sort_keys=True), cfg.get("num_hidden_layers", cfg.get("n_layer")))
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        on_disk = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert on_disk and {k: implied.get(k) for k in on_disk} == on_disk


def test_a_reshaped_tensor_under_a_renamed_name_is_refused(tmp_path):
    """An OLMoE expert tensor (stored per expert, stacked in memory) of the wrong shape: caught by the header
    check, before any loader reads it."""
    from headscreen.series import ShapeMismatch

    folder = _saved(tmp_path, "olmoe")
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(k for k in tensors if ".experts.0.down_proj." in k)
    tensors[name] = tensors[name].t().contiguous()
    assert tensors[name].shape[0] != tensors[name].shape[1]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    # the message of the whole-model check (model_shapes), not of the attention/embedding one (check_shapes)
    with pytest.raises(ShapeMismatch, match=name.replace(".", r"\.") + ".*the model its config.json describes"):
        check_checkpoint(folder)
