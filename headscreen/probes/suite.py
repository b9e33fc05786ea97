"""`ProbeSuite`: the probe batches a screen runs at every checkpoint, as configured data.

The same batches (same seeds) are used at every checkpoint, so selectivity is comparable across
the series; they are built once per screen and recorded in the run manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from headscreen.probes.batch import ProbeBatch
from headscreen.probes.prompts import check_fits, repeated_tokens_probe, retrieval_probe, text_probe

AUTO = "auto"
#: the published retrieval-probe length and natural-vocabulary id range (docs/methods.md, "Probe prompts")
PUBLISHED_SEQ_LEN = 256
PUBLISHED_TOKEN_RANGE = (100, 10000)
PUBLISHED_REPEATED_SPAN = 50


@dataclass(frozen=True)
class ProbeSuite:
    """Probe settings (model_configs/*.yaml, section `probes`).

    seq_len:        T of the retrieval and text probes; "auto": min(256, the model's n_ctx).
    token_range:    [lo, hi) ids for random tokens; "auto": the vocabulary without its special ids at
                    either end, cut to [100, 10000) when the vocabulary has >= 10000 ids.
    bos_id:         prepend this BOS id at position 0, or None (no BOS; position 0 is an ordinary token);
                    "auto": the tokenizer's BOS id when the tokenizer puts it before every text it
                    encodes (as the model saw in training), else None.
    n_retrieval:    examples of the retrieval probe (published: 2000; 500 for 1B-scale first passes).
    pair_range:     [lo, hi) of the position of the [A, B] pair (clipped to the sequence).
    n_repeated:     examples of the repeated-random-tokens probe (0 disables it).
    repeated_span:  n of [r_1..r_n, r_1..r_n]; "auto": min(50, what fits in seq_len).
    text_file:      a local corpus file for a natural-text probe (needs a tokenizer), or None: UTF-8 text
                    (one document per paragraph) or the `text` column of JSON lines / Parquet / Arrow.
    n_text:         windows taken from it.
    seed:           seed of every generator (published: 42).
    micro_batch:    examples per forward pass (bounds activation memory).

    "auto" fields are fixed from the model by `for_model` (the screen records the values it chose).
    """

    seq_len: int | str = AUTO
    token_range: tuple[int, int] | str = AUTO
    bos_id: int | str | None = AUTO
    n_retrieval: int = 500
    pair_range: tuple[int, int] = (20, 128)
    n_repeated: int = 64
    repeated_span: int | str = AUTO
    text_file: str | None = None
    n_text: int = 128
    seed: int = 42
    micro_batch: int = 32

    def __post_init__(self):
        if self.n_retrieval < 1:
            raise ValueError(f"n_retrieval={self.n_retrieval}: the retrieval probe needs >= 1 example")
        if self.micro_batch < 1:
            raise ValueError(f"micro_batch={self.micro_batch} must be >= 1")
        if self.n_repeated < 0 or self.n_text < 0:
            raise ValueError("n_repeated and n_text must be >= 0 (0 disables that probe)")
        for name in ("seq_len", "token_range", "bos_id", "repeated_span"):
            v = getattr(self, name)
            if isinstance(v, str) and v != AUTO:
                raise ValueError(f"{name}={v!r}: give a value or {AUTO!r} (chosen from the model)")
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if isinstance(self.seq_len, int) and self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len} must be >= 2")

    def to_dict(self) -> dict:
        return asdict(self)

    def auto_fields(self) -> list[str]:
        return [k for k, v in asdict(self).items() if v == AUTO]

    def for_model(self, *, n_ctx: int | None, d_vocab: int | None, tokenizer=None,
                  hf_config: dict | None = None) -> tuple[ProbeSuite, dict[str, str]]:
        """This suite with every "auto" field fixed from the model, and {field: how it was chosen}."""
        chosen: dict[str, str] = {}
        out: dict = {}
        if self.bos_id == AUTO:
            out["bos_id"], chosen["bos_id"] = _default_bos(tokenizer, d_vocab)
        bos = out.get("bos_id", self.bos_id)
        if self.seq_len == AUTO:
            if n_ctx is None:
                out["seq_len"], chosen["seq_len"] = PUBLISHED_SEQ_LEN, "256 (the model states no context length)"
            else:
                out["seq_len"] = min(PUBLISHED_SEQ_LEN, int(n_ctx))
                chosen["seq_len"] = f"min(256, n_ctx={n_ctx})"
        if self.token_range == AUTO:
            out["token_range"], chosen["token_range"] = _default_token_range(d_vocab, _special_ids(tokenizer, hf_config))
        if self.repeated_span == AUTO:
            room = (out.get("seq_len", self.seq_len) - (bos is not None)) // 2
            out["repeated_span"] = max(2, min(PUBLISHED_REPEATED_SPAN, room))
            chosen["repeated_span"] = f"min(50, (seq_len - BOS) // 2 = {room})"
        return replace(self, **out), chosen

    def build(self, *, n_ctx: int | None, d_vocab: int | None, tokenizer=None) -> dict[str, ProbeBatch]:
        """The batches, checked against the model's context and vocabulary ("auto" fields fixed first)."""
        if self.auto_fields():
            return self.for_model(n_ctx=n_ctx, d_vocab=d_vocab, tokenizer=tokenizer)[0].build(
                n_ctx=n_ctx, d_vocab=d_vocab, tokenizer=tokenizer)
        batches = {
            "retrieval": retrieval_probe(self.n_retrieval, self.seq_len, token_range=self.token_range,
                                         seed=self.seed, bos_id=self.bos_id, pair_range=self.pair_range),
        }
        if self.n_repeated:
            batches["repeated"] = repeated_tokens_probe(self.n_repeated, self.repeated_span,
                                                        token_range=self.token_range, seed=self.seed,
                                                        bos_id=self.bos_id)
        if self.text_file:
            path = Path(self.text_file)
            if not path.exists():
                raise ValueError(f"probes.text_file={self.text_file!r} does not exist; give a local .txt / .jsonl / "
                                 ".parquet / .arrow file (headscreen/synthetic/corpora.py)")
            docs = read_corpus(path)
            batches["text"] = text_probe(docs, tokenizer, self.seq_len, n=self.n_text, seed=self.seed,
                                         bos_id=self.bos_id)
        if n_ctx is not None:
            for b in batches.values():
                check_fits(b, n_ctx, d_vocab)
        return batches


def _special_ids(tokenizer, hf_config: dict | None) -> set[int]:
    """Special token ids the tokenizer and the config name (BOS, EOS, PAD, UNK, added specials)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        v = (hf_config or {}).get(key)
        ids.update(v if isinstance(v, list) else [v] if isinstance(v, int) else [])
    return {int(i) for i in ids if i is not None and int(i) >= 0}


def _default_token_range(d_vocab: int | None, specials: set[int]) -> tuple[tuple[int, int], str]:
    if d_vocab is None:
        return PUBLISHED_TOKEN_RANGE, "[100, 10000) (the model states no vocabulary size)"
    low = [i for i in specials if i < d_vocab // 2]
    high = [i for i in specials if d_vocab // 2 <= i < d_vocab]
    lo, hi = (max(low) + 1 if low else 0), (min(high) if high else d_vocab)
    why = f"the vocabulary ({d_vocab} ids) without the special ids {sorted(specials)} at its ends"
    if d_vocab >= PUBLISHED_TOKEN_RANGE[1]:
        lo, hi = max(lo, PUBLISHED_TOKEN_RANGE[0]), min(hi, PUBLISHED_TOKEN_RANGE[1])
        why += ", cut to the published [100, 10000)"
    return (lo, hi), why


def _default_bos(tokenizer, d_vocab: int | None) -> tuple[int | None, str]:
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None:
        return None, "no BOS (no tokenizer to say whether the model saw one)"
    if bos is None or (d_vocab is not None and bos >= d_vocab):
        return None, "no BOS (the tokenizer has no BOS token inside the vocabulary)"
    try:
        first = tokenizer("a")["input_ids"][:1]
    except Exception:  # a tokenizer that cannot encode plain text: do not guess
        first = []
    if first == [bos]:
        return int(bos), f"the tokenizer's BOS id {bos} (it starts every encoded text)"
    return None, f"no BOS (the tokenizer has BOS id {bos} but does not put it before encoded text)"


def read_corpus(path: Path) -> list[str]:
    """The documents of a local corpus file, through the training corpora's loader (headscreen/synthetic/corpora.py):
    a text file's paragraphs (separated by a blank line, blank ones dropped), or the `text` column of a
    JSON-lines / Parquet / Arrow file. Streamed offline; nothing is cached on disk."""
    from headscreen.synthetic.corpora import read_documents

    return read_documents(path)

