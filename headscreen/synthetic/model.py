"""Build the HF-format model (GPT-NeoX or Llama) that a TrainConfig describes, and load a checkpoint's
weights back into one (`load_checkpoint_weights`).

Attention-only models keep the architecture's MLP modules (so the saved checkpoint is a valid,
bootable HF checkpoint) but make them inert: the MLP's output projection (weight and bias) is zero
and every MLP parameter, and the norm that feeds the MLP, is frozen. The MLP's output is then
exactly 0 at every step, and it stays tiny (width ATTN_ONLY_MLP_WIDTH) so it costs no compute.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from headscreen.synthetic.config import TrainConfig
from headscreen.synthetic.tokenizer import BOS_ID, EOS_ID, PAD_ID

ATTN_ONLY_MLP_WIDTH = 4


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """A fresh model initialised from torch's global RNG; seed it (torch.manual_seed) beforehand."""
    import transformers as tf

    d_mlp = ATTN_ONLY_MLP_WIDTH if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=d_mlp, max_position_embeddings=cfg.ctx,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False,
        attention_dropout=0.0, use_cache=False,
    )
    if cfg.architecture == "gpt_neox":
        hf_cfg = tf.GPTNeoXConfig(
            **common, rotary_pct=cfg.rotary_fraction, rotary_emb_base=cfg.rope_theta, hidden_dropout=0.0,
            use_parallel_residual=True,
        )
        hf_cfg.rope_parameters = {**hf_cfg.rope_parameters, "rope_theta": cfg.rope_theta}
        hf_cfg.architectures = ["GPTNeoXForCausalLM"]
        cls = tf.GPTNeoXForCausalLM
    else:
        hf_cfg = tf.LlamaConfig(**common, num_key_value_heads=cfg.n_heads, head_dim=cfg.d_head, rms_norm_eps=1e-5)
        hf_cfg.rope_parameters = {**hf_cfg.rope_parameters, "rope_theta": cfg.rope_theta}
        hf_cfg.architectures = ["LlamaForCausalLM"]
        cls = tf.LlamaForCausalLM
    hf_cfg._attn_implementation = cfg.attention
    model = cls(hf_cfg)
    if cfg.attn_only:
        silence_mlps(model)
    return model


def load_checkpoint_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy the weights of the HF checkpoint `folder` (written by `save_pretrained`) into `model` exactly.

    The folder is read by transformers' own `from_pretrained`, never by the module's key names: `save_pretrained`
    writes some tensors under the hub's names, not the module's (GPT-NeoX's output layer is `embed_out.weight`
    on disk and `lm_head.weight` in memory, in transformers 5), and only transformers knows its renames.
    The loaded copy must match `model` key for key (a missing, extra or reshaped tensor raises ValueError
    naming it; from_pretrained would initialise a missing one at random); `model`'s parameter flags
    (requires_grad of the frozen attention-only MLPs) stay as built. Draws nothing from torch's global RNG.
    """
    dtype = next(model.parameters()).dtype
    with torch.random.fork_rng(devices=[]), quiet_hf_progress():
        loaded, info = type(model).from_pretrained(str(folder), local_files_only=True, dtype=dtype,
                                                   output_loading_info=True)
    faults = {kind: sorted(info.get(kind) or ()) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    faults["error_msgs"] = list(info.get("error_msgs") or ())
    faults = {kind: names for kind, names in faults.items() if names}
    if faults:
        raise ValueError(f"its weights do not fit a {type(model).__name__}: "
                         + "; ".join(f"{kind} {names[:5]}" for kind, names in faults.items()))
    model.load_state_dict(loaded.state_dict())  # in-memory names on both sides: strict, exact copies


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """transformers' progress bars off inside the block ("Loading weights" per checkpoint drowns the trainer's)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def attention_kernel(model: torch.nn.Module, kind: str) -> Iterator[torch.nn.Module]:
    """Run `model` with HF attention kernel `kind` ("eager" to get attention patterns) inside the block.

    A module that is not an HF model (no `set_attn_implementation`) is run as it is.
    """
    if not hasattr(model, "set_attn_implementation"):
        yield model
        return
    before = model.config._attn_implementation
    model.set_attn_implementation(kind)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def mlp_modules(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module, torch.nn.Linear]]:
    """Per layer: (mlp, the norm that feeds it, the mlp's output projection)."""
    arch = model.config.model_type
    if arch == "gpt_neox":
        return [(layer.mlp, layer.post_attention_layernorm, layer.mlp.dense_4h_to_h)
                for layer in model.gpt_neox.layers]
    if arch == "llama":
        return [(layer.mlp, layer.post_attention_layernorm, layer.mlp.down_proj) for layer in model.model.layers]
    raise ValueError(f"unsupported model_type {arch!r}; expected gpt_neox or llama")


def silence_mlps(model: torch.nn.Module) -> None:
    """Zero every MLP's output projection and freeze the MLP and its input norm (attention-only)."""
    with torch.no_grad():
        for mlp, norm, out_proj in mlp_modules(model):
            out_proj.weight.zero_()
            if out_proj.bias is not None:
                out_proj.bias.zero_()
            for p in (*mlp.parameters(), *norm.parameters()):
                p.requires_grad_(False)


def is_attn_only(model: torch.nn.Module) -> bool:
    """True if every MLP's output projection (weight and bias) is exactly zero."""
    return all(
        not out_proj.weight.any() and (out_proj.bias is None or not out_proj.bias.any())
        for _, _, out_proj in mlp_modules(model)
    )
