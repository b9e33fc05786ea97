"""Tests for headscreen.probes: probe layouts, selectivity, classification, PR, copying, emergence."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from headscreen.probes import selectivity as S
from headscreen.probes.classify import ScreenThresholds, circuits, classify
from headscreen.probes.copying import copy_losses, copying_row
from headscreen.probes.emergence import bos_layers01, emergence_steps, lead_times
from headscreen.probes.participation import head_participation, participation_ratio, pr_integral
from headscreen.probes.prompts import (
    check_fits,
    corrupt_retrieval,
    repeated_tokens_probe,
    retrieval_probe,
    text_probe,
)

torch.set_num_threads(1)

VOCAB = (2, 512)  # tiny models: ids 0/1 are <bos>/<eos>


# ------------------------------------------------------------------------------------------ fixtures


def _boot(directory):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    return TransformerBridge.boot_transformers(str(directory), device="cpu", tokenizer=tok).eval()


@pytest.fixture(scope="module")
def gpt2_bridge(tmp_path_factory):
    from headscreen.testing import save_tiny_model

    d = save_tiny_model(tmp_path_factory.mktemp("gpt2"), "gpt2", n_layers=2, n_heads=4, n_ctx=256)
    return _boot(d)


@pytest.fixture(scope="module")
def llama_bridge(tmp_path_factory):
    from headscreen.testing import save_tiny_model

    d = save_tiny_model(tmp_path_factory.mktemp("llama"), "llama", n_layers=2, n_heads=8, n_ctx=64)
    return _boot(d)


# ------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("bos_id", [None, 0])
def test_retrieval_probe_layout(bos_id):
    T = 64
    b = retrieval_probe(300, T, token_range=VOCAB, seed=3, bos_id=bos_id)
    off = 0 if bos_id is None else 1
    toks, a_pos, tgt = b.tokens, b.a_pos, b.target_token
    assert toks.shape == (300, T) and b.has_bos == (bos_id is not None)
    assert torch.equal(b.query_pos, torch.full((300,), T - 1))
    for i in range(300):
        A, B = int(toks[i, T - 1]), int(tgt[i])
        assert A != B
        assert int(toks[i, a_pos[i]]) == A and int(toks[i, a_pos[i] + 1]) == B
        body = toks[i, off:]
        assert int((body == A).sum()) == 2, "A occurs exactly at a_pos and T-1"
        assert int((body == B).sum()) == 1, "B occurs exactly at a_pos+1"
    assert int(a_pos.min()) >= 20 + off and int(a_pos.max()) + 1 <= T - 7
    if bos_id is not None:
        assert bool((toks[:, 0] == bos_id).all())
    else:
        body_ids = toks[:, :]
        assert int(body_ids.min()) >= VOCAB[0] and int(body_ids.max()) < VOCAB[1]
    # the pair range is configurable and honoured
    c = retrieval_probe(200, 256, token_range=VOCAB, seed=1, bos_id=bos_id, pair_range=(40, 60))
    assert int(c.a_pos.min()) >= 40 + off and int(c.a_pos.max()) < 60 + off


def test_probes_deterministic_under_seed():
    a = retrieval_probe(50, 64, token_range=VOCAB, seed=7)
    b = retrieval_probe(50, 64, token_range=VOCAB, seed=7)
    c = retrieval_probe(50, 64, token_range=VOCAB, seed=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.a_pos, b.a_pos)
    assert not torch.equal(a.tokens, c.tokens)
    r1 = repeated_tokens_probe(10, 12, token_range=VOCAB, seed=5)
    r2 = repeated_tokens_probe(10, 12, token_range=VOCAB, seed=5)
    assert torch.equal(r1.tokens, r2.tokens)
    assert torch.equal(corrupt_retrieval(a, 1).tokens, corrupt_retrieval(b, 1).tokens)


def test_corrupt_retrieval_keeps_positions_and_resamples_pair():
    clean = retrieval_probe(100, 64, token_range=VOCAB, seed=2, bos_id=0)
    bad = corrupt_retrieval(clean, seed=9)
    T = clean.seq_len
    assert torch.equal(bad.a_pos, clean.a_pos) and torch.equal(bad.query_pos, clean.query_pos)
    changed = bad.tokens != clean.tokens
    rows = torch.arange(100)
    assert bool(
        changed[rows, clean.a_pos].all() & changed[rows, clean.a_pos + 1].all() & changed[:, T - 1].all()
    )
    assert int(changed.sum()) == 3 * 100, "only A, B and the final A change"
    for i in range(100):
        A, B = int(bad.tokens[i, T - 1]), int(bad.target_token[i])
        assert int((bad.tokens[i] == A).sum()) == 2 and int((bad.tokens[i] == B).sum()) == 1
        assert int(bad.tokens[i, bad.a_pos[i] + 1]) == B


@pytest.mark.parametrize("bos_id", [None, 0])
def test_repeated_tokens_layout(bos_id):
    b = repeated_tokens_probe(20, 15, token_range=VOCAB, seed=0, bos_id=bos_id)
    off = 0 if bos_id is None else 1
    assert b.seq_len == off + 30
    first, second = b.tokens[:, off : off + 15], b.tokens[:, off + 15 :]
    assert torch.equal(first, second)
    assert all(len(set(r.tolist())) == 15 for r in first), "tokens within a copy are distinct"
    assert b.meta["second_start"] == off + 15
    assert torch.equal(b.tokens[torch.arange(20), b.a_pos], b.tokens[:, -1])


def test_text_probe_windows_and_tokenizerless_error(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 60, size=400).tolist() for _ in range(5)]
    b = text_probe(docs, None, 32, n=20, seed=1, bos_id=0, sep_id=1)
    assert b.tokens.shape == (20, 32) and b.has_bos and bool((b.tokens[:, 0] == 0).all())
    for i in range(20):
        a = int(b.a_pos[i])
        assert 1 <= a <= 32 - 8
        assert int(b.tokens[i, a]) == int(b.tokens[i, -1]) and int(b.tokens[i, a + 1]) == int(
            b.target_token[i]
        )
    with pytest.raises(ValueError, match="no tokenizer.*token ids"):
        text_probe(["the cat sat on the mat"] * 10, None, 16)
    # with a tokenizer, text works
    from transformers import AutoTokenizer

    from headscreen.testing import save_word_tokenizer

    tok = AutoTokenizer.from_pretrained(str(save_word_tokenizer(tmp_path / "tok", vocab=64)))
    text = " ".join(f"t{int(x)}" for x in rng.integers(2, 40, size=600))
    t = text_probe([text], tok, 24, n=5, seed=0)
    assert t.tokens.shape == (5, 24) and int(t.tokens.max()) < 64


def test_probe_longer_than_context_raises(gpt2_bridge):
    from headscreen.probes.forward import run_probe

    long = retrieval_probe(4, 300, token_range=VOCAB)
    with pytest.raises(ValueError, match="context is only 64 tokens"):
        check_fits(retrieval_probe(4, 80, token_range=VOCAB), 64)
    with pytest.raises(ValueError, match="n_ctx"):
        run_probe(gpt2_bridge, long)
    with pytest.raises(ValueError, match="vocabulary"):
        check_fits(retrieval_probe(4, 32, token_range=(2, 1000)), 64, d_vocab=512)


# ------------------------------------------------------------------------------------------ selectivity


def _hand_rows(T, a_pos, targets_per_head, extra):
    """rows [b, 1, heads, T]: uniform u=1 everywhere causal, plus `extra` on each head's class target."""
    b = len(a_pos)
    rows = torch.ones(b, 1, len(targets_per_head), T, dtype=torch.float64)
    for h, cls in enumerate(targets_per_head):
        for i, a in enumerate(a_pos):
            pos = {
                "induction": [a + 1],
                "duplicate": [a],
                "previous": [T - 2],
                "self": [T - 1],
                "first": [0],
                "local": [T - 6, T - 5, T - 4, T - 3],
                None: [],
            }[cls]
            for p in pos:
                rows[i, 0, h, p] += extra
    return rows / rows.sum(-1, keepdim=True)  # rows sum to 1; ratios unchanged


def test_hand_built_selectivity_is_exact():
    T = 256
    # null positions computed independently of the implementation: RandomState(0), [1, T-6), 50 draws
    null = np.random.RandomState(0).choice(np.arange(1, T - 6), size=50, replace=False)
    assert np.array_equal(np.sort(null), S.null_positions(T))
    free = [p for p in range(20, T - 8) if p not in null and p + 1 not in null]
    assert len(free) >= 6
    a_pos = torch.tensor(free[:6])
    classes = ["induction", "duplicate", "previous", "self", "first", "local", None]
    rows = _hand_rows(T, a_pos.tolist(), classes, extra=39.0)
    sel = S.selectivity(rows, torch.full((6,), T - 1), a_pos)
    for h, cls in enumerate(classes):
        for c in S.CLASSES:
            expected = 40.0 if c == cls else 1.0
            assert float(sel[c][0, h]) == pytest.approx(expected, rel=1e-12), (h, cls, c)
    # base = 1/T of a row here; a different extra scales only the targeted class
    rows2 = _hand_rows(T, a_pos.tolist(), ["induction"], extra=9.0)
    assert float(S.selectivity(rows2, torch.full((6,), T - 1), a_pos)["induction"][0, 0]) == pytest.approx(
        10.0
    )


def test_selectivity_rejects_bad_layout():
    rows = torch.full((2, 1, 1, 64), 1 / 64)
    with pytest.raises(ValueError, match="T-1"):
        S.selectivity(rows, torch.tensor([62, 63]), torch.tensor([20, 20]))
    with pytest.raises(ValueError, match="a_pos"):
        S.selectivity(rows, torch.tensor([63, 63]), torch.tensor([20, 60]))


def test_null_z_flags_planted_target_and_not_the_rest():
    T = 64
    gen = torch.Generator().manual_seed(0)
    a_pos = torch.randint(20, 50, (200,), generator=gen)
    # noisy random rows; head 0 gets 3x weight on a_pos+1, head 1 nothing special
    rows = torch.rand(200, 1, 2, T, generator=gen, dtype=torch.float64)
    rows[torch.arange(200), 0, 0, a_pos + 1] *= 3
    rows = rows / rows.sum(-1, keepdim=True)
    q = torch.full((200,), T - 1)
    sel = S.selectivity(rows, q, a_pos)
    z = S.null_z(sel, S.null_selectivity(rows, q, a_pos, n_draws=20, seed=4))
    assert float(z["induction"][0, 0]) > 10
    assert abs(float(z["induction"][0, 1])) < 4
    assert abs(float(z["duplicate"][0, 0])) < 4


def test_null_z_is_standard_normal_on_random_weights(llama_bridge):
    from headscreen.probes.screen import screen_checkpoint

    zs = []
    for seed in range(4):
        batch = retrieval_probe(150, 64, token_range=VOCAB, seed=seed)
        out = screen_checkpoint(llama_bridge, {"retrieval": batch}, micro_batch=75)
        s = out["selectivity"]
        zs.append(s.loc[s["class"] == "induction", "null_z"].to_numpy())
    z = np.concatenate(zs)  # 4 seeds x 16 heads
    assert z.size == 64 and np.isfinite(z).all()
    assert abs(z.mean()) < 0.4, z.mean()
    assert 0.7 < z.std(ddof=1) < 1.45, z.std(ddof=1)


# ------------------------------------------------------------------------------------------ head scores


def test_detect_score_matches_transformer_lens_definition():
    from transformer_lens.head_detector import (
        compute_head_attention_similarity_score,
        get_duplicate_token_head_detection_pattern,
        get_induction_head_detection_pattern,
        get_previous_token_head_detection_pattern,
    )

    gen = torch.Generator().manual_seed(1)
    toks = torch.randint(2, 12, (3, 16), generator=gen)  # small vocab: many duplicates
    pat = torch.rand(3, 2, 16, 16, generator=gen).tril()
    pat = pat / pat.sum(-1, keepdim=True)
    ours = S.detection_patterns(toks)
    tl_fns = {
        "previous": get_previous_token_head_detection_pattern,
        "duplicate": get_duplicate_token_head_detection_pattern,
        "induction": get_induction_head_detection_pattern,
    }
    for kind, fn in tl_fns.items():
        for ex_bos, ex_cur in [(False, False), (True, False), (False, True)]:
            got = S.detect_score(pat, ours[kind], exclude_bos=ex_bos, exclude_current_token=ex_cur)
            for i in range(3):
                det = fn(toks[i : i + 1])
                assert torch.equal(ours[kind][i], det.float()), kind
                for h in range(2):
                    ref = compute_head_attention_similarity_score(
                        pat[i, h].clone(),
                        det,
                        exclude_bos=ex_bos,
                        exclude_current_token=ex_cur,
                        error_measure="mul",
                    )
                    assert float(got[i, h]) == pytest.approx(ref, abs=1e-6)


def test_prefix_offset_and_sink_on_hand_built_patterns():
    span, off = 6, 1
    T = off + 2 * span
    q = torch.arange(T)
    induction = torch.zeros(T, T)
    induction[q, 0] = 1.0
    s2 = off + span
    induction[s2:] = 0
    induction[q[s2:], q[s2:] - span + 1] = 1.0
    bos = torch.zeros(T, T)
    bos[:, 0] = 1.0
    pat = torch.stack([induction, bos])[None]  # [1, 2, T, T]
    pm = S.prefix_matching(pat, span, off)
    assert torch.allclose(pm, torch.tensor([[1.0, 0.0]]))
    offs = S.offset_attention(pat, span, off)  # [1, 2, span+1]
    assert float(offs[0, 0, span - 1]) == 1.0 and float(offs[0, 0].sum()) == 1.0
    alpha = S.sink_alpha(pat)
    assert float(alpha[0, 1]) == 1.0 and float(alpha[0, 0]) == pytest.approx(s2 / T)
    assert torch.equal(S.sink_rate(alpha, 0.3), torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.equal(S.sink_rate(alpha, 0.6), torch.tensor([0.0, 1.0], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ forward + screen


def _forced_patterns(tokens, pattern):
    """Rewrite layer-1 heads: H0 induction, H1 previous-token, H2 BOS, H3 0.6 BOS + 0.3 induction."""
    b, _, T, _ = pattern.shape
    causal = torch.ones(T, T).tril()
    uniform = (causal / causal.sum(-1, keepdim=True))[None].expand(b, T, T)
    ind = S.detection_patterns(tokens.cpu())["induction"]
    has = ind.sum(-1, keepdim=True) > 0
    ind = torch.where(has, ind / ind.sum(-1, keepdim=True).clamp_min(1), uniform)
    prev = torch.zeros(T, T)
    prev[0, 0] = 1.0
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    bos = torch.zeros(T, T)
    bos[:, 0] = 1.0
    new = pattern.clone()
    new[:, 0] = 0.9 * ind + 0.1 * uniform
    new[:, 1] = 0.9 * prev + 0.1 * uniform
    new[:, 2] = 0.9 * bos + 0.1 * uniform
    new[:, 3] = 0.6 * bos + 0.3 * ind + 0.1 * uniform
    return new.to(pattern.dtype)


@pytest.fixture()
def forced(gpt2_bridge):
    state = {}

    def grab(x, hook):
        state["tokens"] = x
        return x

    def force(p, hook):
        return _forced_patterns(state["tokens"], p)

    hooks = [("embed.hook_in", grab), ("blocks.1.attn.hook_pattern", force)]
    return gpt2_bridge, hooks


def test_forced_attention_changes_output_and_is_classified(forced):
    from headscreen.probes.screen import screen_checkpoint

    bridge, hooks = forced
    batches = {
        # T = 256 as in FP: at short T most keys are among the 50 fixed base positions, so the base
        # often includes a_pos+1 itself and even a perfect induction head scores only ~50x
        "retrieval": retrieval_probe(48, 256, token_range=VOCAB, seed=0),
        "repeated": repeated_tokens_probe(32, 20, token_range=VOCAB, seed=0, bos_id=0),
    }
    x = batches["retrieval"].tokens[:4]
    with torch.inference_mode():
        plain = bridge(x)
        with bridge.hooks(fwd_hooks=hooks):
            edited = bridge(x)
            out = screen_checkpoint(bridge, batches, micro_batch=16, step=100)
    assert float((plain - edited).abs().max()) > 1e-3, "the pattern edit must reach the output"

    cls = out["classes"].set_index(["probe", "layer", "head"])
    r = cls.loc["retrieval"]
    assert r.loc[(1, 0), "best_class"] == "induction" and r.loc[(1, 0), "in_induction_circuit"]
    assert r.loc[(1, 1), "best_class"] == "previous" and r.loc[(1, 1), "in_previous_circuit"]
    assert r.loc[(1, 2), "best_class"] == "first" and r.loc[(1, 2), "is_bos"]
    # the all-head screen: an induction-circuit head whose best class is BOS
    assert r.loc[(1, 3), "best_class"] == "first" and r.loc[(1, 3), "is_bos"]
    assert r.loc[(1, 3), "in_induction_circuit"] and r.loc[(1, 3), "induction_selectivity"] >= 50
    for h in range(4):  # layer 0 is the untouched random model
        assert r.loc[(0, h), "best_class"] == "unclassified"
        assert not (r.loc[(0, h), "in_induction_circuit"] or r.loc[(0, h), "is_bos"])
    assert circuits(out["classes"][out["classes"]["probe"] == "retrieval"]) == {
        "induction": [[1, 0], [1, 3]],
        "previous": [[1, 1]],
        "bos": [[1, 2], [1, 3]],
    }

    hs = out["head_scores"]
    rep = hs[hs["probe"] == "repeated"].set_index(["metric", "layer", "head"])["value"]
    assert rep[("prefix_matching", 1, 0)] > 0.85 and rep[("prefix_matching", 0, 0)] < 0.2
    assert rep[("offset_19", 1, 0)] > 0.85  # induction = offset span-1
    assert rep[("offset_1", 1, 1)] > 0.85  # previous token
    assert rep[("sink_rate", 1, 2)] == 1.0 and rep[("sink_alpha1", 1, 2)] > 0.85
    assert rep[("detect_induction", 1, 0)] > 0.42 and rep[("detect_previous", 1, 1)] > 0.85

    # columns are the run-format contract; the step is filled
    assert list(out["selectivity"].columns) == [
        "step",
        "layer",
        "head",
        "probe",
        "class",
        "selectivity",
        "null_z",
    ]
    assert list(out["head_scores"].columns) == ["step", "layer", "head", "probe", "metric", "value"]
    assert list(out["participation"].columns) == ["step", "tokens", "layer", "head", "probe", "pr"]
    assert list(out["copying"].columns) == [
        "step", "loss_first", "loss_second", "loss_gap", "max_induction_selectivity", "noncanonical_copying",
    ]  # fmt: skip
    assert (out["selectivity"]["step"] == 100).all() and len(out["copying"]) == 1
    assert out["copying"]["max_induction_selectivity"].iloc[0] >= 50
    assert not out["copying"]["noncanonical_copying"].iloc[0]


def test_screen_is_deterministic(gpt2_bridge):
    from headscreen.probes.screen import screen_checkpoint

    def once():
        batches = {
            "retrieval": retrieval_probe(40, 64, token_range=VOCAB, seed=11),
            "repeated": repeated_tokens_probe(16, 20, token_range=VOCAB, seed=11),
        }
        return screen_checkpoint(gpt2_bridge, batches, micro_batch=13)

    a, b = once(), once()
    for k in ("selectivity", "head_scores", "participation", "copying"):
        pd.testing.assert_frame_equal(a[k], b[k])


def test_run_probe_slices_match_full_cache_and_losses(gpt2_bridge):
    from headscreen.probes.forward import run_probe

    batch = repeated_tokens_probe(6, 12, token_range=VOCAB, seed=2, bos_id=0)
    fwd = run_probe(gpt2_bridge, batch, micro_batch=4, want_losses=True)
    with torch.inference_mode():
        _, cache = gpt2_bridge.run_with_cache(batch.tokens)
        ref_loss = gpt2_bridge(batch.tokens, return_type="loss", loss_per_token=True)
    for L in range(2):
        full = cache[f"blocks.{L}.attn.hook_pattern"]
        assert torch.allclose(fwd.query_rows[:, L], full[:, :, -1, :], atol=1e-6)
        assert torch.allclose(fwd.z_query[:, L], cache[f"blocks.{L}.attn.hook_z"][:, -1], atol=1e-6)
    assert torch.allclose(fwd.token_losses, ref_loss, atol=1e-5)
    only0 = run_probe(gpt2_bridge, batch, layers=[0], want_z=False)  # stop_at_layer=1
    assert only0.layers == (0,) and only0.query_rows.shape == (6, 1, 4, batch.seq_len)
    assert torch.allclose(only0.query_rows[:, 0], fwd.query_rows[:, 0], atol=1e-6)


# ------------------------------------------------------------------------------------------ PR


def test_participation_ratio_rank1_and_isotropic():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(500, 1, generator=gen), torch.randn(1, 16, generator=gen)
    assert float(participation_ratio(u @ v)) == pytest.approx(1.0, abs=1e-9)
    iso = torch.randn(8000, 16, generator=gen, dtype=torch.float64)
    pr = float(participation_ratio(iso))
    assert 15.8 < pr <= 16.0
    assert math.isnan(float(participation_ratio(torch.zeros(10, 4))))
    # per head layout: [n, layer, head, d]
    z = torch.zeros(500, 2, 3, 16, dtype=torch.float64)
    z[:, 0, 1] = u @ v
    z[:, 1, 2] = iso[:500]
    prs = head_participation(z)
    assert prs.shape == (2, 3) and float(prs[0, 1]) == pytest.approx(1.0) and float(prs[1, 2]) > 14


def test_pr_integral_ranking():
    e = math.e
    rows = []
    for head, prs in enumerate([[1.0, 3.0, 2.0], [1.0, 1.0, 1.5], [0.5, 0.8, 1.0], [5.0, 9.0, 9.0]]):
        for step, (tok, pr) in enumerate(zip([1.0, e, e**2], prs, strict=True), start=1):
            rows.append(
                {"step": step, "tokens": tok, "layer": 0, "head": head, "probe": "retrieval", "pr": pr}
            )
    df = pd.DataFrame(rows)
    right = pr_integral(df, top_fraction=0.25).set_index("head")
    assert right.loc[0, "integral"] == pytest.approx(3.0)  # (3-1)*1 + (2-1)*1
    assert right.loc[1, "integral"] == pytest.approx(0.5)
    assert right.loc[2, "integral"] == pytest.approx(0.0)
    assert right.loc[3, "integral"] == pytest.approx(16.0)
    assert list(right.sort_values("rank").index) == [3, 0, 1, 2]
    assert right["picked"].sum() == 1 and right.loc[3, "picked"]
    trap = pr_integral(df, rule="trapezoid").set_index("head")
    assert trap.loc[0, "integral"] == pytest.approx(2.5)  # (0+2)/2 + (2+1)/2


# ------------------------------------------------------------------------------------------ copying, classes


def test_copying_gap_and_noncanonical_flag():
    span, off = 5, 1
    losses = torch.full((4, off + 2 * span - 1), 9.0)
    losses[:, off : off + span - 1] = 5.0  # predicting r_2..r_n of the first copy
    losses[:, off + span : off + 2 * span - 1] = 1.0  # ... of the second copy
    first, second = copy_losses(losses, span, off)
    assert (first, second) == (5.0, 1.0)
    row = copying_row(first, second, 12.0, gap_min=1.0, induction_min=50.0)
    assert row["loss_gap"] == 4.0 and row["noncanonical_copying"]
    assert not copying_row(first, second, 80.0, gap_min=1.0, induction_min=50.0)["noncanonical_copying"]
    assert not copying_row(5.0, 4.5, 12.0, gap_min=1.0, induction_min=50.0)["noncanonical_copying"]


def _sel_rows(step, layer, head, values):
    return [
        {
            "step": step,
            "layer": layer,
            "head": head,
            "probe": "p",
            "class": c,
            "selectivity": v,
            "null_z": 0.0,
        }
        for c, v in values.items()
    ]


def test_classify_thresholds_and_configurability():
    base = dict.fromkeys(S.CLASSES, 1.0)
    rows = (
        _sel_rows(0, 2, 0, {**base, "first": 200.0, "induction": 60.0})  # BOS + induction circuit
        + _sel_rows(0, 2, 1, {**base, "previous": 80.0})  # previous class, below the 100x circuit bar
        + _sel_rows(0, 2, 2, {**base, "previous": 150.0})
        + _sel_rows(0, 2, 3, {**base, "local": 25.0})  # below 30x -> unclassified
    )
    c = classify(pd.DataFrame(rows)).set_index("head")
    assert c.loc[0, "best_class"] == "first" and c.loc[0, "is_bos"] and c.loc[0, "in_induction_circuit"]
    assert c.loc[1, "best_class"] == "previous" and not c.loc[1, "in_previous_circuit"]
    assert c.loc[2, "in_previous_circuit"]
    assert c.loc[3, "best_class"] == "unclassified" and c.loc[3, "best_selectivity"] == 25.0
    loose = classify(pd.DataFrame(rows), ScreenThresholds(class_min=20, previous_circuit=70)).set_index(
        "head"
    )
    assert loose.loc[3, "best_class"] == "local" and loose.loc[1, "in_previous_circuit"]
    with pytest.raises(ValueError, match="ScreenThresholds.class_min"):
        ScreenThresholds(class_min=0)
    with pytest.raises(ValueError, match="n_null_draws"):
        ScreenThresholds(n_null_draws=1)


def test_emergence_lead_times_and_bos_layers():
    base = dict.fromkeys(S.CLASSES, 1.0)
    ind = [10.0, 60.0, 10.0, 70.0, 90.0]  # in circuit at steps 300, 400 (and 100, not kept)
    bos = [40.0, 40.0, 40.0, 40.0, 10.0]  # BOS until the last step -> never emerges for good
    rows = []
    for i, step in enumerate([0, 100, 200, 300, 400]):
        rows += _sel_rows(step, 3, 1, {**base, "induction": ind[i]})
        rows += _sel_rows(step, 0, 2, {**base, "first": bos[i]})
    classes = classify(pd.DataFrame(rows))
    em = emergence_steps(classes).set_index(["layer", "head", "class"])["emergence_step"]
    assert em[(3, 1, "induction")] == 300
    assert math.isnan(em[(0, 2, "bos")])
    assert math.isnan(em[(3, 1, "previous")])
    onsets = pd.DataFrame([{"layer": 3, "head": 1, "metric": "ratio_12", "onset_step": 120.0}])
    lt = lead_times(onsets, emergence_steps(classes))
    assert len(lt) == 1 and lt["lead_time"].iloc[0] == 180.0 and lt["class"].iloc[0] == "induction"
    b01 = bos_layers01(classes).set_index("step")
    assert list(b01["bos_layer0"]) == [1, 1, 1, 1, 0] and (b01["bos_layer1"] == 0).all()


def test_summarise_series_json_ready():
    import json

    from headscreen.probes.screen import summarise_series

    base = dict.fromkeys(S.CLASSES, 1.0)
    sel_rows, pr_rows = [], []
    for i, step in enumerate([10, 20, 30]):
        sel_rows += _sel_rows(step, 1, 0, {**base, "induction": [5.0, 55.0, 70.0][i]})
        sel_rows += _sel_rows(step, 1, 1, {**base, "first": 90.0})
        for h, pr in enumerate([1.0 + i, 1.0]):
            pr_rows.append(
                {"step": step, "tokens": float(step), "layer": 1, "head": h, "probe": "p", "pr": pr}
            )
    tables = {
        "selectivity": pd.DataFrame(sel_rows),
        "participation": pd.DataFrame(pr_rows),
        "onsets": pd.DataFrame([{"layer": 1, "head": 0, "metric": "update_norm", "onset_step": 10}]),
    }
    classes, summary = summarise_series(tables)
    assert len(classes) == 6
    assert (
        summary["steps"]["30"]["p"]["induction"] == [[1, 0]]
        and summary["steps"]["10"]["p"]["induction"] == []
    )
    em = {(r["layer"], r["head"], r["class"]): r["emergence_step"] for r in summary["emergence"]}
    assert em[(1, 0, "induction")] == 20 and em[(1, 1, "bos")] == 10
    assert summary["lead_times"][0]["lead_time"] == 10
    assert summary["pr_integral"]["p"][0]["head"] == 0 and summary["pr_integral"]["p"][0]["picked"]
    json.dumps(summary)  # serialisable as circuits.json
