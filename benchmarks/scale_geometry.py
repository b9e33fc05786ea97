"""Random-weight checkpoints at real geometries, written as the hub writes them (bench_scale.py's input).

`write_series(root, geometry, steps)` writes one folder per step: config.json, sharded bfloat16
safetensors (keys in the hub's per-expert layout) and model.safetensors.index.json (`metadata.total_size`,
`weight_map`), plus a word-level tokenizer with the real vocabulary size at the series root. Nothing
is materialised as a model: each tensor is drawn, cast and written shard by shard (peak memory ≈ two
shards: safetensors serialises a shard in memory), so OLMoE-1B-7B (13.8 GB per checkpoint in bfloat16)
is written in ~2–3 GB of memory with the default 1 GB shards.

Checkpoint k's tensor = checkpoint 0's (σ·N(0, 1) values read from a fixed pool of 2^24 draws at an
offset given by the tensor's name; redrawn rather than held) + k·σ_δ·N(0, 1) (the pool at an offset
given by name and step), so consecutive checkpoints differ in almost every weight (96%; bfloat16 rounding absorbs the rest). `check_keys` proves the key list and shapes equal those HF's own `save_pretrained` writes,
on a miniature of the same architecture.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

GEOMETRIES = {
    # EleutherAI/pythia-1b config.json (GPT-NeoX, parallel residual, rotary_pct 0.25)
    "pythia-1b": {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 2048,
                  "num_hidden_layers": 16, "num_attention_heads": 8, "intermediate_size": 8192,
                  "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25,
                  "rotary_emb_base": 10000, "use_parallel_residual": True, "tie_word_embeddings": False,
                  "layer_norm_eps": 1e-5, "hidden_act": "gelu", "bos_token_id": 0, "eos_token_id": 0},
    # allenai/OLMoE-1B-7B-0924 config.json (64 experts, top-8, q/k RMSNorm over the whole width)
    "olmoe-1b-7b": {"model_type": "olmoe", "architectures": ["OlmoeForCausalLM"], "hidden_size": 2048,
                    "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
                    "intermediate_size": 1024, "num_experts": 64, "num_experts_per_tok": 8,
                    "vocab_size": 50304, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                    "rms_norm_eps": 1e-5, "clip_qkv": None, "norm_topk_prob": False, "tie_word_embeddings": False,
                    "hidden_act": "silu", "bos_token_id": None, "eos_token_id": 50279, "pad_token_id": 1},
}
SIGMA, SIGMA_DELTA = 0.02, 1e-3


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the checkpoint, in the hub's layout (per-expert MoE keys)."""
    D, L, V, F = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    out: dict[str, tuple[int, ...]] = {}
    if cfg["model_type"] == "gpt_neox":
        out["gpt_neox.embed_in.weight"] = (V, D)
        for i in range(L):
            p = f"gpt_neox.layers.{i}."
            for ln in ("input_layernorm", "post_attention_layernorm"):
                out[p + ln + ".weight"] = out[p + ln + ".bias"] = (D,)
            out[p + "attention.query_key_value.weight"], out[p + "attention.query_key_value.bias"] = (3 * D, D), (3 * D,)
            out[p + "attention.dense.weight"], out[p + "attention.dense.bias"] = (D, D), (D,)
            out[p + "mlp.dense_h_to_4h.weight"], out[p + "mlp.dense_h_to_4h.bias"] = (F, D), (F,)
            out[p + "mlp.dense_4h_to_h.weight"], out[p + "mlp.dense_4h_to_h.bias"] = (D, F), (D,)
        out["gpt_neox.final_layer_norm.weight"] = out["gpt_neox.final_layer_norm.bias"] = (D,)
        out["embed_out.weight"] = (V, D)
        return out
    dh = D // cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    out["model.embed_tokens.weight"] = (V, D)
    for i in range(L):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = out[p + "post_attention_layernorm.weight"] = (D,)
        out[p + "self_attn.q_proj.weight"], out[p + "self_attn.o_proj.weight"] = (D, D), (D, D)
        out[p + "self_attn.k_proj.weight"] = out[p + "self_attn.v_proj.weight"] = (kv * dh, D)
        out[p + "self_attn.q_norm.weight"], out[p + "self_attn.k_norm.weight"] = (D,), (kv * dh,)
        out[p + "mlp.gate.weight"] = (cfg["num_experts"], D)
        for e in range(cfg["num_experts"]):
            q = f"{p}mlp.experts.{e}."
            out[q + "gate_proj.weight"] = out[q + "up_proj.weight"] = (F, D)
            out[q + "down_proj.weight"] = (D, F)
    out["model.norm.weight"] = (D,)
    out["lm_head.weight"] = (V, D)
    return out


_POOL: dict[str, torch.Tensor] = {}


def _tile(n: int, offset: int, scale: float) -> torch.Tensor:
    """n values scale·N(0, 1) in bfloat16: a fixed pool of 2^24 draws read cyclically from `offset`
    (drawing 7e9 fresh values per OLMoE checkpoint would dominate the rehearsal on 2 cores; the screen
    does not care)."""
    key = str(scale)
    if key not in _POOL:
        _POOL[key] = (scale * torch.randn(2**24, generator=torch.Generator().manual_seed(0))).to(torch.bfloat16)
    pool = _POOL[key]
    start = offset % pool.numel()
    reps = (start + n + pool.numel() - 1) // pool.numel()
    return pool.repeat(reps)[start:start + n] if reps > 1 else pool[start:start + n].clone()


def _draw(key: str, shape: tuple[int, ...], step_index: int) -> torch.Tensor:
    """Checkpoint `step_index`'s value of tensor `key` in bfloat16 (see the module docstring)."""
    seed = zlib.crc32(key.encode())
    n = 1
    for d in shape:
        n *= d
    base = _tile(n, seed, SIGMA)
    if len(shape) == 1 and key.endswith("weight"):  # norms near 1, biases near 0
        base += 1.0
    if step_index:
        base += step_index * _tile(n, seed * 7919 + step_index * 104729, SIGMA_DELTA)
    return base.view(shape)


def write_checkpoint(folder: Path, cfg: dict, step_index: int, shard_bytes: int = 2 * 10**9) -> int:
    """One checkpoint folder; returns its weight bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(cfg)
    groups: list[list[str]] = [[]]
    size = 0
    for k, s in shapes.items():
        n = 2 * int(torch.tensor(s).prod())
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    weight_map, total = {}, 0
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: _draw(k, shapes[k], step_index) for k in keys}
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}, indent=2))
    return total


def write_series(root: Path, geometry: str, steps: list[int], shard_bytes: int = 10**9) -> list[Path]:
    from headscreen.testing import save_word_tokenizer

    cfg = GEOMETRIES[geometry]
    folders = []
    for i, step in enumerate(steps):
        folders.append(root / f"step{step}")
        write_checkpoint(folders[-1], cfg, i, shard_bytes)
    save_word_tokenizer(root, vocab=cfg["vocab_size"])
    return folders


def check_keys(geometry: str, tmp: Path) -> None:
    """`tensor_shapes` equals what HF's save_pretrained writes for a miniature of `geometry` (same layer
    and expert counts, small widths). Raises AssertionError naming the difference."""
    import transformers as tf
    from safetensors import safe_open

    cfg = dict(GEOMETRIES[geometry])
    cfg.update(hidden_size=64, intermediate_size=96, vocab_size=128, num_attention_heads=4,
               **({"num_key_value_heads": 4} if "num_key_value_heads" in cfg else {}))
    cls = {"gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM), "olmoe": (tf.OlmoeConfig, tf.OlmoeForCausalLM)}
    ccls, mcls = cls[cfg["model_type"]]
    model = mcls(ccls(**{k: v for k, v in cfg.items() if k != "model_type"}))
    model.save_pretrained(tmp, safe_serialization=True)
    written = {}
    for f in tmp.glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            written.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    mine = tensor_shapes(cfg)
    assert written == mine, (sorted(set(written) ^ set(mine))[:5],
                             [k for k in mine if k in written and mine[k] != written[k]][:5])
