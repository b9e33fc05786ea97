"""The synthetic vocabulary and its HF tokenizer (word-level, whitespace-split).

Ids are fixed by construction: specials first (<bos>=0, <eos>=1, <pad>=2, <unk>=3), then the story
grammar's words, then abstract tokens `x0, x1, ...` that fill the vocabulary up to `vocab_size`.
Random spans and filler draw from every non-special id (`Vocab.content_ids`).

An in-memory `PreTrainedTokenizerFast` crashes `TransformerBridge.boot_transformers`; always
`save_tokenizer` to a directory and `headscreen.series.load_tokenizer` it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from headscreen.synthetic.stories import GRAMMAR_WORDS

SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>", "<unk>")
BOS_ID, EOS_ID, PAD_ID, UNK_ID = 0, 1, 2, 3
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(GRAMMAR_WORDS)


@dataclass(frozen=True)
class Vocab:
    """id -> word table of the synthetic corpus."""

    words: tuple[str, ...]

    @classmethod
    def build(cls, vocab_size: int) -> Vocab:
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the specials and the story grammar need "
                f"{MIN_VOCAB_SIZE} ids; set vocab_size >= {MIN_VOCAB_SIZE} (128 is the tested default)"
            )
        n_abstract = vocab_size - MIN_VOCAB_SIZE
        return cls(SPECIAL_TOKENS + GRAMMAR_WORDS + tuple(f"x{i}" for i in range(n_abstract)))

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def content_ids(self) -> range:
        """Ids that random spans and filler may use: everything but the specials."""
        return range(len(SPECIAL_TOKENS), self.size)

    def encode(self, words: list[str]) -> list[int]:
        index = self._index()
        try:
            return [index[w] for w in words]
        except KeyError as err:
            raise ValueError(f"word {err.args[0]!r} is not in the synthetic vocabulary") from None

    def _index(self) -> dict[str, int]:
        # Cached on the (frozen) instance without making it part of equality.
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {w: i for i, w in enumerate(self.words)}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def save_tokenizer(vocab: Vocab, directory: str | Path, *, model_max_length: int | None = None) -> Path:
    """Write tokenizer.json, tokenizer_config.json (and the special-token map) into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab.words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return save_tokenizer_object(tok, directory, model_max_length=model_max_length)


def save_tokenizer_object(tok, directory: str | Path, *, model_max_length: int | None = None) -> Path:
    """Save a `tokenizers.Tokenizer` whose specials are SPECIAL_TOKENS as an HF tokenizer folder."""
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", **extra
    )
    fast.save_pretrained(directory)
    return directory


# --- tokenizers for real text corpora (headscreen/synthetic/corpora.py) -------------------------------------
MIN_BPE_VOCAB = len(SPECIAL_TOKENS) + 256  # the specials and every byte


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer` of at most `vocab_size` ids trained on `texts`, with
    SPECIAL_TOKENS at ids 0-3 (so BOS_ID..UNK_ID hold for it as for the synthetic vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE tokenizer: it needs "
                         f">= {MIN_BPE_VOCAB} ids (4 specials + 256 bytes); raise vocab_size")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_text_tokenizer(path: str | Path, vocab_size: int):
    """A `tokenizers.Tokenizer` from tokenizer.json (or a folder holding one); its specials must sit at
    ids 0-3 as SPECIAL_TOKENS, and all its ids below `vocab_size`."""
    from tokenizers import Tokenizer

    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer {str(path)!r}: no tokenizer.json there; give a tokenizer.json file or the "
                                "folder of one (a series folder written by `headscreen train` holds one)")
    tok = Tokenizer.from_file(str(file))
    wrong = [f"{t}={tok.token_to_id(t)}" for i, t in enumerate(SPECIAL_TOKENS) if tok.token_to_id(t) != i]
    if wrong:
        raise ValueError(f"tokenizer {str(file)!r}: the specials must be {', '.join(f'{t}={i}' for i, t in enumerate(SPECIAL_TOKENS))}"
                         f" (the model's BOS/EOS/PAD ids), found {', '.join(wrong)}; train one with headscreen "
                         "(leave train.tokenizer null)")
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"tokenizer {str(file)!r} has {tok.get_vocab_size()} ids, beyond the vocabulary (vocab_size "
                         f"{vocab_size}); raise vocab_size to >= {tok.get_vocab_size()} or use a smaller tokenizer")
    return tok
