"""The checks every checkpoint passes before any loader (ours or transformers') touches its weights.

One function, `check_checkpoint`, used on every path: the lazy attention read, booting a bridge,
`headscreen series`, `validate` and resuming `train`. It reads config.json and the weight headers
only (no tensor data of safetensors files), so it is cheap; the non-finite check of the attention
tensors happens as they are read (`read_head_weights`) and of every parameter after booting
(`check_finite_parameters`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from headscreen.series.adapters import AttentionGeometry, check_shapes, geometry_from_config
from headscreen.series.errors import CheckpointNotFound, CorruptCheckpoint, ShapeMismatch
from headscreen.series.finite import require_finite
from headscreen.series.tensors import TensorSource


def read_hf_config(folder: Path, label: str | None = None) -> dict:
    """A checkpoint's config.json as a dict; errors name the file and the fix."""
    path = Path(folder) / "config.json"
    who = f"checkpoint {label}: " if label else ""
    if not path.is_file():
        raise CheckpointNotFound(f"{who}no config.json in {path.parent}; every checkpoint folder needs its HF config")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"{who}{path} is not valid JSON ({e}); restore it from the original checkpoint") from e
    if not isinstance(cfg, dict):
        raise CorruptCheckpoint(f"{who}{path} holds a {type(cfg).__name__}, not a JSON object; restore it")
    return cfg


def check_checkpoint(folder: str | Path, *, allow_pickle: bool = False, label: str | None = None,
                     src: TensorSource | None = None, all_shards: bool = True) -> AttentionGeometry:
    """Check one checkpoint folder; returns its attention geometry.

    Raises a `SeriesError` naming the checkpoint for: a missing or invalid config.json, an unsupported
    architecture or impossible geometry, missing weights, pickle weights without `allow_pickle` (with
    it, a pickle that `torch.load(weights_only=True)` refuses), a truncated file, a crafted or damaged
    safetensors header, and a tensor whose claimed shape differs from the one config.json implies.
    `src`: the folder's TensorSource when the caller reads from it next (its checked headers are kept).
    `all_shards`: every shard the index names must be in the folder (False: a hub folder downloaded for
    its attention tensors only holds the shards that have them).
    """
    folder = Path(folder)
    where = label or str(folder)
    cfg = read_hf_config(folder, label)
    if src is None:
        src = TensorSource(folder, allow_pickle=allow_pickle)  # missing weights, unapproved pickle
    geometry = geometry_from_config(cfg, where=f"checkpoint {where} config.json")
    try:
        claimed = src.validate()
        missing = src.missing_shards() if all_shards else []
    finally:
        src.close()
    if missing:
        raise CorruptCheckpoint(f"checkpoint {where}: shard {missing[0]} named by its model.safetensors.index.json is "
                                f"missing{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; restore it "
                                "(re-download or re-save this checkpoint)")
    check_shapes(claimed, geometry, where)  # attention and embeddings, with the geometry in the message
    implied = model_shapes(json.dumps(cfg, sort_keys=True), geometry.n_layers)
    for name, shape in claimed.items():
        want = implied.get(name)
        if want is not None and tuple(shape) != want:
            raise ShapeMismatch(f"checkpoint {where}: tensor {name!r} has shape {list(shape)} but the model its "
                                f"config.json describes has {list(want)}; the weights were reshaped or belong to "
                                "another config — re-save this checkpoint")
    return geometry


@functools.lru_cache(maxsize=8)
def model_shapes(config_text: str, n_layers: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter and buffer of the transformers model a config.json describes, under
    the names its checkpoints use (`_on_disk_names`), built on the meta device (no memory, no weights, never
    remote code; ~0.05 s after transformers' first import). Names are given with and without the base model's prefix (GPT-2 checkpoints use
    both). {} when transformers cannot build it: then only the attention and embedding shapes are
    checked (`check_shapes`). Cached per config text: a series usually has one."""
    if n_layers > 512:  # a crafted config could make building the module tree itself take minutes
        return {}
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads(config_text)
    cfg.pop("auto_map", None)  # the built-in class of model_type, never code from the folder
    model_type = cfg.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        state = _on_disk_names(model)
    except Exception:  # an unusual config transformers cannot build (or rename): the explicit checks still apply
        return {}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else None
    if prefix:
        shapes.update({k[len(prefix):]: v for k, v in list(shapes.items()) if k.startswith(prefix)})
    return shapes


def _on_disk_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under the names `save_pretrained` writes (the checkpoint's names), not the module's.

    transformers 5 renames some tensors between disk and memory (GPT-NeoX: `embed_out.weight` on disk,
    `lm_head.weight` in memory; OLMoE: one tensor per expert on disk, stacked in memory) and reverts the
    renames on save; transformers 4 kept the module's names on disk."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: no renames
        return model.state_dict()
    return revert_weight_conversion(model, model.state_dict())


def check_finite_parameters(module: torch.nn.Module, where: str) -> None:
    """Every parameter of a loaded model is finite (a NaN in lm_head would give NaN losses). Buffers are
    not checked: causal masks legitimately hold -inf."""
    for name, t in module.named_parameters():
        if not t.is_floating_point():
            continue
        name = name.replace("_original_component.", "")  # the bridge's wrapper, not the checkpoint's name
        require_finite(t, f"{where}: {name}", fix="drop it from the series (or screen with --skip-bad)")
