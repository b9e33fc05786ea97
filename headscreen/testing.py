"""Tiny random models of every supported architecture, built and saved locally.

Used by the tests, the benchmarks and the docs: no hub access ever. Norm weights and biases are
perturbed away from their init so that weight-equality checks are not trivially passing.
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHITECTURES = ("gpt2", "gpt_neox", "llama", "olmo", "olmo2", "olmoe")


def _hf_config(arch: str, *, n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, vocab: int, n_ctx: int):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=None, tie_word_embeddings=False)
    if arch == "gpt2":
        cfg = tf.GPT2Config(
            n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=n_ctx, n_inner=2 * d_model,
            **{k: v for k, v in common.items() if k != "pad_token_id"},
        )
        cfg.architectures = ["GPT2LMHeadModel"]
        return cfg, tf.GPT2LMHeadModel
    if arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
            intermediate_size=2 * d_model, max_position_embeddings=n_ctx, rotary_pct=0.25,
            use_parallel_residual=True, **common,
        )
        cfg.architectures = ["GPTNeoXForCausalLM"]
        return cfg, tf.GPTNeoXForCausalLM
    llama_like = dict(
        hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads, intermediate_size=2 * d_model, max_position_embeddings=n_ctx, **common,
    )
    if arch == "llama":
        cfg = tf.LlamaConfig(**llama_like)
        cfg.architectures = ["LlamaForCausalLM"]
        return cfg, tf.LlamaForCausalLM
    if arch == "olmo":
        cfg = tf.OlmoConfig(**llama_like, clip_qkv=8.0)
        cfg.architectures = ["OlmoForCausalLM"]
        return cfg, tf.OlmoForCausalLM
    if arch == "olmo2":
        cfg = tf.Olmo2Config(**llama_like)
        cfg.architectures = ["Olmo2ForCausalLM"]
        return cfg, tf.Olmo2ForCausalLM
    if arch == "olmoe":
        cfg = tf.OlmoeConfig(**llama_like, num_experts=4, num_experts_per_tok=2, clip_qkv=8.0)
        cfg.architectures = ["OlmoeForCausalLM"]
        return cfg, tf.OlmoeForCausalLM
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def build_tiny_model(
    arch: str,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    vocab: int = 512,
    n_ctx: int = 64,
    seed: int = 0,
):
    """A tiny random HF causal LM of `arch` in eval mode, with perturbed norms and biases.

    Llama-style architectures default to GQA with n_kv_heads = n_heads // 2.
    """
    torch.manual_seed(seed)
    if n_kv_heads is None:
        n_kv_heads = n_heads // 2 if arch in ("llama", "olmo", "olmo2", "olmoe") else n_heads
    cfg, cls = _hf_config(
        arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab=vocab, n_ctx=n_ctx
    )
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_word_tokenizer(directory: str | Path, vocab: int = 512) -> Path:
    """Save a word-level HF tokenizer ('<bos>', '<eos>', 't2' ... ) whose ids are 0..vocab-1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    words = {"<bos>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<eos>")
    fast.save_pretrained(directory)
    return directory


def save_tiny_model(directory: str | Path, arch: str, *, with_tokenizer: bool = True, **kwargs) -> Path:
    """Build a tiny model of `arch` and save it (safetensors) plus a tokenizer into `directory`."""
    directory = Path(directory)
    model = build_tiny_model(arch, **kwargs)
    model.save_pretrained(directory, safe_serialization=True)
    if with_tokenizer:
        save_word_tokenizer(directory, vocab=model.config.vocab_size)
    return directory


def save_tiny_series(
    root: str | Path, arch: str, steps: list[int], *, drift: float = 0.01, folder: str = "step{step}",
    max_shard_size: str | None = None, **kwargs
) -> Path:
    """A checkpoint series of `arch` under `root`: one folder per step, each the previous plus Gaussian drift.

    The tokenizer is saved once at the series root. `max_shard_size` (e.g. "30KB") writes sharded
    checkpoints with a safetensors index instead of one model.safetensors.
    """
    root = Path(root)
    model = build_tiny_model(arch, **kwargs)
    gen = torch.Generator().manual_seed(kwargs.get("seed", 0) + 1)
    for i, step in enumerate(steps):
        if i:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(drift * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / folder.format(step=step), safe_serialization=True,
                              **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    save_word_tokenizer(root, vocab=model.config.vocab_size)
    return root


def _local_series_class():
    from headscreen.series import LocalSeries

    return LocalSeries


class DyingSeries(_local_series_class()):
    """A LocalSeries whose reader process kills itself (SIGKILL) when it reads checkpoint `die_at` while
    the file `marker` exists (the file is removed first, so only one reader dies): a worker dying
    mid-screen, for the executor tests."""

    def __init__(self, root, *, die_at: int, marker: str | Path, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.die_at, self.marker = die_at, str(marker)

    def _maybe_die(self, ckpt) -> None:
        import os
        import signal

        if ckpt.step == self.die_at and os.path.exists(self.marker):
            os.unlink(self.marker)
            os.kill(os.getpid(), signal.SIGKILL)

    def boot(self, ckpt, *args, **kwargs):
        self._maybe_die(ckpt)
        return super().boot(ckpt, *args, **kwargs)

    def head_weights(self, ckpt, *args, **kwargs):
        self._maybe_die(ckpt)
        return super().head_weights(ckpt, *args, **kwargs)


def tiny_screen_config(series_root: str | Path, name: str = "tiny", *, validation: bool = True) -> str:
    """A model config (YAML text) that screens a `save_tiny_series` series (vocab >= 128, n_ctx >= 48) in
    seconds: small probes, a 3-checkpoint window, and (with `validation`) a zero-ablation validate with a
    3-set null."""
    text = (f"name: {name}\n"
            f"source: {{kind: local, local_path: {series_root}}}\n"
            "probes: {seq_len: 48, token_range: [4, 120], n_retrieval: 8, pair_range: [4, 20], n_repeated: 4,\n"
            "          repeated_span: 16, micro_batch: 16}\n"
            "spectral: {window: 3, transient_windows: 0}\n")
    return text + ("validation: {ablations: [zero], n_null: 3}\n" if validation else "")
