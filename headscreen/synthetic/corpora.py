"""Text corpora through `datasets`: a hub dataset when online, local files offline, always streamed.

`CorpusSource(source, split, text_column)` names a corpus:
* a local file or folder: `.txt`/`.text`/`.md` (one document per paragraph, blank-line separated),
  `.jsonl`/`.json` (JSON lines), `.parquet`, `.arrow`; a folder takes every file of the one such
  suffix it holds (sorted by name);
* anything else that is not an existing path (e.g. `roneneldan/TinyStories`) is a hub dataset name.
  Only a hub name ever touches the network; a path-like name that does not exist is FileNotFoundError.

`iter_documents(source)` streams the documents (`load_dataset(..., streaming=True)`: an iterable
dataset that reads the files piece by piece), so a corpus far larger than memory is never held.
A document is a string (`text_column` of strings) or a list of token ids (a pre-tokenized column).
`PackedRows` turns a document stream into training rows `[BOS, t_1, ..., t_{ctx-1}]` of one
continuous token stream (documents joined by EOS); it holds at most one row plus the rest of the
current document. `read_documents(path)` reads a small local corpus whole (the text probe).

Errors (`CorpusError`, a ValueError): no such column (the columns found are named), an empty corpus,
a token id beyond the vocabulary, a hub dataset that cannot be reached.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int

#: file suffix -> `datasets` builder
FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
           ".parquet": "parquet", ".arrow": "arrow"}


class CorpusError(ValueError):
    """A corpus that cannot serve as training or probe text; the message names the fix."""


@dataclass(frozen=True)
class CorpusSource:
    source: str  # hub dataset name, or a local file / folder (FORMATS)
    split: str = "train"  # hub datasets only; local files form one split
    text_column: str = "text"  # column of strings or of token-id lists (text files always give "text")

    @property
    def is_local(self) -> bool:
        return Path(self.source).expanduser().exists() or _looks_like_path(self.source)


def _looks_like_path(source: str) -> bool:
    return (source.startswith((".", "/", "~")) or Path(source).suffix.lower() in FORMATS
            or source.count("/") > 1)


def local_files(source: str | Path) -> tuple[str, list[str]]:
    """(builder, files) of a local corpus file or folder; FileNotFoundError / CorpusError otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"corpus {str(source)!r} does not exist; give a local file ({', '.join(FORMATS)}), a "
                                "folder of them, or a hub dataset name such as roneneldan/TinyStories")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in FORMATS)
    kinds = {FORMATS.get(p.suffix.lower()) for p in files}
    if not files or None in kinds:
        raise CorpusError(f"corpus {str(source)!r}: no readable corpus file (the suffixes read are {', '.join(FORMATS)}); "
                          "rename the file or convert it to JSON lines")
    if len(kinds) > 1:
        raise CorpusError(f"corpus folder {str(source)!r} mixes formats {sorted(kinds)}; keep one format per folder")
    return kinds.pop(), [str(p) for p in files]


@contextlib.contextmanager
def _quiet_datasets():
    from datasets.utils import logging as ds_logging

    bar = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar:
            ds_logging.enable_progress_bar()


def open_stream(src: CorpusSource, cache_dir: str | None = None):
    """The corpus as a `datasets.IterableDataset` (streaming: nothing is downloaded or cached whole).
    `cache_dir` (local corpora): where `datasets` puts its lock files (default: its own cache)."""
    from datasets import load_dataset

    if src.is_local:
        builder, files = local_files(src.source)
        extra = {"sample_by": "paragraph"} if builder == "text" else {}
        with _quiet_datasets():
            return load_dataset(builder, data_files=files, split="train", streaming=True, cache_dir=cache_dir, **extra)
    try:
        with _quiet_datasets():
            return load_dataset(src.source, split=src.split, streaming=True)
    except Exception as e:  # the hub client raises many types (connection, 404, gated, offline mode)
        raise CorpusError(f"corpus {src.source!r} (split {src.split!r}) could not be opened from the Hugging Face hub "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); when offline, point the corpus at "
                          "a local .txt / .jsonl / .parquet / .arrow file instead") from e


def iter_documents(src: CorpusSource) -> Iterator[str | list[int]]:
    """Every non-empty document of the corpus, in order, one at a time (module doc)."""
    builder = local_files(src.source)[0] if src.is_local else None
    if builder is not None and all(Path(f).stat().st_size == 0 for f in local_files(src.source)[1]):
        raise CorpusError(f"corpus {src.source!r} is empty (0 bytes); give a corpus with text")
    with tempfile.TemporaryDirectory(prefix="headscreen-corpus-") as cache:  # nothing is left in ~/.cache
        yield from _documents(src, open_stream(src, cache if builder is not None else None),
                              "text" if builder == "text" else src.text_column)


def _documents(src: CorpusSource, ds, column: str) -> Iterator[str | list[int]]:
    n = 0
    for row in ds:
        if column not in row:
            raise CorpusError(f"corpus {src.source!r} has no column {column!r}; the columns found are "
                              f"{sorted(row)}: set text_column to the one holding the text")
        doc = row[column]
        if isinstance(doc, str):
            if not doc.strip():
                continue
        elif isinstance(doc, list | tuple) and all(isinstance(t, int) for t in doc):
            if not doc:
                continue
            doc = list(doc)
        else:
            raise CorpusError(f"corpus {src.source!r}, column {column!r} holds {type(doc).__name__} values; it must "
                              "hold strings (text) or lists of token ids")
        n += 1
        yield doc
    if n == 0:
        raise CorpusError(f"corpus {src.source!r} is empty: it holds no non-empty document in column {column!r}; "
                          "give a corpus with text")


def read_documents(path: str | Path, text_column: str = "text") -> list[str]:
    """Every document of a small local corpus file (the text probe), through the same loader."""
    docs = list(iter_documents(CorpusSource(str(path), text_column=text_column)))
    if not all(isinstance(d, str) for d in docs):
        raise CorpusError(f"corpus {str(path)!r}: the text probe needs text, not token ids")
    return docs


class PackedRows:
    """Rows `[BOS, next ctx-1 tokens]` of the corpus's token stream; documents are joined by `eos_id`.

    `encode(doc) -> ids` tokenizes string documents (token-id documents pass through). Every id is
    checked against `vocab_size`. State held: the document iterator, `buffer` (fewer than ctx-1 tokens
    left over plus one document being read) and the token counts of the documents in it. `position` =
    (documents fully emitted, tokens of the next one already emitted): `PackedRows(..., start=position)`
    continues exactly where this one stands, skipping the emitted documents without tokenizing them.
    """

    def __init__(self, src: CorpusSource, encode: Callable[[str], list[int]] | None, *, ctx: int, vocab_size: int,
                 bos_id: int, eos_id: int, start: tuple[int, int] = (0, 0)):
        self.src, self.encode, self.ctx, self.vocab_size = src, encode, ctx, vocab_size
        self.bos_id, self.eos_id = bos_id, eos_id
        self._docs = iter_documents(src)
        self.documents_read = 0  # documents pulled from the stream so far
        self.buffer: list[int] = []  # tokens not yet emitted
        self._pending: deque[int] = deque()  # token counts (EOS included) of the documents in the buffer
        self._head_emitted = 0  # tokens of the first pending document already emitted
        self._done = 0  # documents fully emitted
        docs, offset = start
        for _ in range(docs):
            self._next_doc()
        self._done = docs
        if offset:
            self._fill(offset + 1)
            del self.buffer[:offset]
            self._head_emitted = offset

    @property
    def position(self) -> tuple[int, int]:
        return (self._done, self._head_emitted)

    def _next_doc(self) -> str | list[int]:
        try:
            doc = next(self._docs)
        except StopIteration:
            raise CorpusError(f"corpus {self.src.source!r} ran out after {self.documents_read} documents; give a larger "
                              "corpus or train fewer steps") from None
        self.documents_read += 1
        return doc

    def _fill(self, n: int) -> None:
        while len(self.buffer) < n:
            ids = self._ids(self._next_doc())
            self.buffer.extend(ids)
            self.buffer.append(self.eos_id)
            self._pending.append(len(ids) + 1)

    def _ids(self, doc: str | list[int]) -> list[int]:
        if isinstance(doc, str):
            if self.encode is None:
                raise CorpusError(f"corpus {self.src.source!r} holds text but no tokenizer was given")
            ids = self.encode(doc)
        else:
            ids = doc
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise CorpusError(f"corpus {self.src.source!r}, document {self.documents_read}: token id {bad} is beyond "
                              f"the vocabulary (vocab_size {self.vocab_size}); use a tokenizer of at most "
                              f"{self.vocab_size} ids or raise vocab_size")
        return ids

    def take(self, n_rows: int) -> Int[torch.Tensor, "n_rows ctx"]:
        body = self.ctx - 1
        rows = []
        for _ in range(n_rows):
            self._fill(body)
            rows.append([self.bos_id, *self.buffer[:body]])
            del self.buffer[:body]
            self._advance(body)
        return torch.tensor(rows, dtype=torch.long).reshape(n_rows, self.ctx)

    def _advance(self, n: int) -> None:
        while n:
            left = self._pending[0] - self._head_emitted
            if left > n:
                self._head_emitted += n
                return
            n -= left
            self._pending.popleft()
            self._done += 1
            self._head_emitted = 0
