"""`TrainConfig`: everything that determines a synthetic training series, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headscreen.config.core import ConfigError, from_mapping
from headscreen.config.optimizer import OptimizerSettings
from headscreen.config.yamlfile import read_yaml
from headscreen.synthetic.tokenizer import MIN_BPE_VOCAB, MIN_VOCAB_SIZE

ARCHITECTURES = ("gpt_neox", "llama")
ATTENTIONS = ("sdpa", "eager")  # HF attention kernels for the training steps


@dataclass(frozen=True)
class TrainConfig:
    # model
    architecture: str = "gpt_neox"  # "gpt_neox" or "llama" (HF classes, saved as safetensors)
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    head_dim: int | None = None  # per-head width; None -> d_model // n_heads (llama may set it apart)
    ctx: int = 128  # sequence length of every training sequence (= max_position_embeddings)
    vocab_size: int = 128  # total ids: 4 specials + the story grammar's words + abstract tokens
    attn_only: bool = True  # MLPs zero-initialised and frozen: their output is exactly 0
    d_mlp: int | None = None  # MLP width when attn_only is False; None -> 4 * d_model
    rotary_fraction: float = 1.0  # share of each head's dims that RoPE rotates (gpt_neox only)
    rope_theta: float = 10000.0
    # HF attention kernel of the training steps: "sdpa" (fused; 2x faster at 16 heads of d_head 8 on a
    # CPU) or "eager". The per-checkpoint diagnostics always run eager (they read the patterns).
    attention: str = "sdpa"
    # optimisation
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01  # applied to matrices and embeddings, not to norms or biases
    warmup: int = 50  # linear warm-up steps, then constant lr
    grad_clip: float | None = 1.0  # max global grad norm; None disables clipping
    batch_size: int = 32
    steps: int = 2000
    # checkpoints: step 0, powers of two up to log_checkpoints_until, then every checkpoint_every
    # steps, and always the last step
    log_checkpoints_until: int = 32
    checkpoint_every: int = 40
    # corpus
    story_fraction: float = 0.0  # share of sequences that are grammar stories; the rest are repeats
    min_span: int = 10  # repeated span length n ~ U[min_span, max_span]
    # share of repeat sequences laid out [BOS, filler, span, filler, span, filler] with random offsets
    # (the rest start the first copy at position 1): induction at any position and distance, as in
    # the retrieval probe. The span tokens never occur in the filler before the second copy.
    scattered_fraction: float = 0.0
    max_span: int | None = None  # None -> (ctx - 1) // 2
    zipf_exponent: float = 1.0  # filler after the second copy ~ Zipf(zipf_exponent) over content ids
    # Repeat rows draw their filler without replacement (Zipf-weighted) and never from the span, so
    # every repeated token in a row is a planted repeat and a single-token match always predicts.
    # With i.i.d. filler most repeats are chance ones that predict nothing, and a model learns to
    # distrust a lone match, as in the retrieval probe. Needs vocab_size - 4 >= ctx - 1 - min_span.
    distinct_filler: bool = False
    eval_batch_size: int = 32  # sequences of the fixed diagnostic batches evaluated at each checkpoint
    # text corpus of the story rows (headscreen/synthetic/corpora.py): None -> the built-in story grammar (offline
    # default); else a hub dataset name (e.g. roneneldan/TinyStories) or a local .txt / .jsonl /
    # .parquet / .arrow file or folder, streamed. Rows pack the token stream: [BOS, next ctx-1 tokens].
    corpus: str | None = None
    corpus_split: str = "train"  # split of a hub dataset
    text_column: str = "text"  # column of strings (or of token-id lists) in a JSON-lines / Parquet / Arrow corpus
    # tokenizer of a text corpus: None -> a byte-level BPE of vocab_size ids trained on the corpus's first
    # tokenizer_docs documents (saved with the series); else a tokenizer.json (or its folder) whose
    # specials <bos> <eos> <pad> <unk> are ids 0-3
    tokenizer: str | None = None
    tokenizer_docs: int = 20000
    # reproducibility
    seed: int = 0
    threads: int = 1  # torch.set_num_threads; bitwise-reproducible checkpoints need a fixed value

    def __post_init__(self) -> None:
        _validate(self)

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train") -> TrainConfig:
        """Build from plain data (YAML/JSON) with the config core (unknown keys and wrong types raise
        ConfigError). An int given for a float field is stored as a float: the series records its recipe
        with `to_dict`, and every series so far was written that way."""
        return from_mapping(cls, d, where, floats=True)

    @classmethod
    def from_yaml(cls, path: str | Path, section: str = "train") -> TrainConfig:
        """The `section` mapping of a model_configs/*.yaml file (other top-level keys are ignored)."""
        doc = read_yaml(path)
        if not isinstance(doc, dict) or not isinstance(doc.get(section), dict):
            raise ConfigError(f"{path} has no {section!r} mapping: add a top-level '{section}:' with TrainConfig fields")
        try:
            return cls.from_dict(doc[section])
        except ConfigError as err:
            raise ConfigError(f"{path} [{section}]: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    # ----------------------------------------------------------------------------------------------
    @property
    def optimizer(self) -> OptimizerSettings:
        """lr, betas, weight_decay and grad_clip (AdamW; decay on matrices and embeddings only)."""
        return OptimizerSettings.of(self, "train")

    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def span_max(self) -> int:
        return (self.ctx - 1) // 2 if self.max_span is None else self.max_span

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.ctx

    def checkpoint_steps(self) -> tuple[int, ...]:
        """Log-spaced start (0, 1, 2, 4, ... <= log_checkpoints_until), then linear, then the last step."""
        steps = {0, self.steps}
        p = 1
        while p <= min(self.log_checkpoints_until, self.steps):
            steps.add(p)
            p *= 2
        steps.update(range(self.checkpoint_every, self.steps + 1, self.checkpoint_every))
        return tuple(sorted(steps))


def _validate(c: TrainConfig) -> None:
    def fail(field: str, fix: str) -> None:
        raise ConfigError(f"train config field {field!r} = {getattr(c, field)!r} is invalid: {fix}")

    if c.architecture not in ARCHITECTURES:
        fail("architecture", f"use one of {ARCHITECTURES}")
    if c.attention not in ATTENTIONS:
        fail("attention", f"use one of {ATTENTIONS}")
    for name in ("n_layers", "d_model", "n_heads", "batch_size", "steps", "checkpoint_every",
                 "eval_batch_size", "threads", "tokenizer_docs"):
        if getattr(c, name) < 1:
            fail(name, "use a positive integer")
    for name in ("warmup", "log_checkpoints_until", "seed"):
        if getattr(c, name) < 0:
            fail(name, "use an integer >= 0")
    if c.head_dim is not None:
        if c.head_dim < 2 or c.head_dim % 2:
            fail("head_dim", "use an even width >= 2 (rotary embeddings rotate pairs) or null (d_model / n_heads)")
        if c.architecture != "llama":
            fail("head_dim", "only llama decouples the head width from d_model / n_heads; use null for gpt_neox")
    else:
        if c.d_model % c.n_heads:
            fail("d_model", f"must be divisible by n_heads={c.n_heads}")
        if c.d_head % 2:
            fail("d_model", f"d_model / n_heads = {c.d_head} must be even for rotary embeddings")
    if c.d_mlp is not None and c.d_mlp < 1:
        fail("d_mlp", "use a positive integer or null (4 * d_model)")
    if not 0.0 < c.rotary_fraction <= 1.0:
        fail("rotary_fraction", "use a value in (0, 1]; 1.0 rotates every head dimension")
    if c.architecture == "llama" and c.rotary_fraction != 1.0:
        fail("rotary_fraction", "llama always rotates every dimension: leave it at 1.0 or use gpt_neox")
    if c.rope_theta <= 0:
        fail("rope_theta", "use a positive base such as 10000")
    for name in ("corpus", "tokenizer", "corpus_split", "text_column"):
        if getattr(c, name) is not None and not str(getattr(c, name)).strip():
            fail(name, "use a non-empty name" + (" or null" if name in ("corpus", "tokenizer") else ""))
    if c.corpus is not None and c.tokenizer is None and c.vocab_size < MIN_BPE_VOCAB:
        fail("vocab_size", f"a BPE tokenizer trained on the corpus needs >= {MIN_BPE_VOCAB} ids (4 specials + 256 bytes)")
    if c.vocab_size < MIN_VOCAB_SIZE:
        fail("vocab_size", f"the specials and story grammar need >= {MIN_VOCAB_SIZE} ids (128 is the default)")
    OptimizerSettings.of(c, "train")
    if not 0.0 <= c.story_fraction <= 1.0:
        fail("story_fraction", "use a share in [0, 1]")
    if not 0.0 <= c.scattered_fraction <= 1.0:
        fail("scattered_fraction", "use a share in [0, 1]")
    if c.ctx < 8:
        fail("ctx", "use a context of at least 8 tokens")
    if c.min_span < 2:
        fail("min_span", "use a span length >= 2 (the second copy must have a predictable token)")
    if c.span_max < c.min_span:
        fail("max_span" if c.max_span is not None else "min_span",
             f"need min_span <= max_span (max_span defaults to (ctx-1)//2 = {(c.ctx - 1) // 2})")
    if 1 + 2 * c.span_max > c.ctx:
        fail("max_span", f"two copies plus BOS must fit in ctx={c.ctx}: use max_span <= {(c.ctx - 1) // 2}")
    if c.span_max > c.vocab_size - 4:
        fail("max_span", f"spans use distinct tokens: use max_span <= vocab_size - 4 = {c.vocab_size - 4}")
    if c.zipf_exponent < 0:
        fail("zipf_exponent", "use a value >= 0 (0 gives uniform filler)")
    if c.distinct_filler and c.vocab_size - 4 < c.ctx - 1 - c.min_span:
        fail("distinct_filler", f"a row of distinct tokens needs vocab_size - 4 >= ctx - 1 - min_span = "
                                f"{c.ctx - 1 - c.min_span}: raise vocab_size to >= {c.ctx + 3 - c.min_span}")
