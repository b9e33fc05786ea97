"""The embedding parameters shared by the grokking models (models.GrokTransformer, encoder.EncoderTransformer).

Their weights are initialised by the model that owns them; the attribute names (`W_E`, `W_pos`) are the
snapshot keys the series adapter reads (headscreen/series/adapters.py, GROK).
"""

from __future__ import annotations

import torch
from torch import nn

from headscreen.series.adapters import GROK

MODEL_TYPE = GROK  # "headscreen-grok": the series adapter that reads every grokking model's snapshots


class Embed(nn.Module):
    def __init__(self, vocab: int, d_model: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(vocab, d_model))  # [vocab, d_model]


class PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(n_ctx, d_model))  # [n_ctx, d_model]
