"""Text corpora through `datasets` (headscreen/synthetic/corpora.py) and the tokenizers the trainer uses for them.

No test touches the network: every corpus is a local file the test writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from headscreen.synthetic.corpora import (
    CorpusError,
    CorpusSource,
    PackedRows,
    iter_documents,
    open_stream,
    read_documents,
)
from headscreen.synthetic.tokenizer import SPECIAL_TOKENS, load_text_tokenizer, train_bpe

DOCS = ["Lily had a red ball.", "Tom saw the ball and said wow.", "They played in the park all day.", "The end."]


def write_jsonl(path: Path, docs, column: str = "text", extra: bool = True) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            row = {column: d, **({"id": i} if extra else {})}
            f.write(json.dumps(row) + "\n")
    return path


def word_ids(doc: str) -> list[int]:
    """A toy tokenizer for packing tests: every word -> 4 + its length (ids 5..~20)."""
    return [4 + len(w) for w in doc.split()]


# --- reading ------------------------------------------------------------------------------------
def test_reads_text_jsonl_parquet_and_arrow_alike(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("\n\n".join(DOCS) + "\n\n   \n", encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "c.jsonl", DOCS)
    parquet = tmp_path / "c.parquet"
    pd.DataFrame({"text": DOCS, "n": range(len(DOCS))}).to_parquet(parquet)
    from datasets import Dataset

    arrow_dir = tmp_path / "arrow"
    Dataset.from_dict({"text": DOCS}).save_to_disk(str(arrow_dir))
    arrow = next(arrow_dir.glob("*.arrow"))
    for path in (txt, jsonl, parquet, arrow):
        docs = list(iter_documents(CorpusSource(str(path))))
        assert [d.strip() for d in docs] == DOCS, path.suffix
    assert read_documents(jsonl) == DOCS


def test_a_folder_reads_its_files_in_name_order(tmp_path):
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "b.jsonl", DOCS[2:])
    write_jsonl(tmp_path / "corpus" / "a.jsonl", DOCS[:2])
    assert list(iter_documents(CorpusSource(str(tmp_path / "corpus")))) == DOCS


def test_the_loader_streams(tmp_path):
    from datasets import IterableDataset

    ds = open_stream(CorpusSource(str(write_jsonl(tmp_path / "c.jsonl", DOCS))))
    assert isinstance(ds, IterableDataset)


def test_text_probe_files_go_through_the_same_loader(tmp_path):
    from headscreen.probes.suite import read_corpus

    assert read_corpus(write_jsonl(tmp_path / "probe.jsonl", DOCS)) == DOCS


# --- bad input ----------------------------------------------------------------------------------
def test_no_text_column_names_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS, column="story")
    with pytest.raises(CorpusError, match=r"no column 'text'.*\['id', 'story'\]"):
        next(iter_documents(CorpusSource(str(path))))
    assert list(iter_documents(CorpusSource(str(path), text_column="story"))) == DOCS


@pytest.mark.parametrize("content", ["", '{"text": ""}\n{"text": "   "}\n'])
def test_an_empty_corpus_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match="empty"):
        list(iter_documents(CorpusSource(str(path))))


def test_token_ids_beyond_the_vocabulary_are_an_error(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [[5, 6, 7], [8, 300, 9]], column="input_ids")
    rows = PackedRows(CorpusSource(str(path), text_column="input_ids"), None, ctx=4, vocab_size=256, bos_id=0, eos_id=1)
    with pytest.raises(CorpusError, match=r"token id 300 is beyond the vocabulary \(vocab_size 256\)"):
        rows.take(2)
    # a loaded tokenizer larger than the vocabulary is refused before any text is read
    tok = train_bpe(DOCS * 20, 400)
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="beyond the vocabulary"):
        load_text_tokenizer(tmp_path, vocab_size=tok.get_vocab_size() - 1)


def test_missing_local_corpus_and_non_text_values(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_documents(CorpusSource(str(tmp_path / "missing.jsonl"))))
    assert not CorpusSource("roneneldan/TinyStories").is_local  # a hub name (never opened in tests)
    assert CorpusSource("./data/stories.jsonl").is_local
    path = write_jsonl(tmp_path / "nums.jsonl", [1.5, 2.5])
    with pytest.raises(CorpusError, match="holds float values"):
        list(iter_documents(CorpusSource(str(path))))


# --- packing and streaming ----------------------------------------------------------------------
def test_rows_pack_the_document_stream_with_bos_and_eos(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS * 3)
    rows = PackedRows(CorpusSource(str(path)), word_ids, ctx=9, vocab_size=64, bos_id=0, eos_id=1).take(4)
    assert rows.shape == (4, 9) and rows.dtype == torch.long and (rows[:, 0] == 0).all()
    stream = [t for d in DOCS * 3 for t in [*word_ids(d), 1]]  # the independent concatenation
    assert rows[:, 1:].reshape(-1).tolist() == stream[: 4 * 8]


def test_position_resumes_the_stream_exactly(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [f"doc {i} " + "word " * (i % 5) for i in range(60)])
    src = CorpusSource(str(path))
    a = PackedRows(src, word_ids, ctx=7, vocab_size=64, bos_id=0, eos_id=1)
    a.take(5)
    pos = a.position
    rest = a.take(6)
    b = PackedRows(src, word_ids, ctx=7, vocab_size=64, bos_id=0, eos_id=1, start=pos)
    assert torch.equal(b.take(6), rest)
    assert b.position == a.position


def test_streaming_holds_a_bounded_buffer_on_a_large_corpus(tmp_path):
    """20,000 documents (~1.3 MB); 50 batches of 4 rows of 32 tokens read only what they need, and the
    packer never holds more than one row plus one document."""
    n_docs = 20_000
    docs = [f"story {i} " + " ".join(["w" * (1 + (i + j) % 9) for j in range(5 + i % 11)]) for i in range(n_docs)]
    path = write_jsonl(tmp_path / "large.jsonl", docs)
    rows = PackedRows(CorpusSource(str(path)), word_ids, ctx=32, vocab_size=64, bos_id=0, eos_id=1)
    longest = max(len(word_ids(d)) + 1 for d in docs)
    peak = 0
    for _ in range(50):
        rows.take(4)
        peak = max(peak, len(rows.buffer))
    used = 50 * 4 * 31
    assert peak < 31 + longest  # leftover of a row + the document being read
    assert rows.documents_read <= used // 6 + 2  # every document has >= 6 tokens: no read-ahead beyond need
    assert rows.documents_read < n_docs // 10


# --- tokenizers ---------------------------------------------------------------------------------
def test_bpe_tokenizer_has_the_specials_first_and_round_trips(tmp_path):
    tok = train_bpe(DOCS * 50, 300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.get_vocab_size() <= 300
    ids = tok.encode(DOCS[1], add_special_tokens=False).ids
    assert min(ids) >= 4 and tok.decode(ids) == DOCS[1]
    tok.save(str(tmp_path / "tokenizer.json"))
    assert load_text_tokenizer(tmp_path / "tokenizer.json", 300).encode(DOCS[1]).ids == ids
    with pytest.raises(ValueError, match="too small"):
        train_bpe(DOCS, 200)


def test_a_tokenizer_with_other_special_ids_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel(vocab={"a": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3, "<unk>": 4}, unk_token="<unk>"))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"specials must be <bos>=0.*found <bos>=1"):
        load_text_tokenizer(tmp_path, 64)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_text_tokenizer(tmp_path / "nowhere", 64)


def test_an_unreachable_hub_dataset_is_one_clear_error(monkeypatch):
    """The hub is never contacted in tests: `load_dataset` is replaced by one that fails as offline does."""
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match=r"'roneneldan/TinyStories' \(split 'train'\) could not be opened.*local"):
        next(iter_documents(CorpusSource("roneneldan/TinyStories")))


def test_a_pre_tokenized_corpus_needs_its_tokenizer(tmp_path):
    from headscreen.synthetic import TrainConfig
    from headscreen.synthetic.text import prepare_tokenizer

    path = write_jsonl(tmp_path / "ids.jsonl", [[5, 6, 7], [8, 9]], column="input_ids")
    cfg = TrainConfig(corpus=str(path), text_column="input_ids", vocab_size=300)
    with pytest.raises(CorpusError, match="pre-tokenized.*train.tokenizer"):
        prepare_tokenizer(cfg)
