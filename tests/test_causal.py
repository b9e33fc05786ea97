"""headscreen.causal: ablations, fired checks, nulls, activation and path patching.

Models: tiny GPT-NeoX and Llama-GQA checkpoints (headscreen.testing) with attention sharpened so
that effects are far above float noise, and a hand-built two-layer attention-only induction model
whose answers are known: L0H0 is a previous-token head, L0H1 a weak distractor, L1H0 an induction
head (with a BOS sink) and L1H1 is dead (hook_z == 0).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headscreen.causal.ablation import (
    AblationConfig,
    Scoring,
    ZSource,
    ablate_head_sets,
    ablate_head_sets_loop,
    ablation_source,
)
from headscreen.causal.conditions import (
    matched_random_draws,
    matched_set_count,
    normalize_circuit,
    standard_conditions,
)
from headscreen.causal.hooks import (
    Intervention,
    InterventionDidNotFire,
    replace_heads,
    run_with_interventions,
    z_name,
)
from headscreen.causal.metrics import METRICS, query_metrics
from headscreen.causal.patching import PatchSite, head_patching, normalised_score, patch_ld, run_ld
from headscreen.causal.path_patching import path_patch_k
from headscreen.causal.stats import empirical_p_value, null_test
from headscreen.causal.validate import patch_checkpoint, validate_checkpoint
from headscreen.probes.prompts import corrupt_retrieval, retrieval_probe
from headscreen.testing import ARCHITECTURES, save_tiny_model

torch.set_num_threads(1)

V, T, DH = 15, 16, 16  # hand model: vocab, context, d_head
TOK, POS, PREV, OUT = 0, 16, 32, 48  # its residual subspaces


# ---------------------------------------------------------------- models


def _save_sharp(arch: str, directory, gain: float = 6.0):
    """A tiny checkpoint of `arch` whose Q/K projections are scaled up (sharper attention)."""
    from headscreen.testing import build_tiny_model, save_word_tokenizer

    model = build_tiny_model(arch)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and any(k in name for k in ("q_proj", "k_proj", "query_key_value", "c_attn")):
                p.mul_(gain)
    model.save_pretrained(directory, safe_serialization=True)
    save_word_tokenizer(directory, vocab=model.config.vocab_size)
    return directory


def _boot(directory):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    return TransformerBridge.boot_transformers(str(directory), device="cpu", tokenizer=tok).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{arch: (directory, bridge)} for gpt2, gpt_neox and llama (GQA: 4 query heads, 2 kv heads)."""
    out = {}
    for arch in ("gpt2", "gpt_neox", "llama"):
        d = _save_sharp(arch, tmp_path_factory.mktemp(arch))
        out[arch] = (d, _boot(d))
    return out


def induction_bridge(c: float = 100.0, distract: float = 0.05, gain: float = 10.0):
    """Hand-built attention-only induction model (native bridge, no norms, TL scales scores by 1/sqrt(16))."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(d_model=64, d_head=DH, n_heads=2, n_layers=2, n_ctx=T, d_vocab=V, attn_only=True,
                                  normalization_type=None, positional_embedding_type="standard", seed=0)
    b = TransformerBridge.boot_native(cfg).eval()
    P = dict(b.original_model.named_parameters())

    def attn(layer, x):
        return P[f"layers.{layer}._original_component.attn._original_component.{x}._original_component.weight"]

    i, t = torch.arange(T), torch.arange(V)
    with torch.no_grad():
        for p in P.values():
            p.zero_()
        P["tok_embed._original_component.weight"][t, TOK + t] = 1
        P["pos._original_component.weight"][i, POS + i] = 1
        q, k, v, o = (attn(0, x) for x in "qkvo")  # nn.Linear [out, in]; head h = rows h*DH.. of q/k/v
        q[i, POS + i] = c  # L0H0: query = own position, key at p' lands in slot p'+1
        k[i[1:], POS + i[:-1]] = 1.0
        v[t, TOK + t] = 1
        o[PREV + t, t] = 1  # writes the previous token into PREV
        q[DH + i, POS + i] = c  # L0H1: attends to itself, writes a little of its own token into PREV
        k[DH + i, POS + i] = 1.0
        v[DH + t, TOK + t] = 1
        o[PREV + t, DH + t] = distract
        q, k, v, o = (attn(1, x) for x in "qkvo")
        q[t, TOK + t] = c  # L1H0: query = current token, key = previous token, sink at position 0
        P["layers.1._original_component.attn._original_component.q._original_component.bias"][DH - 1] = c / 2
        k[t, PREV + t] = 1.0
        k[DH - 1, POS] = 1.0
        v[t, TOK + t] = 1
        o[OUT + t, t] = gain  # copies the attended token into OUT; L1H1 stays all-zero
        P["head._original_component.weight"][t, OUT + t] = 1
    return b


@pytest.fixture(scope="module")
def hand():
    return induction_bridge()


@pytest.fixture(scope="module")
def hand_probe():
    clean = retrieval_probe(32, T, token_range=(1, V), seed=0, bos_id=0, pair_range=(1, 8))
    return clean, corrupt_retrieval(clean, seed=1)


def _probe(bridge, n=8, seq_len=24, seed=0):
    clean = retrieval_probe(n, seq_len, token_range=(2, bridge.cfg.d_vocab), seed=seed, pair_range=(1, 12))
    return clean, corrupt_retrieval(clean, seed=seed + 1)


# ---------------------------------------------------------------- metrics and stats


def test_metrics_on_hand_made_logits():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 0.0, -1.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 6.0]])
    target = torch.tensor([1, 5])
    m = query_metrics(logits, target)
    assert m["top1"].tolist() == [1.0, 0.0] and m["top5"].tolist() == [1.0, 0.0]  # row 1: 6 logits above
    assert m["target_logit"].tolist() == [3.0, 0.0]
    assert torch.allclose(m["logit_diff"], torch.tensor([3.0 - 5.5 / 7, 0.0 - 21.0 / 7]))
    assert torch.allclose(m["cross_entropy"], -torch.log_softmax(logits, 1)[[0, 1], [1, 5]])
    ties = query_metrics(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 2]))
    assert ties["top1"].tolist() == [0.0, 0.0]  # a tie is not a hit: constant logits never score


def test_null_statistics():
    null = np.array([0.1, 0.2, 0.5, 0.5, 0.9])
    assert empirical_p_value(0.5, null) == pytest.approx(4 / 6)  # 0.5, 0.5 and 0.9 are >= 0.5
    assert empirical_p_value(1.0, null) == pytest.approx(1 / 6)
    t = null_test("top1", 1.1, null)
    assert t.effect_ratio == pytest.approx(1.1 / null.mean()) and t.n_null == 5
    assert null_test("top1", 1.0, np.zeros(4)).effect_ratio is None  # never a division by ~0
    assert null_test("top1", 1.0, np.array([-0.1, 0.05])).effect_ratio is None  # nor a sign flip


# ---------------------------------------------------------------- conditions


def test_matched_random_draws_match_layers_and_never_overlap():
    circuit = normalize_circuit([(1, 2), (1, 5), (3, 0)], n_layers=4, n_heads=8)
    draws = matched_random_draws(circuit, 8, 300, seed=123)
    for heads in draws:
        assert not set(heads) & set(circuit)
        assert sorted(layer for layer, _ in heads) == [1, 1, 3]
        assert len(set(heads)) == 3
    used = {h for heads in draws for h in heads}
    assert used == {(1, h) for h in range(8) if h not in (2, 5)} | {(3, h) for h in range(1, 8)}
    assert matched_random_draws(circuit, 8, 300, seed=123) == draws
    assert matched_random_draws(circuit, 8, 300, seed=124) != draws
    assert len(set(draws)) == len(draws) == matched_set_count(circuit, 8) == 6 * 5 // 2 * 7  # all sets, once
    names = [c.name for c in standard_conditions(circuit, 8)]
    assert names == ["circuit", "upper_bound", "head_L1H2", "head_L1H5", "head_L3H0"]
    assert standard_conditions(circuit, 8)[1].heads == tuple((layer, h) for layer in (1, 3) for h in range(8))
    with pytest.raises(ValueError, match="layer 0 has 3 circuit heads but only 1"):
        matched_random_draws([(0, 0), (0, 1), (0, 2)], 4, 10)
    with pytest.raises(ValueError, match="outside the model"):
        normalize_circuit([(0, 4)], n_layers=2, n_heads=4)


def test_matched_random_draws_are_distinct_when_the_pool_allows():
    circuit = [(1, 2), (1, 3), (1, 7)]
    assert matched_set_count(circuit, 16) == 286  # C(13, 3)
    draws = matched_random_draws(circuit, 16, 100, seed=123)
    assert len(draws) == len(set(draws)) == 100  # without replacement
    assert all(len(d) == 3 and not set(d) & set(circuit) and {lh[0] for lh in d} == {1} for d in draws)
    assert draws == matched_random_draws(circuit, 16, 100, seed=123) != matched_random_draws(circuit, 16, 100, seed=1)
    every = matched_random_draws(circuit, 8, 100, seed=5)  # C(5, 3) = 10 < 100: the exact null
    assert len(every) == len(set(every)) == 10 == matched_set_count(circuit, 8)
    assert every != matched_random_draws(circuit, 8, 100, seed=6) and set(every) == set(matched_random_draws(circuit, 8, 100, seed=6))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="AblationConfig.kind='bogus'"):
        AblationConfig(kind="bogus")
    with pytest.raises(ValueError, match="AblationConfig.max_rows=0"):
        AblationConfig(max_rows=0)


# ---------------------------------------------------------------- ablation = o_proj slice in HF weights


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_zero_ablation_equals_zeroed_o_proj_columns(tiny, arch):
    from transformers import AutoModelForCausalLM

    directory, bridge = tiny[arch]
    hf = AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager").eval()
    clean, _ = _probe(bridge)
    layer, head = 1, 2
    dh = bridge.cfg.d_head
    proj = hf.gpt_neox.layers[layer].attention.dense if arch == "gpt_neox" else hf.model.layers[layer].self_attn.o_proj
    with torch.no_grad():
        base = hf(clean.tokens).logits
        proj.weight[:, head * dh:(head + 1) * dh] = 0.0
        ref = hf(clean.tokens).logits
    mask = torch.zeros(clean.n, bridge.cfg.n_heads, dtype=torch.bool)
    mask[:, head] = True
    logits, report = run_with_interventions(bridge, clean.tokens, [Intervention(z_name(layer), replace_heads(mask, None))])
    assert (ref - base).abs().max() > 1e-2  # the ablation matters, so the comparison can fail
    assert torch.allclose(logits, ref, atol=2e-5, rtol=0)
    assert report.firings[z_name(layer)].calls == 1 and report.max_abs_delta()[z_name(layer)] > 1e-3
    # the batched ablation path scores the same logits (query position only)
    scoring = Scoring.of(clean)
    got = ablate_head_sets(bridge, scoring, [[(0, 1)], [(layer, head)]], ZSource("zero"))
    want = query_metrics(ref[torch.arange(clean.n), clean.query_pos], clean.target_token)
    for m in METRICS:
        assert torch.allclose(got[m][1], want[m], atol=2e-5), m


# ---------------------------------------------------------------- every intervention proves it fired


def test_intervention_on_a_hook_that_never_runs_raises(tiny):
    _, bridge = tiny["gpt_neox"]
    toks = _probe(bridge)[0].tokens
    bump = Intervention("blocks.0.attn.hook_rot_k", lambda a: a + 1.0)  # exists on NeoX, never called
    with pytest.raises(InterventionDidNotFire, match="hook_rot_k.*never ran"):
        run_with_interventions(bridge, toks, [bump])
    with pytest.raises(InterventionDidNotFire, match="no such hook"):
        run_with_interventions(bridge, toks, [Intervention("blocks.0.hook_resid_mid", lambda a: a + 1.0)])
    with pytest.raises(InterventionDidNotFire, match="blocks.1.attn.hook_z.*never ran"):
        run_with_interventions(bridge, toks, [Intervention(z_name(1), lambda a: a * 0)], stop_at_layer=1)


def test_intervention_that_changes_nothing_raises(hand, hand_probe, tiny):
    clean, _ = hand_probe
    scoring = Scoring.of(clean)
    # L1H1 is dead: its hook_z is already zero, so zeroing it changes nothing
    with pytest.raises(InterventionDidNotFire, match=r"blocks.1.attn.hook_z.*changed nothing for dead"):
        ablate_head_sets(hand, scoring, [[(1, 0)], [(1, 1)]], ZSource("zero"), names=["alive", "dead"])
    ablate_head_sets(hand, scoring, [[(1, 0)]], ZSource("zero"))  # the live head is fine
    # mean-ablation with a constant activation: every reference row is the same prompt
    _, bridge = tiny["llama"]
    one = _probe(bridge)[0]
    same = type(one)(name="same", tokens=one.tokens[:1].repeat(5, 1), has_bos=False, seed=0,
                     query_pos=one.query_pos[:1].repeat(5), target_token=one.target_token[:1].repeat(5))
    src = ablation_source(bridge, same, [0], "mean")
    with pytest.raises(InterventionDidNotFire, match="changed nothing"):
        ablate_head_sets(bridge, Scoring.of(same), [[(0, 1)]], src)
    # resample from a "corrupted" batch identical to the clean one
    src = ablation_source(bridge, one, [1], "resample", corrupted=one)
    with pytest.raises(InterventionDidNotFire, match="changed nothing"):
        ablate_head_sets(bridge, Scoring.of(one), [[(1, 3)]], src)
    # an edit returning its input unchanged
    with pytest.raises(InterventionDidNotFire, match="changed nothing"):
        run_with_interventions(bridge, one.tokens, [Intervention(z_name(0), lambda a: a.clone())])


def test_resample_uses_the_corrupted_batch_aligned_by_example(hand, hand_probe):
    clean, corrupted = hand_probe
    assert not torch.equal(clean.target_token, corrupted.target_token)
    src = ablation_source(hand, clean, [1], "resample", corrupted=corrupted)
    # the induction head of row i now reads corrupted row i and so copies that row's B'
    on_corrupted = Scoring(clean.tokens, clean.query_pos, corrupted.target_token)
    on_clean = Scoring.of(clean)
    assert ablate_head_sets(hand, on_corrupted, [[(1, 0)]], src)["top1"].mean() == 1.0
    assert ablate_head_sets(hand, on_clean, [[(1, 0)]], src)["top1"].mean() == 0.0
    # misaligned rows follow the misalignment: a rolled corrupted batch predicts the rolled targets
    rolled = type(corrupted)(name="rolled", tokens=corrupted.tokens.roll(1, 0), has_bos=True, seed=1,
                             query_pos=corrupted.query_pos, target_token=corrupted.target_token.roll(1, 0))
    src = ablation_source(hand, clean, [1], "resample", corrupted=rolled)
    got = ablate_head_sets(hand, Scoring(clean.tokens, clean.query_pos, rolled.target_token), [[(1, 0)]], src)
    assert got["top1"].mean() == 1.0
    assert float(ablate_head_sets(hand, on_clean, [[(0, 0), (1, 0)]], ZSource("zero"))["top1"].mean()) == 0.0


# ---------------------------------------------------------------- vectorised nulls


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_vectorised_nulls_equal_a_loop_of_single_ablations(tiny, kind):
    _, bridge = tiny["llama"]
    clean, corrupted = _probe(bridge, n=8)
    scoring = Scoring.of(clean)
    circuit = [(0, 1), (1, 2)]
    n_draws = 100 if kind == "zero" else 25
    draws = matched_random_draws(circuit, bridge.cfg.n_heads, n_draws, seed=123)
    src = ablation_source(bridge, clean, [0, 1], kind, corrupted=corrupted)
    chunked = ablation_source(bridge, clean, [0, 1], kind, corrupted=corrupted, max_rows=3)  # 3 micro-batches
    assert all(torch.allclose(chunked.z[layer], src.z[layer], atol=1e-7) for layer in src.z)
    loop = ablate_head_sets_loop(bridge, scoring, draws, src)
    for max_rows, dedupe in [(512, True), (40, False), (5, True)]:  # 5 < n: examples split too
        vec = ablate_head_sets(bridge, scoring, draws, src, max_rows=max_rows, dedupe=dedupe)
        for m in METRICS:
            assert torch.allclose(vec[m], loop[m], atol=1e-5, rtol=1e-5), (m, max_rows)
    # the loop itself against a hand-written hook (TransformerLens-notes style), for a few draws
    for i in range(3):
        hooks = []
        for layer in (0, 1):
            heads = [h for lay, h in draws[i] if lay == layer]
            if kind == "zero":
                fill = None
            elif kind == "mean":
                fill = src.z[layer][0]
            else:
                fill = src.z[layer]

            def fn(z, hook, heads=heads, fill=fill):
                z = z.clone()
                z[:, :, heads] = 0.0 if fill is None else fill[..., heads, :]
                return z

            hooks.append((z_name(layer), fn))
        with torch.no_grad():
            ref = bridge.run_with_hooks(clean.tokens, fwd_hooks=hooks)[torch.arange(clean.n), clean.query_pos]
        assert torch.allclose(loop["logit_diff"][i], query_metrics(ref, clean.target_token)["logit_diff"], atol=1e-5)
    assert len({d for d in draws}) > 1 and any(not torch.equal(loop["logit_diff"][0], loop["logit_diff"][j])
                                                for j in range(n_draws))


# ---------------------------------------------------------------- validate_checkpoint


def test_fixed_seed_gives_identical_p_values(tiny):
    _, bridge = tiny["gpt_neox"]
    clean, _ = _probe(bridge, n=12)
    probes = {"retrieval": clean}
    s1, df1 = validate_checkpoint(bridge, [(0, 1), (1, 3)], probes, n_null=100, seed=123, step=40)
    s2, df2 = validate_checkpoint(bridge, [(0, 1), (1, 3)], probes, n_null=100, seed=123, step=40)
    assert s1 == s2 and df1.equals(df2)
    json.dumps(s1, allow_nan=False)
    tests = s1["probes"]["retrieval"]["tests"]
    # the p-values follow from the rows: (1 + #null drops >= circuit drop) / (1 + n)
    r = df1[df1.probe == "retrieval"]
    for m in METRICS:
        clean_v = r[(r.condition == "clean") & (r.metric == m)].value.item()
        circ = r[(r.condition == "circuit") & (r.metric == m)].value.item()
        null = r[(r.condition == "matched_random") & (r.metric == m)].sort_values("draw").value.to_numpy()
        sign = -1 if m == "cross_entropy" else 1
        drop, null_drop = sign * (clean_v - circ), sign * (clean_v - null)
        assert tests[m]["p_value"] == pytest.approx((1 + np.sum(null_drop >= drop)) / (1 + len(null)))
        assert tests[m]["n_null"] == len(null) == 9
    # 4 heads per layer: only 3 x 3 matched sets exist, so the null is exact (each once), not 100 repeats
    assert s1["n_null"] == s1["n_matched_sets"] == 9 and s1["n_null_requested"] == 100
    assert s1["null_kind"].startswith("exact")
    assert len(df1) == (3 + 2 + 9) * len(METRICS)  # clean, circuit, upper bound, 2 heads, 9 sets
    assert set(df1.columns) == {"step", "probe", "condition", "draw", "metric", "value"} and (df1.step == 40).all()
    s3, _ = validate_checkpoint(bridge, [(0, 1), (1, 3)], probes, n_null=100, seed=7)
    assert s3["probes"]["retrieval"]["matched_random_mean"] != s1["probes"]["retrieval"]["matched_random_mean"]


def test_validate_checkpoint_on_the_known_circuit(hand, hand_probe):
    clean, corrupted = hand_probe
    for ablation in ("zero", "resample"):
        summary, df = validate_checkpoint(hand, [(0, 0)], {"retrieval": clean}, n_null=20, ablation=ablation,
                                          corrupted={"retrieval": corrupted})
        res = summary["probes"]["retrieval"]
        assert res["clean"]["top1"] == 1.0 and res["conditions"]["circuit"]["top1"] == 0.0
        assert res["matched_random_mean"]["top1"] == 1.0  # the distractor is harmless
        assert res["tests"]["top1"]["observed_drop"] == 1.0
        # one free head: the exact null has a single set, so p can be no smaller than 1/2 (not 1/21)
        assert res["tests"]["top1"]["p_value"] == 0.5 and res["tests"]["top1"]["n_null"] == 1
        assert res["tests"]["top1"]["n_distinct"] == 1 and res["tests"]["top1"]["p_value_distinct"] == 0.5
        assert res["fired"]["blocks.0.attn.hook_z"]["min_condition_max_abs_delta"] > 0.1
    # a circuit that fills its layer has no matched-random control: the null is skipped, loudly
    summary, df = validate_checkpoint(hand, [(0, 0), (0, 1)], {"retrieval": clean}, n_null=20)
    assert "layer 0 has 2 circuit heads but only 0" in summary["null_skipped"]
    assert summary["probes"]["retrieval"]["tests"] is None and "matched_random" not in set(df.condition)
    assert summary["probes"]["retrieval"]["circuit_drop"]["top1"] == 1.0


# ---------------------------------------------------------------- activation patching


def test_patching_clean_into_itself_scores_one_and_nothing_scores_zero(tiny):
    _, bridge = tiny["llama"]
    clean, corrupted = _probe(bridge, n=8)
    scoring = Scoring.of(clean)
    ld_clean = float(run_ld(bridge, clean.tokens, scoring).mean())
    ld_corr = float(run_ld(bridge, corrupted.tokens, scoring).mean())
    # one stacked forward: the whole clean input, nothing, one head
    ld, unchanged = patch_ld(bridge, scoring, corrupted.tokens, [[PatchSite("blocks.0.hook_resid_pre")], []])
    scores = normalised_score(ld.mean(1), ld_clean, ld_corr)
    assert abs(ld_clean - ld_corr) > 1e-3
    assert scores[0] == pytest.approx(1.0, abs=1e-4) and scores[1] == pytest.approx(0.0, abs=1e-6)
    assert not unchanged.any()
    # patching activations that are the same in both runs changes nothing: an error, not a 0
    with pytest.raises(InterventionDidNotFire, match="changed nothing"):
        patch_ld(bridge, scoring, clean.tokens, [[PatchSite(z_name(1), 0)]])


def test_head_patching_matches_transformer_lens(tiny, hand, hand_probe):
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    _, bridge = tiny["gpt_neox"]
    clean, corrupted = _probe(bridge, n=8)
    hp = head_patching(bridge, clean, corrupted)

    def ld_metric(logits):
        q = logits[torch.arange(clean.n), clean.query_pos]
        return (q.gather(1, clean.target_token[:, None])[:, 0] - q.mean(1)).mean()

    _, cache = bridge.run_with_cache(clean.tokens)
    ref = get_act_patch_attn_head_out_all_pos(bridge, corrupted.tokens, cache, ld_metric)
    assert (ref - hp.ld_corr).abs().max() > 1e-3
    assert torch.allclose(hp.ld_patch, ref, atol=1e-6)
    # known answers on the hand model: the induction head restores everything, the dead head is not measured
    hp = head_patching(hand, *hand_probe)
    assert hp.scores[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert torch.isnan(hp.scores[1, 1]) and hp.unchanged == ((1, 1),)


# ---------------------------------------------------------------- path patching


def test_path_patching_known_answers_on_the_induction_model(hand, hand_probe):
    clean, corrupted = hand_probe
    scoring = Scoring.of(clean)
    prev = path_patch_k(hand, scoring, corrupted.tokens, [(0, 0)], [[(1, 0)]], direction="noising")[0]
    distractor = path_patch_k(hand, scoring, corrupted.tokens, [(0, 1)], [[(1, 0)]], direction="noising")[0]
    # keys that see a corrupted previous token no longer match the clean query: the whole effect goes
    assert prev.score > 0.99 and abs(distractor.score) < 0.01
    # denoising only the keys cannot help: the corrupted query A' matches no key that says "after A"
    denoise = path_patch_k(hand, scoring, corrupted.tokens, [(0, 0)], [[(1, 0)]], direction="denoising")[0]
    assert abs(denoise.score) < 0.01
    # a swap with no difference never reports a zero path
    with pytest.raises(InterventionDidNotFire, match="changed nothing"):
        path_patch_k(hand, scoring, clean.tokens, [(0, 0)], [[(1, 0)]])


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2"])  # parallel and sequential residual
def test_path_patching_matches_transformer_lens_direct_path(tiny, arch):
    from transformer_lens.patching import get_act_patch_direct_path

    _, bridge = tiny[arch]
    clean, corrupted = _probe(bridge, n=8)

    def ld_metric(logits):
        q = logits[torch.arange(clean.n), clean.query_pos]
        return (q.gather(1, clean.target_token[:, None])[:, 0] - q.mean(1)).mean()

    names = [z_name(0)]
    _, clean_cache = bridge.run_with_cache(clean.tokens, names_filter=names)
    _, corr_cache = bridge.run_with_cache(corrupted.tokens, names_filter=names)
    sender = (0, 2)
    ref = get_act_patch_direct_path(bridge, corrupted.tokens, clean_cache, corr_cache, ld_metric, *sender,
                                    component="k", verbose=False)[1]
    got = path_patch_k(bridge, Scoring.of(clean), corrupted.tokens, [sender], [[(1, h)] for h in range(4)],
                       direction="denoising")
    got_ld = torch.tensor([r.ld_patch for r in got])
    assert (ref - got[0].ld_corr).abs().max() > 1e-5
    assert torch.allclose(got_ld, ref, atol=1e-7, rtol=0)
    # micro-batches (examples split, one receiver set per forward) give the same numbers
    small = path_patch_k(bridge, Scoring.of(clean), corrupted.tokens, [sender], [[(1, h)] for h in range(4)],
                         direction="denoising", max_rows=3)
    assert torch.allclose(torch.tensor([r.ld_patch for r in small]), got_ld, atol=1e-6, rtol=0)


def test_patch_checkpoint_rows(hand, hand_probe, tiny):
    summary, df = patch_checkpoint(hand, *hand_probe, previous_heads=[(0, 0)], induction_heads=[(1, 0)], step=3)
    json.dumps(summary, allow_nan=False)
    assert list(df.columns) == ["step", "kind", "layer", "head", "score", "senders", "receivers"]
    noising = df[df.kind == "path_k_noising"]
    assert len(noising) == 1 and noising.score.item() > 0.99 and noising.senders.item() == "L0H0"
    assert summary["unchanged_heads"] == [[1, 1]]
    # a previous-token head in the induction layer cannot feed its keys: left out of the senders, named
    summary, df = patch_checkpoint(hand, *hand_probe, previous_heads=[(0, 0), (1, 1)], induction_heads=[(1, 0)])
    assert df[df.kind == "path_k_noising"].senders.item() == "L0H0"
    assert summary["path_patching_excluded_senders"]["heads"] == [[1, 1]]
    summary, _ = patch_checkpoint(hand, *hand_probe, previous_heads=[(1, 1)], induction_heads=[(1, 0)])
    assert "L1H1" in summary["path_patching"]["skipped"]
    # GQA: the K patch reaches the query heads that share the kv head
    _, bridge = tiny["llama"]
    clean, corrupted = _probe(bridge, n=8)
    res = path_patch_k(bridge, Scoring.of(clean), corrupted.tokens, [(0, 0)], [[(1, 3)]])[0]
    assert res.kv_heads == ((1, 1),) and res.affected_heads == ((1, 2), (1, 3))


def test_distinct_p_value_exposes_a_degenerate_null():
    from headscreen.causal.stats import null_test

    # 100 draws of only two distinct head sets: the Monte-Carlo p-value looks tiny, the exact one cannot
    sets = [("a",), ("b",)] * 50
    drops = [0.1, 0.2] * 50
    t = null_test("top1", 0.9, drops, draw_sets=sets)
    assert t.p_value == 1 / 101
    assert t.n_distinct == 2 and t.p_value_distinct == 1 / 3
    t2 = null_test("top1", 0.15, drops, draw_sets=sets)
    assert t2.p_value_distinct == 2 / 3 and t2.p_value == 51 / 101
    with pytest.raises(ValueError, match="draw_sets"):
        null_test("top1", 0.9, drops, draw_sets=sets[:3])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prefix_and_query_rows_equal_the_whole_forward(tmp_path, arch):
    """Starting at the lowest ablated block (`blocks_from`), and running a last block on the query rows
    only (`_Prefix.z`), change no number, on every architecture."""
    from headscreen.causal import ablation
    from headscreen.causal.hooks import blocks_from

    d = save_tiny_model(tmp_path / arch, arch, n_layers=3, vocab=96, n_ctx=24)
    bridge = _boot(d)
    probe = retrieval_probe(6, 24, token_range=(2, 96), seed=0, pair_range=(1, 16))
    scoring, corrupted = Scoring.of(probe), corrupt_retrieval(probe, 1)
    prefix = ablation._clean_prefix(bridge, scoring, slice(0, 6), 2)
    assert prefix.resid.shape == (6, 1, bridge.cfg.d_model)
    assert prefix.z.shape == (6, 1, bridge.cfg.n_heads, bridge.cfg.d_head)
    cases = [  # (sets, layers, kinds, max_rows): from block 1; the last block on query rows
        ([[(1, 0)], [(1, 2), (2, 1)], [(2, 3)]], [1, 2], ("zero", "resample"), (8,)),
        ([[(2, 0)], [(2, 1), (2, 3)], [(2, 2)]], [2], ("zero", "mean", "resample"), (8, 2, None)),
    ]
    for sets, layers, kinds, row_caps in cases:
        for kind in kinds:
            src = ablation_source(bridge, probe, layers, kind, corrupted=corrupted)
            whole = ablate_head_sets(bridge, scoring, sets, src, skip_prefix=False)
            assert not torch.equal(whole["logit_diff"][0], whole["logit_diff"][1])
            for max_rows in row_caps:  # chunked: one set per forward, examples split, all in one forward
                fast = ablate_head_sets(bridge, scoring, sets, src, max_rows=max_rows)
                for m in METRICS:
                    assert torch.allclose(fast[m], whole[m], atol=1e-5, rtol=1e-5), (arch, kind, m, max_rows)
    # the query-row firing check acts on the clean z: resampling from the clean batch itself raises
    same = ablation_source(bridge, probe, [2], "resample", corrupted=probe)
    with pytest.raises(InterventionDidNotFire, match="changed nothing"):
        ablate_head_sets(bridge, scoring, [[(2, 1)]], same)
    with torch.no_grad():
        full = bridge(probe.tokens)
        resid = bridge(probe.tokens, stop_at_layer=2)
        with blocks_from(bridge, 2):
            again = bridge(resid, start_at_layer=2)
        assert torch.allclose(again, full, atol=1e-5)
        assert torch.equal(bridge(probe.tokens), full)  # the whole block list is back after the context


def test_validation_settings_come_from_the_config_section():
    from headscreen.config import ConfigError
    from pipelines.validate import ValidationSettings

    manifest = {"config": {"model_config": {"validation": {"ablations": ["zero", "resample"], "n_null": 200}}}}
    s = ValidationSettings.of_manifest(manifest)
    assert s.ablations == ("zero", "resample") and s.n_null == 200 and s.seed == 123
    assert ValidationSettings.of_manifest({}) == ValidationSettings()
    with pytest.raises(ConfigError, match="unknown field"):
        ValidationSettings.of_manifest({"config": {"model_config": {"validation": {"n_nul": 5}}}})
    with pytest.raises(ConfigError, match="'shuffle'"):
        ValidationSettings.of_manifest({"config": {"model_config": {"validation": {"ablations": ["shuffle"]}}}})


def test_start_at_block_on_a_native_bridge(hand, hand_probe):
    clean, corrupted = hand_probe
    scoring = Scoring.of(clean)
    for kind in ("zero", "resample"):
        src = ablation_source(hand, clean, [1], kind, corrupted=corrupted)
        whole = ablate_head_sets(hand, scoring, [[(1, 0)]], src, skip_prefix=False)
        skipped = ablate_head_sets(hand, scoring, [[(1, 0)]], src)
        for m in METRICS:
            assert torch.allclose(skipped[m], whole[m], atol=1e-5), (kind, m)
