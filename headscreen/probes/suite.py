"""`ProbeSuite`: the probe batches a screen runs at every checkpoint, as configured data.

The same batches (same seeds) are used at every checkpoint, so selectivity is comparable across
the series; they are built once per screen and recorded in the run manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from headscreen.probes.batch import ProbeBatch
from headscreen.probes.prompts import check_fits, repeated_tokens_probe, retrieval_probe, text_probe


@dataclass(frozen=True)
class ProbeSuite:
    """Probe settings (model_configs/*.yaml, section `probes`).

    seq_len:        T of the retrieval probe (METHODS §6a: 256; must fit the model's context).
    token_range:    [lo, hi) ids for random tokens (§6a: [100, 10000) for natural-vocabulary models).
    bos_id:         prepend this BOS id at position 0, or None (no BOS; position 0 is an ordinary token).
    n_retrieval:    examples of the retrieval probe (§6a: 2000; 500 for 1B-scale phase 1).
    pair_range:     [lo, hi) of the position of the [A, B] pair.
    n_repeated:     examples of the repeated-random-tokens probe (0 disables it).
    repeated_span:  n of [r_1..r_n, r_1..r_n].
    text_file:      a local UTF-8 text file for a natural-text probe (needs a tokenizer), or None.
    n_text:         windows taken from it.
    seed:           seed of every generator (§6a: 42).
    micro_batch:    examples per forward pass (bounds activation memory).
    """

    seq_len: int = 256
    token_range: tuple[int, int] = (100, 10000)
    bos_id: int | None = None
    n_retrieval: int = 500
    pair_range: tuple[int, int] = (20, 128)
    n_repeated: int = 64
    repeated_span: int = 50
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

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self, *, n_ctx: int | None, d_vocab: int | None, tokenizer=None) -> dict[str, ProbeBatch]:
        """The batches, checked against the model's context and vocabulary."""
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
                raise ValueError(f"probes.text_file={self.text_file!r} does not exist; give a local text file")
            docs = [d for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
            batches["text"] = text_probe(docs, tokenizer, self.seq_len, n=self.n_text, seed=self.seed,
                                         bos_id=self.bos_id)
        if n_ctx is not None:
            for b in batches.values():
                check_fits(b, n_ctx, d_vocab)
        return batches
