"""Seeded synthetic corpus: repeated random spans (the induction recipe) mixed with grammar stories.

A repeat sequence is `[BOS, r_1..r_n, r_1..r_n, Zipf filler]` with n ~ U[min_span, max_span] drawn
per sequence (varying offsets, never a fixed period; a fixed period is solved by a positional head
instead of an induction head). The n span tokens are distinct, so each token of the second copy has
exactly one earlier occurrence and the induction target q - n + 1 is unambiguous. A share
`scattered_fraction` of training repeats is scattered instead: `[BOS, filler, span, filler, span,
filler]` with uniform random filler lengths, and no span token in the filler before the second copy.
With `distinct_filler`, the filler of a repeat row is a Zipf-weighted draw without replacement that
excludes the span, so the row's only repeated tokens are the planted copies.

A story sequence is `[BOS, story, EOS, story, EOS, ...]` cut at ctx (see `stories.py`), or, with a
text corpus (`cfg.corpus`, headscreen/synthetic/text.py), `[BOS, next ctx-1 tokens of the corpus]`.

Batch `step` depends only on (seed, step) (and, with a text corpus, on where the corpus stream stood,
which the trainer records per checkpoint): a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int

from headscreen.synthetic.config import TrainConfig
from headscreen.synthetic.stories import story
from headscreen.synthetic.tokenizer import BOS_ID, EOS_ID, Vocab

# Independent random streams, keyed together with the seed.
_TRAIN, _EVAL_REPEATS, _EVAL_STORIES, _ZIPF_ORDER = 0, 1, 2, 3


@dataclass(frozen=True)
class RepeatBatch:
    """Repeat sequences with their span lengths: copy 1 at positions 1..n, copy 2 at n+1..2n."""

    tokens: Int[torch.Tensor, "batch ctx"]
    span_len: Int[torch.Tensor, " batch"]


class SyntheticCorpus:
    """Deterministic batches of the synthetic corpus for one TrainConfig.

    With `text` (a `CorpusText` of `cfg.corpus`), the story rows are packed rows of that corpus read
    in order instead of grammar stories: `batch(step)` must then be called once per step, in order
    (the training loop does), and `text.position` before `batch(step)` is where step `step` starts.
    """

    def __init__(self, cfg: TrainConfig, text=None):
        self.cfg = cfg
        self.text = text
        self.vocab = Vocab.build(cfg.vocab_size)
        content = np.arange(self.vocab.content_ids.start, self.vocab.content_ids.stop)
        # Zipf filler: a seed-fixed random assignment of ranks to content ids.
        self._zipf_ids = np.random.default_rng([cfg.seed, _ZIPF_ORDER]).permutation(content)
        weights = 1.0 / np.arange(1, len(content) + 1, dtype=np.float64) ** cfg.zipf_exponent
        self._zipf_p = weights / weights.sum()
        self._content = content

    # ----------------------------------------------------------------------------------------------
    def batch(self, step: int) -> Int[torch.Tensor, "batch ctx"]:
        """Training batch number `step`: each row is a story with probability story_fraction."""
        rng = np.random.default_rng([self.cfg.seed, _TRAIN, step])
        is_story = rng.random(self.cfg.batch_size) < self.cfg.story_fraction
        out = self.repeats(rng, self.cfg.batch_size, scattered_fraction=self.cfg.scattered_fraction).tokens
        n_story = int(is_story.sum())
        if n_story:
            rows = self.stories(rng, n_story) if self.text is None else self.text.take(n_story)
            out[torch.from_numpy(is_story)] = rows
        return out

    def eval_repeats(self, n_rows: int | None = None) -> RepeatBatch:
        """Fixed diagnostic batch of repeat sequences (a stream disjoint from training)."""
        rng = np.random.default_rng([self.cfg.seed, _EVAL_REPEATS])
        return self.repeats(rng, n_rows or self.cfg.eval_batch_size)

    def eval_stories(self, n_rows: int | None = None) -> Int[torch.Tensor, "batch ctx"]:
        """Fixed diagnostic batch of story sequences (natural-ish text for BOS/sink statistics)."""
        if self.text is not None:
            return self.text.eval_rows(n_rows or self.cfg.eval_batch_size)
        rng = np.random.default_rng([self.cfg.seed, _EVAL_STORIES])
        return self.stories(rng, n_rows or self.cfg.eval_batch_size)

    # ----------------------------------------------------------------------------------------------
    def repeats(self, rng: np.random.Generator, n_rows: int, scattered_fraction: float = 0.0) -> RepeatBatch:
        """Repeat rows; `span_len` holds n. Scattered rows (training only) do not follow the
        1..n / n+1..2n layout that RepeatBatch documents, so evaluation batches never scatter."""
        cfg = self.cfg
        span_len = rng.integers(cfg.min_span, cfg.span_max + 1, size=n_rows)  # [batch]
        # distinct tokens per row: the first span_max entries of a random permutation of content ids
        spans = self._content[np.argsort(rng.random((n_rows, len(self._content))), axis=1)[:, : cfg.span_max]]
        if cfg.distinct_filler:
            # Gumbel top-k: per row, every content id in a Zipf-weighted random order (no repeats)
            keys = np.log(self._zipf_p) - np.log(-np.log(rng.random((n_rows, len(self._zipf_ids)))))
            order = self._zipf_ids[np.argsort(-keys, axis=1)]  # [batch, n_content]
            toks = np.empty((n_rows, cfg.ctx), dtype=order.dtype)
        else:
            toks = self._zipf_ids[rng.choice(len(self._zipf_ids), size=(n_rows, cfg.ctx), p=self._zipf_p)]
        toks[:, 0] = BOS_ID
        if scattered_fraction > 0:  # drawn only when used: a 0 keeps older recipes' batches unchanged
            scattered = rng.random(n_rows) < scattered_fraction
            slack = rng.random((n_rows, 2))
        for b, n in enumerate(span_len):
            first, second = 1, 1 + n
            if scattered_fraction > 0 and scattered[b]:
                free = cfg.ctx - 1 - 2 * n  # filler tokens to place before, between and after
                before = int(slack[b, 0] * (free + 1))
                gap = int(slack[b, 1] * (free - before + 1))
                first, second = 1 + before, 1 + before + n + gap
                head = toks[b, 1 : second]
                clash = np.isin(head, spans[b, :n]) if not cfg.distinct_filler else np.zeros(0, dtype=bool)
                if clash.any():  # keep the induction target unique: no span token in earlier filler
                    head[clash] = self._not_in(rng, spans[b, :n], int(clash.sum()))
            if cfg.distinct_filler:  # the ctx - 1 - 2n filler slots take ids outside the span, in order
                slots = np.ones(cfg.ctx, dtype=bool)
                slots[[0, *range(first, first + n), *range(second, second + n)]] = False
                rest = order[b][~np.isin(order[b], spans[b, :n])]  # n_content - n >= ctx - 1 - 2n slots (config)
                toks[b, slots] = rest[: int(slots.sum())]
            toks[b, first : first + n] = spans[b, :n]
            toks[b, second : second + n] = spans[b, :n]
        return RepeatBatch(torch.from_numpy(toks).long(), torch.from_numpy(span_len).long())

    def _not_in(self, rng: np.random.Generator, excluded: np.ndarray, k: int) -> np.ndarray:
        pool = np.setdiff1d(self._content, excluded)
        return pool[rng.integers(0, len(pool), size=k)]

    def stories(self, rng: np.random.Generator, n_rows: int) -> Int[torch.Tensor, "batch ctx"]:
        py = random.Random(int(rng.integers(0, 2**63 - 1)))
        rows = []
        for _ in range(n_rows):
            ids = [BOS_ID]
            while len(ids) < self.cfg.ctx:
                ids += self.vocab.encode(story(py)) + [EOS_ID]
            rows.append(ids[: self.cfg.ctx])
        return torch.tensor(rows, dtype=torch.long)
