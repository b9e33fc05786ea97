"""The text rows of a synthetic series when its `corpus` is a real text corpus (headscreen/synthetic/corpora.py).

`prepare_tokenizer(cfg, out)` gives the `tokenizers.Tokenizer` the series trains with: the one already
saved in `out` when the series is resumed, else `cfg.tokenizer` loaded, else a byte-level BPE of
`cfg.vocab_size` ids trained on the corpus's first `cfg.tokenizer_docs` documents (streamed).
`CorpusText` hands out packed rows in order; its `position` is recorded with every checkpoint so a
resumed run continues the stream at exactly the row the uninterrupted run would have read next.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import torch
from jaxtyping import Int

from headscreen.synthetic.config import TrainConfig
from headscreen.synthetic.corpora import CorpusError, CorpusSource, PackedRows, iter_documents
from headscreen.synthetic.tokenizer import BOS_ID, EOS_ID, load_text_tokenizer, train_bpe


def corpus_source(cfg: TrainConfig) -> CorpusSource:
    if cfg.corpus is None:
        raise ValueError("this recipe uses the built-in story grammar (train.corpus is null)")
    return CorpusSource(cfg.corpus, split=cfg.corpus_split, text_column=cfg.text_column)


def _texts(src: CorpusSource, n: int) -> Iterator[str]:
    """The first `n` documents as strings. The first one is read here, in Python, so that a corpus error
    (no such column, empty corpus) is raised as itself and not from inside the tokenizer trainer."""
    docs = itertools.islice(iter_documents(src), n)
    first = next(docs)  # iter_documents raises CorpusError on an empty corpus: never StopIteration
    for doc in itertools.chain([first], docs):
        if not isinstance(doc, str):
            raise CorpusError(f"corpus {src.source!r} is pre-tokenized (column {src.text_column!r} holds token ids): "
                              "set train.tokenizer to the tokenizer.json its ids come from")
        yield doc


def prepare_tokenizer(cfg: TrainConfig, out: Path | None = None, *, resume: bool = False):
    """The series' tokenizer (module doc); `resume` reads the one saved in `out`."""
    if resume and out is not None and (out / "tokenizer.json").is_file():
        return load_text_tokenizer(out, cfg.vocab_size)
    if cfg.tokenizer is not None:
        return load_text_tokenizer(cfg.tokenizer, cfg.vocab_size)
    texts = _texts(corpus_source(cfg), cfg.tokenizer_docs)
    first = next(texts)
    return train_bpe(itertools.chain([first], texts), cfg.vocab_size)


class CorpusText:
    """Packed text rows of `cfg.corpus`, read once and in order (one stream per series session)."""

    def __init__(self, cfg: TrainConfig, tokenizer, start: tuple[int, int] = (0, 0)):
        self.cfg, self.src = cfg, corpus_source(cfg)
        self._encode = (lambda s: tokenizer.encode(s, add_special_tokens=False).ids) if tokenizer is not None else None
        self.stream = self._rows(start)

    def _rows(self, start: tuple[int, int]) -> PackedRows:
        return PackedRows(self.src, self._encode, ctx=self.cfg.ctx, vocab_size=self.cfg.vocab_size,
                          bos_id=BOS_ID, eos_id=EOS_ID, start=start)

    @property
    def position(self) -> list[int]:
        return list(self.stream.position)

    def take(self, n_rows: int) -> Int[torch.Tensor, "n_rows ctx"]:
        return self.stream.take(n_rows)

    def eval_rows(self, n_rows: int) -> Int[torch.Tensor, "n_rows ctx"]:
        """The corpus's first `n_rows` rows (a fresh stream): the fixed diagnostic text batch."""
        return self._rows((0, 0)).take(n_rows)
