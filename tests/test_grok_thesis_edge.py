"""The thesis table criteria (headscreen.grokking.published.thesis_edge) against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import torch

from headscreen.grokking.models.transformer import PRESETS, build_model
from headscreen.grokking.published.thesis_edge import select, table_row


def _manual(vecs: np.ndarray, w: int = 10):
    d = np.diff(vecs, axis=0)
    out = []
    for end in range(w, len(vecs)):
        s = np.linalg.svd(d[end - w:end], compute_uv=False)
        score = (s[:-1] / s.sum()) * (s[:-1] / s[1:])
        out.append((s[1] ** 2 - s[2] ** 2, int(np.argmax(score)) + 1))
    return out


def test_table_row_matches_numpy():
    rng = np.random.default_rng(0)
    T, P = 24, 40
    scale = np.linspace(3.0, 0.5, T - 1)[:, None]  # shrinking updates: g23 declines
    vecs = np.concatenate([np.zeros((1, P)), np.cumsum(rng.normal(size=(T - 1, P)) * scale, axis=0)])
    steps = np.arange(T) * 100
    row = table_row(steps, torch.from_numpy(vecs), grok_step=1900)
    man = _manual(vecs)
    ends = steps[10:]
    pre = [g for (g, _), e in zip(man, ends, strict=True) if e < 1900]
    at = [g for (g, _), e in zip(man, ends, strict=True) if e <= 1900][-1]
    assert np.isclose(row["g23_early"], max(pre)) and np.isclose(row["g23_grok"], at)
    assert np.isclose(row["decline"], max(pre) / at) and row["declined"] == (max(pre) / at > 1.5)
    assert np.isclose(row["g23_first"], man[0][0]) and row["kstar_term"] == man[-1][1]
    never = table_row(steps, torch.from_numpy(vecs), grok_step=None)
    assert never["decline"] is None and never["declined"] is None


def test_select_reads_packed_and_decoder_layouts():
    enc = build_model(PRESETS["published"], 11, ["add"], 0)
    sd = enc.state_dict()
    wq = select(sd, "W_Q")
    want = torch.cat([sd[f"layers.{i}.self_attn.in_proj_weight"][:128].reshape(-1) for i in range(2)])
    assert torch.equal(wq, want)
    att = select(sd, "attention")
    assert att.numel() == 2 * 4 * 128 * 128
    dec = build_model(PRESETS["curv"], 11, ["add"], 0).state_dict()
    assert torch.equal(select(dec, "W_Q"), torch.cat([dec["blocks.0.attn.W_Q"].reshape(-1), dec["blocks.1.attn.W_Q"].reshape(-1)]))
    assert select(dec, "attention").numel() == 2 * 4 * 4 * 128 * 32
