"""One small adapter per architecture: which tensors hold attention, and how to split them per head.

Each adapter maps a checkpoint's `config.json` to an `AttentionGeometry` and reads only the attention
tensors of every layer into a `HeadWeights` record (TransformerLens shapes; see weights.py).

Layouts (verified against `TransformerBridge.W_*` in tests/test_series.py):
- GPT-2: Conv1D `c_attn.weight` is [d_model, 3·d_model] = [Q | K | V] contiguous along dim 1;
  `c_proj.weight` is [d_model (in = heads·d_head), d_model].
- GPT-NeoX / Pythia: `query_key_value.weight` rows are interleaved per head [q_h0 k_h0 v_h0 q_h1 ...];
  contiguous slicing is wrong. `dense.weight` is nn.Linear [d_model, heads·d_head].
- Llama / OLMo / OLMo2 / OLMoE: separate nn.Linear q/k/v/o_proj ([out, in]); GQA has fewer K/V heads.
  OLMo2/OLMoE also have q_norm/k_norm over the whole heads·d_head width (not per head), so W_Q/W_K
  per head do not fully determine QK there; they are still the head's parameters.
- headscreen-grok (the toy models of headscreen.grokking): `blocks.{l}.attn.W_Q/W_K/W_V/W_O` and
  `b_Q/b_K/b_V/b_O` are stored in TransformerLens shapes already; config.json names n_layers,
  n_heads, d_model, d_head. The published encoder (grokking/models/encoder.py) keeps torch's packed layout
  `layers.{l}.self_attn.in_proj_weight` [Q; K; V rows] and `out_proj.weight`, split per head on read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange

from headscreen.series.errors import CorruptCheckpoint, NonFiniteWeights, UnsupportedArchitecture
from headscreen.series.finite import require_finite
from headscreen.series.tensors import TensorSource
from headscreen.series.weights import HeadWeights, LayeredHeadWeights

GROK = "headscreen-grok"  # model_type of headscreen.grokking's snapshots


@dataclass(frozen=True)
class AttentionGeometry:
    architecture: str  # one of SUPPORTED
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    n_ctx: int | None = None
    vocab_size: int | None = None


def _geometry(arch: str, cfg: dict, where: str = "config.json") -> AttentionGeometry:
    def need(key: str):
        if key not in cfg:
            raise UnsupportedArchitecture(f"{where}: a {arch} config lacks {key!r}")
        return _positive(key, cfg[key])

    def _positive(key: str, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CorruptCheckpoint(f"{where}: {key} must be a positive integer, got {value!r}")
        return value

    def opt(key: str):
        return None if cfg.get(key) is None else _positive(key, cfg[key])

    if arch == GROK:
        h = need("n_heads")
        return AttentionGeometry(arch, need("n_layers"), h, h, need("d_model"), need("d_head"), cfg.get("n_ctx"),
                                 cfg.get("vocab_size"))
    if arch == "gpt2":
        d, h = need("n_embd"), need("n_head")
        if d % h:
            raise CorruptCheckpoint(f"{where}: n_embd {d} is not a multiple of n_head {h}")
        return AttentionGeometry(arch, need("n_layer"), h, h, d, d // h, opt("n_positions"), opt("vocab_size"))
    d, h = need("hidden_size"), need("num_attention_heads")
    kv = h if arch == "gpt_neox" else (opt("num_key_value_heads") or h)
    dh = opt("head_dim") or d // h
    if h % kv or (not cfg.get("head_dim") and d % h):
        raise CorruptCheckpoint(f"{where}: {h} heads do not split into {kv} K/V heads of width {dh} over d_model {d}")
    return AttentionGeometry(arch, need("num_hidden_layers"), h, kv, d, dh, opt("max_position_embeddings"),
                             opt("vocab_size"))


def _first_present(src: TensorSource, candidates: list[str]) -> str:
    keys = set(src.keys())
    for c in candidates:
        if c in keys:
            return c
    raise CorruptCheckpoint(f"checkpoint {src.folder}: none of the tensors {candidates} is present")


def _read_gpt2(src: TensorSource, g: AttentionGeometry, layer: int) -> dict[str, torch.Tensor]:
    prefix = _first_present(src, [f"transformer.h.{layer}.attn.c_attn.weight", f"h.{layer}.attn.c_attn.weight"])
    p = prefix.removesuffix("c_attn.weight")
    H, dh = g.n_heads, g.d_head
    w = src.read(p + "c_attn.weight")  # [D, 3·H·dh]
    q, k, v = w.split(H * dh, dim=1)
    out = {n: rearrange(t, "d (h k) -> h d k", h=H, k=dh) for n, t in zip(("W_Q", "W_K", "W_V"), (q, k, v), strict=True)}
    out["W_O"] = rearrange(src.read(p + "c_proj.weight"), "(h k) d -> h k d", h=H, k=dh)
    keys = set(src.keys())
    if p + "c_attn.bias" in keys:
        bq, bk, bv = src.read(p + "c_attn.bias").split(H * dh)
        out.update({n: rearrange(b, "(h k) -> h k", h=H, k=dh) for n, b in (("b_Q", bq), ("b_K", bk), ("b_V", bv))})
    if p + "c_proj.bias" in keys:
        out["b_O"] = src.read(p + "c_proj.bias")
    return out


def _read_neox(src: TensorSource, g: AttentionGeometry, layer: int) -> dict[str, torch.Tensor]:
    p = f"gpt_neox.layers.{layer}.attention."
    H, dh = g.n_heads, g.d_head
    w = rearrange(src.read(p + "query_key_value.weight"), "(h j k) d -> j h d k", h=H, j=3, k=dh)  # rows interleaved per head
    out = {n: w[i] for i, n in enumerate(("W_Q", "W_K", "W_V"))}
    out["W_O"] = rearrange(src.read(p + "dense.weight"), "d (h k) -> h k d", h=H, k=dh)
    keys = set(src.keys())
    if p + "query_key_value.bias" in keys:
        b = rearrange(src.read(p + "query_key_value.bias"), "(h j k) -> j h k", h=H, j=3, k=dh)
        out.update(b_Q=b[0], b_K=b[1], b_V=b[2])
    if p + "dense.bias" in keys:
        out["b_O"] = src.read(p + "dense.bias")
    return out


def _read_llama_like(src: TensorSource, g: AttentionGeometry, layer: int) -> dict[str, torch.Tensor]:
    p = f"model.layers.{layer}.self_attn."
    H, KV, dh = g.n_heads, g.n_kv_heads, g.d_head
    out = {
        "W_Q": rearrange(src.read(p + "q_proj.weight"), "(h k) d -> h d k", h=H, k=dh),
        "W_K": rearrange(src.read(p + "k_proj.weight"), "(h k) d -> h d k", h=KV, k=dh),
        "W_V": rearrange(src.read(p + "v_proj.weight"), "(h k) d -> h d k", h=KV, k=dh),
        "W_O": rearrange(src.read(p + "o_proj.weight"), "d (h k) -> h k d", h=H, k=dh),
    }
    keys = set(src.keys())
    for name, proj, heads in (("b_Q", "q_proj", H), ("b_K", "k_proj", KV), ("b_V", "v_proj", KV)):
        if p + f"{proj}.bias" in keys:
            out[name] = rearrange(src.read(p + f"{proj}.bias"), "(h k) -> h k", h=heads, k=dh)
    if p + "o_proj.bias" in keys:
        out["b_O"] = src.read(p + "o_proj.bias")
    return out


def _read_grok(src: TensorSource, g: AttentionGeometry, layer: int) -> dict[str, torch.Tensor]:
    keys = set(src.keys())
    packed = f"layers.{layer}.self_attn."
    if packed + "in_proj_weight" in keys:
        return _read_packed(src, g, packed)
    p = f"blocks.{layer}.attn."
    return {n: src.read(p + n) for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
            if n.startswith("W_") or p + n in keys}


def _read_packed(src: TensorSource, g: AttentionGeometry, p: str) -> dict[str, torch.Tensor]:
    """torch.nn.MultiheadAttention layout (the published encoder): in_proj_weight [3·H·dh, D] = [W_q; W_k; W_v]
    as nn.Linear weights, head h in rows h·dh..(h+1)·dh of each block; out_proj.weight [D, H·dh]."""
    H, dh = g.n_heads, g.d_head
    q, k, v = src.read(p + "in_proj_weight").split(H * dh, dim=0)
    out = {n: rearrange(t, "(h k) d -> h d k", h=H, k=dh) for n, t in zip(("W_Q", "W_K", "W_V"), (q, k, v), strict=True)}
    out["W_O"] = rearrange(src.read(p + "out_proj.weight"), "d (h k) -> h k d", h=H, k=dh)
    bq, bk, bv = src.read(p + "in_proj_bias").split(H * dh)
    out.update({n: rearrange(b, "(h k) -> h k", h=H, k=dh) for n, b in (("b_Q", bq), ("b_K", bk), ("b_V", bv))})
    out["b_O"] = src.read(p + "out_proj.bias")
    return out


_READERS: dict[str, Callable[[TensorSource, AttentionGeometry, int], dict[str, torch.Tensor]]] = {
    "gpt2": _read_gpt2,
    "gpt_neox": _read_neox,
    "llama": _read_llama_like,
    "olmo": _read_llama_like,
    "olmo2": _read_llama_like,
    "olmoe": _read_llama_like,
    GROK: _read_grok,
}
SUPPORTED = tuple(_READERS)

# HF `architectures` class names, for configs whose model_type is missing or unusual.
_ARCH_CLASSES = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "LlamaForCausalLM": "llama",
    "OlmoForCausalLM": "olmo",
    "Olmo2ForCausalLM": "olmo2",
    "OlmoeForCausalLM": "olmoe",
}


def detect_architecture(cfg: dict, where: str = "config.json") -> str:
    """The adapter name for an HF config dict; an error lists the supported ones."""
    mt = cfg.get("model_type")
    if mt in _READERS:
        return mt
    for cls in cfg.get("architectures") or []:
        if cls in _ARCH_CLASSES:
            return _ARCH_CLASSES[cls]
    raise UnsupportedArchitecture(
        f"{where}: unsupported architecture (model_type={mt!r}, architectures={cfg.get('architectures')}); "
        f"supported model_types: {', '.join(SUPPORTED)}"
    )


def geometry_from_config(cfg: dict, where: str = "config.json") -> AttentionGeometry:
    return _geometry(detect_architecture(cfg, where), cfg, where)


def expected_shapes(g: AttentionGeometry) -> dict[str, tuple[int, ...]]:
    """Tensor name -> the shape config.json implies, for every attention tensor and the embeddings.

    GPT-2 names are given with and without the `transformer.` prefix (both occur in the wild).
    """
    D, H, KV, dh, V = g.d_model, g.n_heads, g.n_kv_heads, g.d_head, g.vocab_size
    out: dict[str, tuple[int, ...]] = {}
    for layer in range(g.n_layers):
        if g.architecture == "gpt2":
            for pre in ("transformer.", ""):
                p = f"{pre}h.{layer}.attn."
                out.update({p + "c_attn.weight": (D, 3 * H * dh), p + "c_attn.bias": (3 * H * dh,),
                            p + "c_proj.weight": (H * dh, D), p + "c_proj.bias": (D,)})
        elif g.architecture == "gpt_neox":
            p = f"gpt_neox.layers.{layer}.attention."
            out.update({p + "query_key_value.weight": (3 * H * dh, D), p + "query_key_value.bias": (3 * H * dh,),
                        p + "dense.weight": (D, H * dh), p + "dense.bias": (D,)})
        else:
            p = f"model.layers.{layer}.self_attn."
            for proj, heads in (("q_proj", H), ("k_proj", KV), ("v_proj", KV)):
                out.update({p + f"{proj}.weight": (heads * dh, D), p + f"{proj}.bias": (heads * dh,)})
            out.update({p + "o_proj.weight": (D, H * dh), p + "o_proj.bias": (D,)})
    if V is not None:
        embeddings = {"gpt2": ("transformer.wte.weight", "wte.weight"),
                      "gpt_neox": ("gpt_neox.embed_in.weight", "embed_out.weight")}
        for name in embeddings.get(g.architecture, ("model.embed_tokens.weight", "lm_head.weight")):
            out[name] = (V, D)
    return out


def check_shapes(claimed: dict[str, tuple[int, ...]], g: AttentionGeometry, where: str) -> None:
    """Compare the shapes a checkpoint claims (from its headers, before any read) with config.json's."""
    from headscreen.series.errors import ShapeMismatch

    want = expected_shapes(g)
    for name, shape in claimed.items():
        if name in want and tuple(shape) != want[name]:
            raise ShapeMismatch(
                f"checkpoint {where}: tensor {name!r} has shape {list(shape)} but its config.json "
                f"({g.n_layers} layers, {g.n_heads} heads of width {g.d_head}, d_model {g.d_model}) implies "
                f"{list(want[name])}; the weights were reshaped or belong to another config — re-save this checkpoint"
            )


class _Mapped:
    """The source the readers see when the files are mapped: each tensor as a view of its shard's map
    (`TensorSource.view`), or read into memory of its own where it cannot be mapped."""

    def __init__(self, src: TensorSource) -> None:
        self.src, self.folder = src, src.folder
        self.read_now: list[tuple[str, torch.Tensor]] = []  # (key, tensor as read) of the current layer

    def keys(self) -> list[str]:
        return self.src.keys()

    def read(self, key: str) -> torch.Tensor:
        t = self.src.view(key)
        if t is None:
            t = self.src.read(key)
        self.read_now.append((key, t))
        return t


def _check_read(read_now: list[tuple[str, torch.Tensor]], parts: dict[str, torch.Tensor], where: str) -> None:
    """NaN/Inf in a layer's tensors, checked on each tensor as read (contiguous: the fast check); the
    error names the part (W_Q, …), as the stacking path does."""
    for key, t in read_now:
        try:
            require_finite(t, f"{where} {key}")
        except NonFiniteWeights:
            for name, view in parts.items():
                require_finite(view, f"{where} {name}")
            raise


def read_head_weights(
    src: TensorSource, geometry: AttentionGeometry, dtype: torch.dtype | None = torch.float32, *, check: bool = True,
) -> HeadWeights | LayeredHeadWeights:
    """Read every layer's attention tensors (and nothing else) into a `HeadWeights` record.

    dtype: the dtype of the record (contiguous tensors, converted while stacking). None keeps the
    stored dtype (fp16 stays fp16) and reads nothing into memory: the record is a `LayeredHeadWeights`
    of views of the shards' memory maps (`TensorSource.view`; a tensor that cannot be mapped is read
    into memory of its own), one `HeadWeights` per layer, since the layers' tensors lie at unrelated
    places in the files; e.g. GPT-NeoX's W_Q is a strided view of the fused QKV rows, as a booted
    model's weights would be. The finite check touches each page once; the fused sketch pass then
    reads the bytes from the page cache, with no copy in between (benchmarks/bench_extraction.py).
    Raises `NonFiniteWeights` naming the checkpoint, layer and tensor on NaN/Inf.
    check=False (as stored only): the weight matrices are not checked here but handed on unchecked
    (`LayeredHeadWeights.check_finite`), for the fused sketch pass, which reads every value once and
    checks its sums instead (a second pass over 512 MB per checkpoint at 1B); biases are still checked.
    Memory: with a dtype, one checkpoint's attention tensors (4·n_layers·d_model·heads·d_head floats)
    plus one layer's tensors; as stored, the mapped pages (the page cache's own, reclaimable).
    """
    reader = _READERS[geometry.architecture]
    where = f"{src.folder}: layer"
    if dtype is None:
        views = _Mapped(src)
        per_layer = []
        for layer in range(geometry.n_layers):
            views.read_now = []
            parts = reader(views, geometry, layer)
            if check:
                _check_read(views.read_now, parts, f"{where} {layer}")
            else:  # the biases only (small); the weight matrices are the consumer's to check
                for name, t in parts.items():
                    if name.startswith("b_"):
                        require_finite(t, f"{where} {layer} {name}")
            per_layer.append(HeadWeights(**{name: t.unsqueeze(0) for name, t in parts.items()}))
        return LayeredHeadWeights(tuple(per_layer), unchecked=None if check else where)
    if not check:
        raise ValueError("read_head_weights: check=False is for the as-stored read (dtype=None) only")
    stacked: dict[str, torch.Tensor] = {}
    for layer in range(geometry.n_layers):
        parts = reader(src, geometry, layer)
        for name, t in parts.items():
            if layer == 0:
                stacked[name] = torch.empty((geometry.n_layers, *t.shape), dtype=dtype)
            dst = stacked[name][layer]
            dst.copy_(t)  # into the stacked record (parts are often strided views of the read tensor)
            require_finite(dst, f"{where} {layer} {name}")  # on the contiguous copy: the fast path
        del parts
        src.close()  # drop the shard handles after each layer
    return HeadWeights(**stacked)
