"""Cheap per-checkpoint diagnostics of in-context copying, recorded in series.json while training.

These are training-time sanity figures on fixed batches, computed straight from the HF model
(eager attention); the screen computes its own, richer statistics from the saved checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int

from headscreen.synthetic.corpus import RepeatBatch
from headscreen.synthetic.model import attention_kernel


@torch.no_grad()
def copying_diagnostics(
    model: torch.nn.Module, repeats: RepeatBatch, stories: Int[torch.Tensor, "batch ctx"]
) -> dict:
    """Losses on the two copies of repeated spans and per-head attention scores.

    - `loss_first` / `loss_second`: mean next-token loss on r_2..r_n in the first / second copy.
    - `induction[l][h]`: mean attention from a second-copy query q to q - n + 1 (the token after the
      earlier occurrence); `duplicate` to q - n; `previous` to q - 1 (all on the repeat batch).
    - `bos[l][h]`: mean attention to position 0 from queries 1.. on the story batch.
    """
    with attention_kernel(model, "eager"):  # patterns need the eager kernel
        return _diagnostics(model, repeats, stories)


def _diagnostics(model: torch.nn.Module, repeats: RepeatBatch, stories: Int[torch.Tensor, "batch ctx"]) -> dict:
    was_training = model.training
    model.eval()
    first = next(iter(model.parameters()), None)
    dev = first.device if first is not None else torch.device("cpu")  # the batches live on the CPU; the model may not
    tokens, span_len = repeats.tokens.to(dev), repeats.span_len.to(dev)
    out = model(tokens, output_attentions=True)
    nll = torch.nn.functional.cross_entropy(  # [batch, ctx-1]: nll[:, p] predicts token p+1
        out.logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none"
    )
    n_rows, ctx = tokens.shape
    pos = torch.arange(ctx - 1, device=dev)
    n = span_len[:, None]  # [batch, 1]
    first = (pos >= 1) & (pos <= n - 1)  # predicts positions 2..n      = r_2..r_n, copy 1
    second = (pos >= n + 1) & (pos <= 2 * n - 1)  # predicts n+2..2n = r_2..r_n, copy 2
    scores = {
        "induction": _offset_scores(out.attentions, repeats.span_len, lambda q, n: q - n + 1),
        "duplicate": _offset_scores(out.attentions, repeats.span_len, lambda q, n: q - n),
        "previous": _offset_scores(out.attentions, repeats.span_len, lambda q, n: q - 1),
    }
    story_attn = model(stories.to(dev), output_attentions=True).attentions
    scores["bos"] = [a[:, :, 1:, 0].mean(dim=(0, 2)).tolist() for a in story_attn]  # [layer][head]
    model.train(was_training)
    return {
        "loss_first": float(nll[first].mean()),
        "loss_second": float(nll[second].mean()),
        **{k: [[round(x, 5) for x in row] for row in v] for k, v in scores.items()},
    }


def _offset_scores(
    attentions: Sequence[Float[torch.Tensor, "batch head q k"]], span_len: Int[torch.Tensor, " batch"], key_of
) -> list[list[float]]:
    """Per layer and head: mean attention from second-copy queries q = n+1..2n to key_of(q, n)."""
    rows, qs, ks = [], [], []
    for b, n in enumerate(span_len.tolist()):
        q = torch.arange(n + 1, 2 * n + 1)
        rows.append(torch.full_like(q, b))
        qs.append(q)
        ks.append(key_of(q, n))
    r, q, k = (torch.cat(x).to(attentions[0].device) for x in (rows, qs, ks))
    return [a[r, :, q, k].float().mean(dim=0).tolist() for a in attentions]  # a[r, :, q, k]: [n_queries, head]


def phase_change_step(checkpoints: Sequence[dict], threshold: float = 0.5) -> int | None:
    """First checkpoint step whose best head's induction score reaches `threshold` (None if never)."""
    for c in checkpoints:
        diag = c.get("diagnostics")
        if diag and max(max(layer) for layer in diag["induction"]) >= threshold:
            return int(c["step"])
    return None
